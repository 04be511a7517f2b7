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
	b, p := g.b, g.path
	var st Stats
	var errs []error
	num := func(c cgroup1.Name, name string) uint64 {
		v, err := readUint(g.files.read, b.file(c, p, name))
		if err != nil {
			errs = append(errs, err)
		}
		return v
	}
	st.CPUUsage = time.Duration(num(cgroup1.Cpuacct, "cpuacct.usage"))
	cpu, err := readKeyed(g.files.read, b.file(cgroup1.Cpu, p, "cpu.stat"))
	if err != nil {
		errs = append(errs, err)
	}
	st.CPUPeriods, st.CPUThrottledPeriods, st.CPUThrottledTime = cpu["nr_periods"], cpu["nr_throttled"], time.Duration(cpu["throttled_time"])
	st.MemoryBytes = num(cgroup1.Memory, "memory.usage_in_bytes")
	st.MemoryMaxBytes = num(cgroup1.Memory, "memory.max_usage_in_bytes")
	if st.MemoryLimitBytes = num(cgroup1.Memory, "memory.limit_in_bytes"); st.MemoryLimitBytes >= v1Unlimited {
		st.MemoryLimitBytes = 0
	}
	oom, err := readKeyed(g.files.read, b.file(cgroup1.Memory, p, "memory.oom_control"))
	if err != nil {
		errs = append(errs, err)
	}
	st.OOMKills = oom["oom_kill"]
	st.Pids = num(cgroup1.Pids, "pids.current")
	st.PidsLimit = num(cgroup1.Pids, "pids.max") // "max" reads as 0
	if b.blkio {
		bytes, err1 := readBlkio(g.files.read, b.file(cgroup1.Blkio, p, "blkio.throttle.io_service_bytes_recursive"), b.file(cgroup1.Blkio, p, "blkio.throttle.io_service_bytes"))
		ops, err2 := readBlkio(g.files.read, b.file(cgroup1.Blkio, p, "blkio.throttle.io_serviced_recursive"), b.file(cgroup1.Blkio, p, "blkio.throttle.io_serviced"))
		if err := errors.Join(err1, err2); err != nil {
			errs = append(errs, err)
		}
		st.IO = mergeIO(bytes, ops)
	}
	if err := errors.Join(errs...); err != nil {
		return Stats{}, fmt.Errorf("stats of cgroup %s: %w", g.path, classify(err))
	}
	return st, nil
}

// readUint reads a file holding one number; "max" is 0.
func readUint(read func(string) ([]byte, error), f string) (uint64, error) {
	b, err := read(f)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", f, err)
	}
	return v, nil
}

// readKeyed reads "key value" lines.
func readKeyed(read func(string) ([]byte, error), f string) (map[string]uint64, error) {
	b, err := read(f)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// blkioRow is one device's reads and writes in a blkio file.
type blkioRow struct {
	major, minor int64
	read, write  uint64
}

// readBlkio reads "MAJ:MIN Op value" lines from the first of files that
// exists (the recursive count, else the group's own).
func readBlkio(read func(string) ([]byte, error), files ...string) ([]blkioRow, error) {
	var b []byte
	var err error
	for _, f := range files {
		if b, err = read(f); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var rows []blkioRow
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 || (f[1] != "Read" && f[1] != "Write") {
			continue
		}
		a, c, ok := strings.Cut(f[0], ":")
		maj, err1 := strconv.ParseInt(a, 10, 64)
		min, err2 := strconv.ParseInt(c, 10, 64)
		v, err3 := strconv.ParseUint(f[2], 10, 64)
		if !ok || err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		i := slices.IndexFunc(rows, func(r blkioRow) bool { return r.major == maj && r.minor == min })
		if i < 0 {
			rows = append(rows, blkioRow{major: maj, minor: min})
			i = len(rows) - 1
		}
		if f[1] == "Read" {
			rows[i].read += v
		} else {
			rows[i].write += v
		}
	}
	return rows, nil
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
