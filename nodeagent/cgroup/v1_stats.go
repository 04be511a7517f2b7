package cgroup

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
)

// Stats reads the dozen files it reports straight from the kernel (the
// library's Stat reads every file of every controller, memory.stat and
// the per-CPU counts included, several times slower).
func (g *v1Group) Stats() (Stats, error) {
	var st Stats
	var errs []error
	num := func(c cgroup1.Name, name string) uint64 {
		s, err := g.read(c, name)
		if err != nil {
			errs = append(errs, err)
			return 0
		}
		v, err := parseUint(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("parse %s: %w", g.b.file(c, g.path, name), err))
		}
		return v
	}
	keyedFile := func(c cgroup1.Name, name string) string {
		s, err := g.read(c, name)
		if err != nil {
			errs = append(errs, err)
		}
		return s
	}
	st.CPUUsage = time.Duration(num(cgroup1.Cpuacct, "cpuacct.usage"))
	cpu := keyedFile(cgroup1.Cpu, "cpu.stat")
	st.CPUPeriods, st.CPUThrottledPeriods, st.CPUThrottledTime = keyed(cpu, "nr_periods"), keyed(cpu, "nr_throttled"), time.Duration(keyed(cpu, "throttled_time"))
	st.MemoryBytes = num(cgroup1.Memory, "memory.usage_in_bytes")
	st.MemoryMaxBytes = num(cgroup1.Memory, "memory.max_usage_in_bytes")
	if st.MemoryLimitBytes = num(cgroup1.Memory, "memory.limit_in_bytes"); st.MemoryLimitBytes >= v1Unlimited {
		st.MemoryLimitBytes = 0
	}
	st.OOMKills = keyed(keyedFile(cgroup1.Memory, "memory.oom_control"), "oom_kill")
	st.Pids = num(cgroup1.Pids, "pids.current")
	st.PidsLimit = num(cgroup1.Pids, "pids.max") // "max" reads as 0
	if g.b.blkio {
		// The recursive counts, else (older kernels) the group's own.
		blkio := func(name string) []blkioRow {
			s, err := g.read(cgroup1.Blkio, name+"_recursive")
			if err != nil {
				if s, err = g.read(cgroup1.Blkio, name); err != nil {
					errs = append(errs, err)
				}
			}
			return parseBlkio(s)
		}
		st.IO = mergeIO(blkio("blkio.throttle.io_service_bytes"), blkio("blkio.throttle.io_serviced"))
	}
	if err := errors.Join(errs...); err != nil {
		return Stats{}, fmt.Errorf("stats of cgroup %s: %w", g.path, classify(err))
	}
	return st, nil
}

// read reads one of the group's files in controller c's hierarchy,
// through the files it keeps open.
func (g *v1Group) read(c cgroup1.Name, name string) (string, error) {
	return g.files.read(fileKey{string(c), name}, func() string { return g.b.file(c, g.path, name) })
}

// parseUint parses a file holding one number; "max" is 0.
func parseUint(content string) (uint64, error) {
	s := strings.TrimSpace(content)
	if s == "max" {
		return 0, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

// keyed is the value of key in "key value" lines, or 0.
func keyed(content, key string) uint64 {
	for content != "" {
		var l string
		l, content, _ = strings.Cut(content, "\n")
		if k, v, ok := strings.Cut(l, " "); ok && k == key {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// blkioRow is one device's reads and writes in a blkio file.
type blkioRow struct {
	major, minor int64
	read, write  uint64
}

// parseBlkio parses "MAJ:MIN Op value" lines.
func parseBlkio(content string) []blkioRow {
	var rows []blkioRow
	for content != "" {
		var l string
		l, content, _ = strings.Cut(content, "\n")
		dev, rest, ok1 := strings.Cut(l, " ")
		op, val, ok2 := strings.Cut(rest, " ")
		if !ok1 || !ok2 || (op != "Read" && op != "Write") {
			continue
		}
		a, c, ok := strings.Cut(dev, ":")
		maj, err1 := strconv.ParseInt(a, 10, 64)
		min, err2 := strconv.ParseInt(c, 10, 64)
		v, err3 := strconv.ParseUint(strings.TrimSpace(val), 10, 64)
		if !ok || err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		i := slices.IndexFunc(rows, func(r blkioRow) bool { return r.major == maj && r.minor == min })
		if i < 0 {
			rows = append(rows, blkioRow{major: maj, minor: min})
			i = len(rows) - 1
		}
		if op == "Read" {
			rows[i].read += v
		} else {
			rows[i].write += v
		}
	}
	return rows
}

// mergeIO joins the bytes and operations per device, leaving out the
// devices without IO (as v2's io.stat does), sorted.
func mergeIO(bytes, ops []blkioRow) []DeviceIOStats {
	var out []DeviceIOStats
	at := func(maj, min int64) *DeviceIOStats {
		i := slices.IndexFunc(out, func(d DeviceIOStats) bool { return d.Major == maj && d.Minor == min })
		if i < 0 {
			out = append(out, DeviceIOStats{Major: maj, Minor: min})
			i = len(out) - 1
		}
		return &out[i]
	}
	for _, r := range bytes {
		if r.read+r.write > 0 {
			d := at(r.major, r.minor)
			d.ReadBytes, d.WriteBytes = r.read, r.write
		}
	}
	for _, r := range ops {
		if r.read+r.write > 0 {
			d := at(r.major, r.minor)
			d.ReadOps, d.WriteOps = r.read, r.write
		}
	}
	slices.SortFunc(out, compareDevices)
	return out
}

func compareDevices(a, b DeviceIOStats) int {
	if a.Major != b.Major {
		return int(a.Major - b.Major)
	}
	return int(a.Minor - b.Minor)
}
