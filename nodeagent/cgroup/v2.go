package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3/cgroup2"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// v2Controllers are the controllers a group needs; they are enabled for
// every group whatever its limits, so that a later Update and Stats work.
var v2Controllers = []string{"cpu", "memory", "pids"}

// v2Backend drives the unified hierarchy mounted at mount.
type v2Backend struct{ mount string }

func newV2(mount string) (*v2Backend, error) {
	b, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("no cgroup v2 hierarchy at %s: %w: %w", mount, err, errdefs.ErrFailedPrecondition)
	}
	have := strings.Fields(string(b))
	var missing []string
	for _, c := range v2Controllers {
		if !slices.Contains(have, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("cgroup v2 at %s lacks controllers %v (it has %v): %w", mount, missing, have, errdefs.ErrFailedPrecondition)
	}
	return &v2Backend{mount: mount}, nil
}

func (b *v2Backend) dir(p string) string { return filepath.Join(b.mount, p) }

// v2Resources translates r. CPU, Memory and Pids are never nil: that is
// what makes the library enable their controllers.
func v2Resources(r Resources) *cgroup2.Resources {
	res := &cgroup2.Resources{CPU: &cgroup2.CPU{}, Memory: &cgroup2.Memory{}, Pids: &cgroup2.Pids{}}
	if r.CPUs != nil {
		quota, period := quotaUs(*r.CPUs), uint64(periodUs)
		res.CPU.Max = cgroup2.NewCPUMax(&quota, &period)
	}
	if r.MemoryBytes != nil {
		limit := *r.MemoryBytes
		res.Memory.Max = &limit
	}
	if r.Pids != nil {
		res.Pids.Max = *r.Pids
	}
	return res
}

// update writes r into the group's files.
func (b *v2Backend) update(m *cgroup2.Manager, p string, r Resources) error {
	if err := m.Update(v2Resources(r)); err != nil {
		return err
	}
	return b.noSwap(m, p, r)
}

// noSwap turns swap off (memory.swap.max 0) with a memory limit, where
// the kernel accounts swap (the file exists).
func (b *v2Backend) noSwap(m *cgroup2.Manager, p string, r Resources) error {
	if r.MemoryBytes == nil {
		return nil
	}
	if _, err := os.Stat(filepath.Join(b.dir(p), "memory.swap.max")); err != nil {
		return nil
	}
	zero := int64(0)
	return m.Update(&cgroup2.Resources{Memory: &cgroup2.Memory{Swap: &zero}})
}

func (b *v2Backend) ensureParent(parent string) error {
	// Creates the parent and enables the controllers in its ancestors'
	// cgroup.subtree_control; each group's creation enables them in the
	// parent's.
	_, err := cgroup2.NewManager(b.mount, parent, v2Resources(Resources{}))
	return err
}

func (b *v2Backend) create(p string, r Resources) (Group, error) {
	if _, err := os.Stat(b.dir(p)); err == nil {
		m, err := cgroup2.Load(p, cgroup2.WithMountpoint(b.mount))
		if err != nil {
			return nil, err
		}
		if err := b.update(m, p, r); err != nil {
			return nil, err
		}
		return &v2Group{path: p, b: b, m: m}, nil
	}
	// NewManager removes the directory when it fails; so does the swap
	// step below.
	m, err := cgroup2.NewManager(b.mount, p, v2Resources(r))
	if err != nil {
		return nil, err
	}
	if err := b.noSwap(m, p, r); err != nil {
		_ = os.RemoveAll(b.dir(p))
		return nil, err
	}
	return &v2Group{path: p, b: b, m: m}, nil
}

func (b *v2Backend) load(p string) (Group, error) {
	fi, err := os.Stat(b.dir(p))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errdefs.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory: %w", b.dir(p), errdefs.ErrFailedPrecondition)
	}
	m, err := cgroup2.Load(p, cgroup2.WithMountpoint(b.mount))
	if err != nil {
		return nil, err
	}
	return &v2Group{path: p, b: b, m: m}, nil
}

func (b *v2Backend) children(parent string) ([]string, error) {
	ents, err := os.ReadDir(b.dir(parent))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// v2Group is a group of the unified hierarchy.
type v2Group struct {
	path string
	b    *v2Backend
	m    *cgroup2.Manager
}

var _ Group = (*v2Group)(nil)

func (g *v2Group) Path() string { return g.path }

func (g *v2Group) Add(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("add pid %d to cgroup %s: %w", pid, g.path, errdefs.ErrInvalidArgument)
	}
	if err := g.exists(); err != nil {
		return fmt.Errorf("add pid %d to cgroup %s: %w", pid, g.path, err)
	}
	if err := g.m.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("add pid %d to cgroup %s: %w", pid, g.path, classify(err))
	}
	return nil
}

func (g *v2Group) Update(r Resources) error {
	if err := r.Validate(); err != nil {
		return fmt.Errorf("update cgroup %s: %w", g.path, err)
	}
	if err := g.exists(); err != nil {
		return fmt.Errorf("update cgroup %s: %w", g.path, err)
	}
	if err := g.b.update(g.m, g.path, r); err != nil {
		return fmt.Errorf("update cgroup %s: %w", g.path, classify(err))
	}
	return nil
}

func (g *v2Group) Stats() (Stats, error) {
	// The library reads a missing file as zero: check the group first.
	if err := g.exists(); err != nil {
		return Stats{}, fmt.Errorf("stats of cgroup %s: %w", g.path, err)
	}
	m, err := g.m.StatFiltered(cgroup2.StatCPU | cgroup2.StatMemory | cgroup2.StatMemoryEvents | cgroup2.StatPids)
	if err != nil {
		return Stats{}, fmt.Errorf("stats of cgroup %s: %w", g.path, classify(err))
	}
	return Stats{
		CPUUsage:    time.Duration(m.GetCPU().GetUsageUsec()) * time.Microsecond,
		MemoryBytes: m.GetMemory().GetUsage(),
		Pids:        m.GetPids().GetCurrent(),
		OOMKills:    m.GetMemoryEvents().GetOomKill(),
	}, nil
}

func (g *v2Group) Delete() error {
	if err := g.exists(); errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	procs, err := g.m.Procs(true)
	if err != nil {
		return fmt.Errorf("delete cgroup %s: list processes: %w", g.path, err)
	}
	if len(procs) > 0 {
		slices.Sort(procs)
		return fmt.Errorf("delete cgroup %s: %d processes remain (%v): %w", g.path, len(procs), procs, errdefs.ErrFailedPrecondition)
	}
	if err := g.m.Delete(); err != nil {
		return fmt.Errorf("delete cgroup %s: %w", g.path, err)
	}
	return nil
}

// exists wraps errdefs.ErrNotFound when the group's directory is gone.
func (g *v2Group) exists() error {
	if _, err := os.Stat(g.b.dir(g.path)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("the cgroup is gone: %w", errdefs.ErrNotFound)
		}
		return err
	}
	return nil
}
