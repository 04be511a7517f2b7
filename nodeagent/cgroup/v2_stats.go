package cgroup

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"
)

func (g *v2Group) Stats() (Stats, error) {
	// The library reads a missing file as zero: check the group first.
	if err := g.exists(); err != nil {
		return Stats{}, fmt.Errorf("stats of cgroup %s: %w", g.path, err)
	}
	m, err := g.m.StatFiltered(cgroup2.StatCPU | cgroup2.StatMemory | cgroup2.StatMemoryEvents | cgroup2.StatPids | cgroup2.StatIO)
	if err != nil {
		return Stats{}, fmt.Errorf("stats of cgroup %s: %w", g.path, classify(err))
	}
	cpu, mem := m.GetCPU(), m.GetMemory()
	s := Stats{
		CPUUsage:            time.Duration(cpu.GetUsageUsec()) * time.Microsecond,
		CPUPeriods:          cpu.GetNrPeriods(),
		CPUThrottledPeriods: cpu.GetNrThrottled(),
		CPUThrottledTime:    time.Duration(cpu.GetThrottledUsec()) * time.Microsecond,
		MemoryBytes:         mem.GetUsage(),
		MemoryMaxBytes:      mem.GetMaxUsage(), // memory.peak, 0 before Linux 5.19
		MemoryLimitBytes:    noMax(mem.GetUsageLimit()),
		OOMKills:            m.GetMemoryEvents().GetOomKill(),
		Pids:                m.GetPids().GetCurrent(),
		PidsLimit:           noMax(m.GetPids().GetLimit()),
	}
	for _, e := range m.GetIo().GetUsage() {
		d := DeviceIOStats{
			Major: int64(e.GetMajor()), Minor: int64(e.GetMinor()),
			ReadBytes: e.GetRbytes(), WriteBytes: e.GetWbytes(), ReadOps: e.GetRios(), WriteOps: e.GetWios(),
		}
		if d != (DeviceIOStats{Major: d.Major, Minor: d.Minor}) {
			s.IO = append(s.IO, d)
		}
	}
	slices.SortFunc(s.IO, compareDevices)
	return s, nil
}

// noMax is a v2 limit the library read: "max" (none) is 0.
func noMax(n uint64) uint64 {
	if n == math.MaxUint64 {
		return 0
	}
	return n
}
