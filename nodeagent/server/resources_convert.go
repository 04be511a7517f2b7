package server

import (
	"fmt"
	"sort"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
)

// ResourcesFromProto converts limits; nil sets none. A device that names
// no block device of this host is InvalidArgument.
func ResourcesFromProto(p *apiv1.Resources) (cgroup.Resources, error) {
	var r cgroup.Resources
	if p == nil {
		return r, nil
	}
	r.CPUs, r.CPUWeight, r.CPUSetCPUs, r.CPUSetMems = p.Cpus, p.CpuWeight, p.CpusetCpus, p.CpusetMems
	r.MemoryBytes, r.MemoryLowBytes, r.SwapBytes, r.Pids, r.IOWeight = p.MemoryBytes, p.MemoryLowBytes, p.SwapBytes, p.Pids, p.IoWeight
	for _, d := range p.GetIo() {
		major, minor, err := cgroup.ParseDevice(d.GetDevice())
		if err != nil {
			return r, fmt.Errorf("io limits: %w", err)
		}
		r.IO = append(r.IO, cgroup.DeviceIO{Major: major, Minor: minor, ReadBps: d.GetReadBps(), WriteBps: d.GetWriteBps(),
			ReadIOPS: d.GetReadIops(), WriteIOPS: d.GetWriteIops()})
	}
	return r, nil
}

// ResourcesToProto renders limits; devices as MAJOR:MINOR.
func ResourcesToProto(r cgroup.Resources) *apiv1.Resources {
	p := &apiv1.Resources{Cpus: r.CPUs, CpuWeight: r.CPUWeight, CpusetCpus: r.CPUSetCPUs, CpusetMems: r.CPUSetMems,
		MemoryBytes: r.MemoryBytes, MemoryLowBytes: r.MemoryLowBytes, SwapBytes: r.SwapBytes, Pids: r.Pids, IoWeight: r.IOWeight}
	for _, d := range r.IO {
		p.Io = append(p.Io, &apiv1.DeviceIOLimit{Device: fmt.Sprintf("%d:%d", d.Major, d.Minor), ReadBps: d.ReadBps, WriteBps: d.WriteBps,
			ReadIops: d.ReadIOPS, WriteIops: d.WriteIOPS})
	}
	return p
}

// StatsToProto renders a cgroup's accounting; disks (a sandbox's QEMU
// counters) join the IO list by disk ID.
func StatsToProto(s cgroup.Stats, path string, disks map[string]sandbox.BlockStats, netRx, netTx uint64) *apiv1.ResourceStats {
	p := &apiv1.ResourceStats{
		CpuUsageNs: uint64(s.CPUUsage), CpuPeriods: s.CPUPeriods, CpuThrottledPeriods: s.CPUThrottledPeriods,
		CpuThrottledNs: uint64(s.CPUThrottledTime), MemoryBytes: s.MemoryBytes, MemoryMaxBytes: s.MemoryMaxBytes,
		MemoryLimitBytes: s.MemoryLimitBytes, OomKills: s.OOMKills, Pids: s.Pids, PidsLimit: s.PidsLimit, Cgroup: path,
		NetworkReceiveBytes: netRx, NetworkTransmitBytes: netTx,
	}
	for _, d := range s.IO {
		p.Io = append(p.Io, &apiv1.DeviceIOStats{Device: fmt.Sprintf("%d:%d", d.Major, d.Minor), ReadBytes: d.ReadBytes,
			WriteBytes: d.WriteBytes, ReadOps: d.ReadOps, WriteOps: d.WriteOps})
	}
	ids := make([]string, 0, len(disks))
	for id := range disks {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		d := disks[id]
		p.Io = append(p.Io, &apiv1.DeviceIOStats{Device: id, ReadBytes: d.ReadBytes, WriteBytes: d.WriteBytes, ReadOps: d.ReadOps, WriteOps: d.WriteOps})
	}
	return p
}

// QoSFromProto converts a disk's QoS; nil is none.
func QoSFromProto(p *apiv1.DiskQoS) sandbox.DiskQoS {
	return sandbox.DiskQoS{ReadBps: p.GetReadBps(), WriteBps: p.GetWriteBps(), ReadIOPS: p.GetReadIops(), WriteIOPS: p.GetWriteIops()}
}

// QoSToProto renders a disk's QoS; none is nil.
func QoSToProto(q sandbox.DiskQoS) *apiv1.DiskQoS {
	if q == (sandbox.DiskQoS{}) {
		return nil
	}
	return &apiv1.DiskQoS{ReadBps: q.ReadBps, WriteBps: q.WriteBps, ReadIops: q.ReadIOPS, WriteIops: q.WriteIOPS}
}
