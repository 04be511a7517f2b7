package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	librbd "github.com/ceph/go-ceph/rbd"
)

// ListVolumes returns the journaled volumes in pool that exist, sorted by
// CSI name (the order the driver pages in). Names journaled whose image
// was never created (a crash in CreateVolume) are left out.
func (c *Conn) ListVolumes(ctx context.Context, pool string) ([]Volume, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	defer io.Destroy()
	entries, err := journal{io}.volumes()
	if err != nil {
		return nil, err
	}
	var out []Volume
	for _, e := range entries {
		img, err := librbd.OpenImageReadOnly(io, e.value, librbd.NoSnapshot)
		if errors.Is(err, librbd.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open %s/%s: %w", pool, e.value, err)
		}
		size, err := img.GetSize()
		_ = img.Close()
		if err != nil {
			return nil, fmt.Errorf("size of %s/%s: %w", pool, e.value, err)
		}
		out = append(out, Volume{Name: e.name, Pool: pool, Image: e.value, SizeBytes: size})
	}
	return out, nil
}

// PoolStat is the space of a pool, for GetCapacity.
type PoolStat struct {
	// AvailableBytes is what can still be written to the pool: the
	// monitors' max_avail (which accounts for replication and the full
	// ratio), or, when the user may not ask the monitors, the cluster's
	// raw free space.
	AvailableBytes uint64
	UsedBytes      uint64 // bytes stored in the pool
	Objects        uint64
}

// PoolStats returns the space of pool. A missing pool is ErrNotFound.
func (c *Conn) PoolStats(ctx context.Context, pool string) (PoolStat, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return PoolStat{}, err
	}
	defer io.Destroy()
	ps, err := io.GetPoolStats()
	if err != nil {
		return PoolStat{}, fmt.Errorf("stats of pool %s: %w", pool, err)
	}
	st := PoolStat{UsedBytes: ps.Num_bytes, Objects: ps.Num_objects}
	if avail, ok := c.maxAvail(pool); ok {
		st.AvailableBytes = avail
		return st, nil
	}
	cs, err := c.rados.GetClusterStats()
	if err != nil {
		return PoolStat{}, fmt.Errorf("cluster stats: %w", err)
	}
	st.AvailableBytes = cs.Kb_avail * 1024
	return st, nil
}

// maxAvail asks the monitors ("ceph df") how much can still be written
// to pool.
func (c *Conn) maxAvail(pool string) (uint64, bool) {
	out, _, err := c.rados.MonCommand([]byte(`{"prefix":"df","format":"json"}`))
	if err != nil {
		return 0, false
	}
	var df struct {
		Pools []struct {
			Name  string `json:"name"`
			Stats struct {
				MaxAvail uint64 `json:"max_avail"`
			} `json:"stats"`
		} `json:"pools"`
	}
	if json.Unmarshal(out, &df) != nil {
		return 0, false
	}
	for _, p := range df.Pools {
		if p.Name == pool {
			return p.Stats.MaxAvail, true
		}
	}
	return 0, false
}
