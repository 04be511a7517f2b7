package qemu

import (
	"context"
	"fmt"
)

// IOLimits are a disk's throttles inside QEMU (its block layer's
// throttling, which covers RBD disks that never touch a host block
// device); 0 means no limit.
type IOLimits struct {
	ReadBps, WriteBps, ReadIOPS, WriteIOPS uint64
}

// SetIOThrottle sets the throttles of the virtio-blk device of disk id,
// replacing the ones it had (all zero removes them).
func (q *QMP) SetIOThrottle(ctx context.Context, id string, l IOLimits) error {
	// The virtio-blk-pci device is a proxy; the block backend belongs to
	// its virtio-backend child.
	args := map[string]any{
		"id":  "/machine/peripheral/" + DeviceID(id) + "/virtio-backend",
		"bps": 0, "bps_rd": l.ReadBps, "bps_wr": l.WriteBps,
		"iops": 0, "iops_rd": l.ReadIOPS, "iops_wr": l.WriteIOPS,
	}
	if err := q.Execute(ctx, "block_set_io_throttle", args, nil); err != nil {
		return fmt.Errorf("set io throttle of disk %s: %w", id, err)
	}
	return nil
}

// BlockStats is what QEMU counted on one disk.
type BlockStats struct {
	ReadBytes, WriteBytes, ReadOps, WriteOps uint64
}

// QueryBlockStats returns QEMU's counters of each disk it has a
// virtio-blk device for, by disk ID.
func (q *QMP) QueryBlockStats(ctx context.Context) (map[string]BlockStats, error) {
	var out []struct {
		QDev  string `json:"qdev"`
		Stats struct {
			RdBytes      uint64 `json:"rd_bytes"`
			WrBytes      uint64 `json:"wr_bytes"`
			RdOperations uint64 `json:"rd_operations"`
			WrOperations uint64 `json:"wr_operations"`
		} `json:"stats"`
	}
	if err := q.Execute(ctx, "query-blockstats", map[string]any{"query-nodes": false}, &out); err != nil {
		return nil, fmt.Errorf("query block stats: %w", err)
	}
	stats := map[string]BlockStats{}
	for _, d := range out {
		id, ok := diskOfDevice(d.QDev)
		if !ok {
			continue
		}
		stats[id] = BlockStats{ReadBytes: d.Stats.RdBytes, WriteBytes: d.Stats.WrBytes, ReadOps: d.Stats.RdOperations, WriteOps: d.Stats.WrOperations}
	}
	return stats, nil
}

// diskOfDevice reads the disk ID out of a device's qdev name, which QEMU
// gives as the ID or as its QOM path (/machine/peripheral/blk-ID/virtio-backend).
func diskOfDevice(qdev string) (string, bool) {
	const prefix = "/machine/peripheral/"
	name := qdev
	if len(name) > len(prefix) && name[:len(prefix)] == prefix {
		name = name[len(prefix):]
		for i := 0; i < len(name); i++ {
			if name[i] == '/' {
				name = name[:i]
				break
			}
		}
	}
	p := DeviceID("")
	if len(name) <= len(p) || name[:len(p)] != p {
		return "", false
	}
	return name[len(p):], true
}
