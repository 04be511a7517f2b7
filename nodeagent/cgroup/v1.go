package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3/cgroup1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// v1Backend drives the v1 hierarchies mounted under root/<name>.
//
// A group exists in every mounted hierarchy, not only in those of its
// limits, so that Add takes the process out of the agent container's
// cgroups everywhere: with hostPID the runtime kills every process left in
// the container's cgroup when the agent exits (runc finds them through
// the devices hierarchy on v1), and the sandboxes must outlive the agent.
type v1Backend struct {
	root string
	// swap: the memory controller accounts swap (memory.memsw.* files),
	// so the memory limit must be set on memory+swap too.
	swap bool
	// cpuset and blkio: those hierarchies are mounted.
	cpuset, blkio bool
	// limits are the controllers a manager needs (cpu, cpuacct, memory,
	// pids).
	limits []cgroup1.Subsystem
	// subsystems are limits plus the other mounted hierarchies. Tests may
	// append one that fails.
	subsystems []cgroup1.Subsystem
	// sysBlock is sysfs' /sys/dev/block, where block devices are.
	sysBlock string
	// write writes the limits' files.
	write writeFunc
}

// pather is a library subsystem with a directory per group.
type pather interface {
	cgroup1.Subsystem
	Path(path string) string
}

// mounted reports whether s's hierarchy is mounted (a cgroup file system
// has cgroup.procs at its root; the tmpfs holding the mounts does not).
func mounted(s cgroup1.Subsystem) bool {
	ps, ok := s.(pather)
	if !ok {
		return false
	}
	_, err := os.Stat(filepath.Join(ps.Path("/"), "cgroup.procs"))
	return err == nil
}

func newV1(root string) (*v1Backend, error) {
	b := &v1Backend{root: root, sysBlock: "/sys/dev/block", write: writeKernelFile}
	b.limits = []cgroup1.Subsystem{
		cgroup1.NewCpu(root),
		cgroup1.NewCpuacct(root),
		// Stats needs usage and OOM kills only: skip the swap and kernel
		// memory files (absent on some kernels).
		cgroup1.NewMemory(root, cgroup1.IgnoreModules("memsw", "kmem", "kmem.tcp")),
		cgroup1.NewPids(root),
	}
	var missing []string
	for _, s := range b.limits {
		if !mounted(s) {
			missing = append(missing, string(s.Name()))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("cgroup v1 controllers %v are not mounted under %s: %w", missing, root, errdefs.ErrFailedPrecondition)
	}
	_, err := os.Stat(filepath.Join(root, string(cgroup1.Memory), "memory.memsw.limit_in_bytes"))
	b.swap = err == nil

	b.subsystems = slices.Clone(b.limits)
	others := []cgroup1.Subsystem{
		cgroup1.NewCpuset(root), // the library copies cpus and mems from the parent
		cgroup1.NewDevices(root),
		cgroup1.NewFreezer(root),
		cgroup1.NewBlkio(root),
		cgroup1.NewNetCls(root),
		cgroup1.NewNetPrio(root),
		cgroup1.NewPerfEvent(root),
		cgroup1.NewRdma(root),
		cgroup1.NewNamed(root, "systemd"),
	}
	if h, err := cgroup1.NewHugetlb(root); err == nil {
		others = append(others, h)
	}
	for _, s := range others {
		if !mounted(s) {
			continue
		}
		b.subsystems = append(b.subsystems, s)
		switch s.Name() {
		case cgroup1.Cpuset:
			b.cpuset = true
		case cgroup1.Blkio:
			b.blkio = true
		}
	}
	return b, nil
}

// hierarchy is every hierarchy a group lives in.
func (b *v1Backend) hierarchy() cgroup1.InitOpts {
	return cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) { return b.subsystems, nil })
}

// group wraps the library's handles of an existing group.
func (b *v1Backend) group(p string, cg cgroup1.Cgroup) (*v1Group, error) {
	g := &v1Group{path: p, b: b, cg: cg, files: newOpenFiles()}
	// A group dropped without Delete (a re-adoption's handle replaced,
	// a renamed pool VM's) closes its files when collected.
	runtime.AddCleanup(g, (*openFiles).close, g.files)
	return g, nil
}

// file is the path of one of group p's files in controller c's hierarchy.
func (b *v1Backend) file(c cgroup1.Name, p, name string) string {
	return filepath.Join(b.root, string(c), p, name)
}

// dirs are the group's directories, one per controller.
func (b *v1Backend) dirs(p string) []string {
	var out []string
	for _, s := range b.subsystems {
		if ps, ok := s.(pather); ok {
			out = append(out, ps.Path(p))
		}
	}
	return out
}

func (b *v1Backend) ensureParent(parent string) error {
	_, err := b.create(parent, Resources{})
	return err
}

func (b *v1Backend) create(p string, r Resources) (Group, error) {
	var fresh []string
	for _, d := range b.dirs(p) {
		if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
			fresh = append(fresh, d)
		}
	}
	// The library makes the directories (and copies the parent's
	// cpuset.cpus and cpuset.mems into a new one); update writes the
	// limits.
	cg, err := cgroup1.New(cgroup1.StaticPath(p), &specs.LinuxResources{}, b.hierarchy())
	var g *v1Group
	if err == nil {
		g, err = b.group(p, cg)
	}
	if err == nil {
		err = g.update(r)
	}
	if err != nil {
		// The directories made here are new, hence empty: rmdir them.
		// Those that existed stay, with their old limits.
		removeDirs(fresh)
		return nil, err
	}
	return g, nil
}

func (b *v1Backend) load(p string) (Group, error) {
	var missing []string
	n := 0
	for _, s := range b.subsystems {
		ps, ok := s.(pather)
		if !ok {
			continue
		}
		n++
		if _, err := os.Stat(ps.Path(p)); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			missing = append(missing, string(s.Name()))
		}
	}
	switch {
	case len(missing) == n:
		return nil, errdefs.ErrNotFound
	case len(missing) > 0:
		return nil, fmt.Errorf("incomplete: missing in controllers %v (Create it again, or Create and Delete it): %w", missing, errdefs.ErrFailedPrecondition)
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath(p), b.hierarchy())
	if errors.Is(err, cgroup1.ErrCgroupDeleted) {
		return nil, errdefs.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return b.group(p, cg)
}

func (b *v1Backend) children(parent string) ([]string, error) {
	var names []string
	for _, d := range b.dirs(parent) {
		ents, err := os.ReadDir(d)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if e.IsDir() && !slices.Contains(names, e.Name()) {
				names = append(names, e.Name())
			}
		}
	}
	slices.Sort(names)
	return names, nil
}

// v1Group is a group in every v1 hierarchy the backend uses.
type v1Group struct {
	path string
	b    *v1Backend
	cg   cgroup1.Cgroup // every hierarchy: Add, Delete
	// files are the accounting files Stats keeps open.
	files *openFiles
}

var _ Group = (*v1Group)(nil)

func (g *v1Group) Path() string { return g.path }

func (g *v1Group) Add(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("add pid %d to cgroup %s: %w", pid, g.path, errdefs.ErrInvalidArgument)
	}
	if err := g.cg.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("add pid %d to cgroup %s: %w", pid, g.path, classify(err))
	}
	return nil
}

func (g *v1Group) Update(r Resources) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("update cgroup %s: %w", g.path, err)
	}
	if _, err := inode(g.b.file(cgroup1.Memory, g.path, "")); err != nil {
		return fmt.Errorf("update cgroup %s: %w", g.path, err)
	}
	if err := g.update(r); err != nil {
		return fmt.Errorf("update cgroup %s: %w", g.path, err)
	}
	return nil
}

// update writes the limits r sets, all or nothing.
func (g *v1Group) update(r Resources) error {
	ss, err := g.settings(r)
	if err != nil {
		return err
	}
	return apply(ss, g.b.write)
}

// settings are the files r changes, in the order to write them, once it
// is checked that the host has what they need.
func (g *v1Group) settings(r Resources) ([]setting, error) {
	b, p := g.b, g.path
	var ss []setting
	if r.CPUWeight != nil {
		ss = append(ss, setting{file: b.file(cgroup1.Cpu, p, "cpu.shares"), value: strconv.FormatUint(cpuShares(*r.CPUWeight), 10)})
	}
	if r.CPUs != nil {
		ss = append(ss,
			setting{file: b.file(cgroup1.Cpu, p, "cpu.cfs_period_us"), value: strconv.FormatInt(periodUs, 10)},
			setting{file: b.file(cgroup1.Cpu, p, "cpu.cfs_quota_us"), value: strconv.FormatInt(quotaUs(*r.CPUs), 10)})
	}
	if r.CPUSetCPUs != nil || r.CPUSetMems != nil {
		if !b.cpuset {
			return nil, unavailable("cpuset: the cpuset controller is not mounted under %s", b.root)
		}
		if r.CPUSetCPUs != nil {
			ss = append(ss, setting{file: b.file(cgroup1.Cpuset, p, "cpuset.cpus"), value: *r.CPUSetCPUs})
		}
		if r.CPUSetMems != nil {
			ss = append(ss, setting{file: b.file(cgroup1.Cpuset, p, "cpuset.mems"), value: *r.CPUSetMems})
		}
	}
	mem, err := g.memorySettings(r)
	if err != nil {
		return nil, err
	}
	ss = append(ss, mem...)
	if r.Pids != nil {
		ss = append(ss, setting{file: b.file(cgroup1.Pids, p, "pids.max"), value: strconv.FormatInt(*r.Pids, 10)})
	}
	io, err := g.ioSettings(r)
	if err != nil {
		return nil, err
	}
	return append(ss, io...), nil
}

// memorySettings are the memory limits of r. memory.memsw.limit_in_bytes
// is memory + swap; the kernel wants it at or above memory.limit_in_bytes
// at all times, which decides the order of the two.
func (g *v1Group) memorySettings(r Resources) ([]setting, error) {
	b, p := g.b, g.path
	var ss []setting
	if r.MemoryLowBytes != nil {
		ss = append(ss, setting{file: b.file(cgroup1.Memory, p, "memory.soft_limit_in_bytes"), value: strconv.FormatInt(*r.MemoryLowBytes, 10)})
	}
	if r.MemoryBytes == nil && r.SwapBytes == nil {
		return ss, nil
	}
	if r.SwapBytes != nil && !b.swap {
		return nil, unavailable("swap %d: the memory controller does not account swap here (no memory.memsw.limit_in_bytes; the kernel needs swapaccount=1)", *r.SwapBytes)
	}
	limitFile := b.file(cgroup1.Memory, p, "memory.limit_in_bytes")
	cur, err := readV1Bytes(limitFile)
	if err != nil {
		return nil, err
	}
	limit := cur
	if r.MemoryBytes != nil {
		// The kernel would reclaim down to the new limit, and OOM-kill
		// or fail with EBUSY when it cannot.
		usage, err := readV1Bytes(b.file(cgroup1.Memory, p, "memory.usage_in_bytes"))
		if err != nil {
			return nil, err
		}
		if *r.MemoryBytes < usage {
			return nil, fmt.Errorf("memory %d: under the %d bytes the group uses now: %w", *r.MemoryBytes, usage, errdefs.ErrInvalidArgument)
		}
		limit = *r.MemoryBytes
	}
	memLimit := setting{file: limitFile, value: strconv.FormatInt(limit, 10)}
	if !b.swap {
		return append(ss, memLimit), nil
	}
	// No swap unless SwapBytes says so; on top of an unlimited memory,
	// memory + swap is unlimited too (only a swap update leaves memory
	// as it is).
	swap := int64(0)
	if r.SwapBytes != nil {
		swap = *r.SwapBytes
	}
	var memsw int64
	switch {
	case swap == -1, limit == -1:
		memsw = -1
	case limit > math.MaxInt64-swap:
		return nil, fmt.Errorf("memory %d + swap %d: overflows 64 bits: %w", limit, swap, errdefs.ErrInvalidArgument)
	default:
		memsw = limit + swap
	}
	memswLimit := setting{file: b.file(cgroup1.Memory, p, "memory.memsw.limit_in_bytes"), value: strconv.FormatInt(memsw, 10)}
	if r.MemoryBytes == nil {
		return append(ss, memswLimit), nil
	}
	if memsw == -1 || cur != -1 && memsw >= cur {
		// memory+swap first: the memory limit then rises to it, or
		// stays under it.
		return append(ss, memswLimit, memLimit), nil
	}
	return append(ss, memLimit, memswLimit), nil
}

// v1Unlimited is where v1 memory limits mean none: the kernel shows
// "unlimited" as its largest page count in bytes, just under 2^63.
const v1Unlimited = 1 << 62

// readV1Bytes reads a v1 memory file: bytes, or -1 for the kernel's
// "unlimited". A file missing (only in a test's tree) reads as 0 for a
// usage, -1 for a limit.
func readV1Bytes(file string) (int64, error) {
	b, err := readKernelFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		if strings.HasSuffix(file, "usage_in_bytes") {
			return 0, nil
		}
		return -1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", file, classify(err))
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", file, err)
	}
	if n >= v1Unlimited {
		return -1, nil
	}
	return int64(n), nil
}

// ioSettings are the block IO weight and throttles of r.
func (g *v1Group) ioSettings(r Resources) ([]setting, error) {
	if r.IOWeight == nil && len(r.IO) == 0 {
		return nil, nil
	}
	b, p := g.b, g.path
	if !b.blkio {
		return nil, unavailable("block io limits: the blkio controller is not mounted under %s", b.root)
	}
	var ss []setting
	if r.IOWeight != nil {
		w := *r.IOWeight
		for _, f := range []struct {
			name    string
			convert func(uint64) uint64
		}{{"blkio.weight", cfqWeight}, {"blkio.bfq.weight", bfqWeight}} {
			if file := b.file(cgroup1.Blkio, p, f.name); exists(file) {
				ss = append(ss, setting{file: file, value: strconv.FormatUint(f.convert(w), 10), restore: defaultWeightOf})
			}
		}
		if len(ss) == 0 {
			return nil, unavailable("io weight %d: the blkio controller has no weight here (no blkio.weight or blkio.bfq.weight: neither the CFQ nor the BFQ scheduler)", w)
		}
	}
	if len(r.IO) == 0 {
		return ss, nil
	}
	if !exists(b.file(cgroup1.Blkio, p, "blkio.throttle.read_bps_device")) {
		return nil, unavailable("io throttles: the blkio controller does not throttle here (no blkio.throttle.* files)")
	}
	if err := checkDevices(b.sysBlock, r.IO); err != nil {
		return nil, err
	}
	for _, d := range r.IO {
		restore := func(content string) string {
			if l := deviceLine(content, d); l != "" {
				return l
			}
			return fmt.Sprintf("%d:%d 0", d.Major, d.Minor)
		}
		for _, t := range []struct {
			name string
			rate uint64
		}{
			{"blkio.throttle.read_bps_device", d.ReadBps},
			{"blkio.throttle.write_bps_device", d.WriteBps},
			{"blkio.throttle.read_iops_device", d.ReadIOPS},
			{"blkio.throttle.write_iops_device", d.WriteIOPS},
		} {
			// A rate of 0 removes the device's limit.
			ss = append(ss, setting{file: b.file(cgroup1.Blkio, p, t.name), value: fmt.Sprintf("%d:%d %d", d.Major, d.Minor, t.rate), restore: restore})
		}
	}
	return ss, nil
}

func (g *v1Group) Processes() ([]int, error) {
	pids, err := processes(g.b.dirs(g.path))
	if err != nil {
		return nil, fmt.Errorf("processes of cgroup %s: %w", g.path, err)
	}
	return pids, nil
}

func (g *v1Group) Kill() error {
	if err := killAll(g.Processes); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", g.path, err)
	}
	return nil
}

func (g *v1Group) Delete() error {
	g.files.close()
	// A fresh handle: the library's refuses every call once it has
	// deleted, and the directories may be gone (or half gone) anyway.
	cg, err := cgroup1.Load(cgroup1.StaticPath(g.path), g.b.hierarchy())
	if errors.Is(err, cgroup1.ErrCgroupDeleted) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete cgroup %s: %w", g.path, err)
	}
	// Refuse before removing anything: the library would otherwise remove
	// the group from the controllers where it is empty and leave the rest.
	pids, err := processes(g.b.dirs(g.path))
	if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("delete cgroup %s: list processes: %w", g.path, err)
	}
	if len(pids) > 0 {
		return fmt.Errorf("delete cgroup %s: %d processes remain (%v): %w", g.path, len(pids), pids, errdefs.ErrFailedPrecondition)
	}
	if err := cg.Delete(); err != nil {
		return fmt.Errorf("delete cgroup %s: %w", g.path, err)
	}
	return nil
}
