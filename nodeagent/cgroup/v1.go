package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

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
	// limits are the controllers of the limits and stats (cpu, cpuacct,
	// memory, pids), in the order they are created and updated.
	limits []cgroup1.Subsystem
	// subsystems are limits plus the other mounted hierarchies. Tests may
	// append one that fails.
	subsystems []cgroup1.Subsystem
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
	b := &v1Backend{root: root}
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
		if mounted(s) {
			b.subsystems = append(b.subsystems, s)
		}
	}
	return b, nil
}

// hierarchy is every hierarchy a group lives in.
func (b *v1Backend) hierarchy() cgroup1.InitOpts {
	return cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) { return b.subsystems, nil })
}

// limitsHierarchy is the hierarchies of the limits and stats.
func (b *v1Backend) limitsHierarchy() cgroup1.InitOpts {
	return cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) { return b.limits, nil })
}

// group wraps the library's handles of an existing group.
func (b *v1Backend) group(p string, cg cgroup1.Cgroup) (*v1Group, error) {
	lim, err := cgroup1.Load(cgroup1.StaticPath(p), b.limitsHierarchy())
	if err != nil {
		return nil, err
	}
	return &v1Group{path: p, b: b, cg: cg, lim: lim}, nil
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

// spec translates r into the library's (runtime-spec) resources.
func (b *v1Backend) spec(r Resources) *specs.LinuxResources {
	s := &specs.LinuxResources{}
	if r.CPUs != nil {
		quota, period := quotaUs(*r.CPUs), uint64(periodUs)
		s.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if r.MemoryBytes != nil {
		limit := *r.MemoryBytes
		s.Memory = &specs.LinuxMemory{Limit: &limit}
		if b.swap {
			// memory+swap = memory: no swap. The library orders the
			// two writes so that memsw never drops under the limit.
			memsw := limit
			s.Memory.Swap = &memsw
		}
	}
	if r.Pids != nil {
		limit := *r.Pids
		s.Pids = &specs.LinuxPids{Limit: &limit}
	}
	return s
}

// raiseMemsw lifts an existing group's memory+swap limit to the new
// memory limit when that is higher: the kernel refuses a memory limit
// above memory+swap, and the library always writes memory first (its
// Update means to reorder the two writes when raising them, but in
// containerd/cgroups v3.1.3 it swaps the wrong pair of settings).
func (b *v1Backend) raiseMemsw(p string, r Resources) error {
	if !b.swap || r.MemoryBytes == nil {
		return nil
	}
	f := filepath.Join(b.root, string(cgroup1.Memory), p, "memory.memsw.limit_in_bytes")
	cur, err := os.ReadFile(f)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // a new group: both limits are unlimited
	}
	if err != nil {
		return err
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(cur)), 10, 64)
	if err != nil {
		return fmt.Errorf("parse %s: %w", f, err)
	}
	if n >= uint64(*r.MemoryBytes) {
		return nil
	}
	return os.WriteFile(f, []byte(strconv.FormatInt(*r.MemoryBytes, 10)), 0)
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
	if err := b.raiseMemsw(p, r); err != nil {
		return nil, err
	}
	cg, err := cgroup1.New(cgroup1.StaticPath(p), b.spec(r), b.hierarchy())
	var g *v1Group
	if err == nil {
		g, err = b.group(p, cg)
	}
	if err != nil {
		// The directories made here are new, hence empty: rmdir them.
		// Those that existed stay.
		for _, d := range fresh {
			_ = removeV1Dir(d)
		}
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

// removeV1Dir removes an empty cgroup directory, retrying while the
// kernel still sees it busy (a task that just exited).
func removeV1Dir(d string) error {
	var err error
	for delay := 10 * time.Millisecond; delay < time.Second; delay *= 2 {
		err = syscall.Rmdir(d)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EAGAIN) {
			break
		}
		time.Sleep(delay)
	}
	return &fs.PathError{Op: "rmdir", Path: d, Err: err}
}

// v1Group is a group in every v1 hierarchy the backend uses.
type v1Group struct {
	path string
	b    *v1Backend
	cg   cgroup1.Cgroup // every hierarchy: Add
	lim  cgroup1.Cgroup // the limits' controllers: Update, Stats
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
	if err := g.b.raiseMemsw(g.path, r); err != nil {
		return fmt.Errorf("update cgroup %s: %w", g.path, classify(err))
	}
	if err := g.lim.Update(g.b.spec(r)); err != nil {
		return fmt.Errorf("update cgroup %s: %w", g.path, classify(err))
	}
	return nil
}

func (g *v1Group) Stats() (Stats, error) {
	m, err := g.lim.Stat()
	if err != nil {
		return Stats{}, fmt.Errorf("stats of cgroup %s: %w", g.path, classify(err))
	}
	var s Stats
	if u := m.GetCPU().GetUsage(); u != nil {
		s.CPUUsage = time.Duration(u.GetTotal())
	}
	if u := m.GetMemory().GetUsage(); u != nil {
		s.MemoryBytes = u.GetUsage()
	}
	s.Pids = m.GetPids().GetCurrent()
	s.OOMKills = m.GetMemoryOomControl().GetOomKill()
	return s, nil
}

func (g *v1Group) Delete() error {
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
	var pids []int
	for _, s := range cg.Subsystems() {
		procs, err := cg.Processes(s.Name(), true)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("delete cgroup %s: list processes: %w", g.path, err)
		}
		for _, p := range procs {
			if !slices.Contains(pids, p.Pid) {
				pids = append(pids, p.Pid)
			}
		}
	}
	if len(pids) > 0 {
		slices.Sort(pids)
		return fmt.Errorf("delete cgroup %s: %d processes remain (%v): %w", g.path, len(pids), pids, errdefs.ErrFailedPrecondition)
	}
	if err := cg.Delete(); err != nil {
		return fmt.Errorf("delete cgroup %s: %w", g.path, err)
	}
	return nil
}

// classify wraps the sentinel that fits a kernel error.
func classify(err error) error {
	switch {
	case errors.Is(err, syscall.ESRCH), errors.Is(err, fs.ErrNotExist), errors.Is(err, cgroup1.ErrCgroupDeleted):
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	}
	return err
}
