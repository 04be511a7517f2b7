// Package cgroup puts sandbox processes (QEMU and its helpers) into cgroups
// with CPU, memory and PID limits. One Group interface hides whether the
// host runs cgroup v1 (one hierarchy per controller) or v2 (the unified
// hierarchy): callers never branch on the mode.
//
// The sandbox manager creates one group per sandbox under a parent such as
// /nodeagent (CPUs = the guest's vCPUs, memory = guest RAM + QEMU's own
// overhead), starts QEMU stopped (-S), moves it into the group with Add
// before the guest runs, and deletes the group when the sandbox goes. The
// order matters: cgroup v1 charges memory to the group a page was first
// touched in and does not move charges with the process.
//
// Calls for one group name must not run concurrently (the sandbox manager
// holds a per-sandbox lock); different names are independent.
package cgroup

import (
	"fmt"
	"math"
	"path"
	"strings"
	"time"

	cgroups "github.com/containerd/cgroups/v3"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// DefaultMountpoint is where the host mounts its cgroup file systems: the
// v2 hierarchy itself, or the folder of the v1 controller mounts.
const DefaultMountpoint = "/sys/fs/cgroup"

// CPUPeriod is the CFS period of every group: a group may run CPUs ×
// CPUPeriod of CPU time per period.
const CPUPeriod = 100 * time.Millisecond

const (
	periodUs   = int64(CPUPeriod / time.Microsecond)
	minQuotaUs = 1000 // the kernel refuses a quota under 1 ms
	maxCPUs    = 8192 // the kernel's largest NR_CPUS
	maxNameLen = 128
)

// Resources are a group's limits. A nil field is left as it is (on a new
// group: unlimited).
type Resources struct {
	// CPUs caps CPU time at CPUs × CPUPeriod per period (CFS bandwidth:
	// cpu.cfs_quota_us on v1, cpu.max on v2). At least 0.01.
	CPUs *float64
	// MemoryBytes is a hard limit on the group's memory, page cache
	// included; the group may not swap past it (v1: memory.memsw.limit_in_bytes
	// equals it where swap accounting is on; v2: memory.swap.max is 0 where
	// the file exists), so a guest that outgrows it is OOM-killed rather
	// than slowed down.
	MemoryBytes *int64
	// Pids caps the number of tasks (processes and threads) in the group.
	Pids *int64
}

// Validate reports a limit the kernel would refuse, wrapping
// errdefs.ErrInvalidArgument.
func (r Resources) Validate() error {
	var bad []string
	if r.CPUs != nil {
		c := *r.CPUs
		if math.IsNaN(c) || math.IsInf(c, 0) || c > maxCPUs || quotaUs(c) < minQuotaUs {
			bad = append(bad, fmt.Sprintf("cpus %v: want a number in [0.01, %d]", c, maxCPUs))
		}
	}
	if r.MemoryBytes != nil && *r.MemoryBytes <= 0 {
		bad = append(bad, fmt.Sprintf("memory %d: want a positive number of bytes", *r.MemoryBytes))
	}
	if r.Pids != nil && *r.Pids <= 0 {
		bad = append(bad, fmt.Sprintf("pids %d: want a positive number", *r.Pids))
	}
	if len(bad) > 0 {
		return fmt.Errorf("resources: %s: %w", strings.Join(bad, "; "), errdefs.ErrInvalidArgument)
	}
	return nil
}

// quotaUs is the CFS quota for cpus, in microseconds per CPUPeriod.
func quotaUs(cpus float64) int64 {
	return int64(math.Round(cpus * float64(periodUs)))
}

// Stats is what a group has used.
type Stats struct {
	// CPUUsage is the CPU time the group's tasks have consumed.
	CPUUsage time.Duration
	// MemoryBytes is the memory charged to the group now, page cache
	// included (memory.usage_in_bytes on v1, memory.current on v2).
	MemoryBytes uint64
	// Pids is the number of tasks (processes and threads) in the group.
	Pids uint64
	// OOMKills counts the processes the kernel's OOM killer killed in the
	// group because it reached its memory limit.
	OOMKills uint64
}

// Group is one cgroup (on v1: the same path in every controller used).
type Group interface {
	// Path is the cgroup's path from the hierarchy's root, as
	// /proc/PID/cgroup shows it, e.g. /nodeagent/sandbox-1.
	Path() string
	// Add moves process pid (all its threads) into the group.
	Add(pid int) error
	// Update changes the limits that r sets and leaves the others.
	Update(r Resources) error
	// Stats reads the group's usage.
	Stats() (Stats, error)
	// Delete removes the group. It fails, wrapping
	// errdefs.ErrFailedPrecondition, while processes remain in it, and
	// succeeds when the group is already gone.
	Delete() error
}

// Mode is the cgroup version a host runs.
type Mode int

const (
	// V1 is the legacy layout: one hierarchy per controller, mounted under
	// /sys/fs/cgroup/<controller> (also the "hybrid" layout, whose v2
	// hierarchy holds no controller).
	V1 Mode = iota + 1
	// V2 is the unified hierarchy mounted at /sys/fs/cgroup.
	V2
)

func (m Mode) String() string {
	switch m {
	case V1:
		return "v1"
	case V2:
		return "v2"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Detect tells the host's cgroup mode from /sys/fs/cgroup.
func Detect() (Mode, error) {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return V2, nil
	case cgroups.Legacy, cgroups.Hybrid:
		return V1, nil
	}
	return 0, fmt.Errorf("detect cgroup mode: nothing usable mounted at %s: %w", DefaultMountpoint, errdefs.ErrFailedPrecondition)
}

// Option changes how NewManager finds the cgroup file systems.
type Option func(*config)

type config struct{ mountpoint string }

// WithMountpoint sets where the cgroup file systems are (default
// DefaultMountpoint): the v2 hierarchy, or the folder of the v1 controller
// mounts. Tests point it at a temporary tree that mimics the kernel's files.
func WithMountpoint(dir string) Option {
	return func(c *config) { c.mountpoint = dir }
}

// backend is one cgroup version's implementation of the Manager's work.
// Paths are cgroup paths (from the hierarchy's root), already validated.
type backend interface {
	ensureParent(parent string) error
	create(path string, r Resources) (Group, error)
	// load returns a group wrapping errdefs.ErrNotFound when it is absent.
	load(path string) (Group, error)
	// children lists the names of the groups under parent.
	children(parent string) ([]string, error)
}

// Manager creates and finds the groups under one parent cgroup. Every
// child of the parent is taken to be one of its groups (List reports them
// all), so the parent must be dedicated to it.
type Manager struct {
	mode    Mode
	parent  string
	backend backend
}

// NewManager checks that the controllers it needs (cpu, cpuacct on v1,
// memory, pids) are available in mode, and creates the parent cgroup (an
// absolute cgroup path such as /nodeagent, not the root) if it is missing.
func NewManager(mode Mode, parent string, opts ...Option) (*Manager, error) {
	cfg := config{mountpoint: DefaultMountpoint}
	for _, o := range opts {
		o(&cfg)
	}
	if err := validParent(parent); err != nil {
		return nil, err
	}
	parent = path.Clean(parent)
	var b backend
	var err error
	switch mode {
	case V1:
		b, err = newV1(cfg.mountpoint)
	case V2:
		b, err = newV2(cfg.mountpoint)
	default:
		return nil, fmt.Errorf("new cgroup manager: unknown mode %v: %w", mode, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, err
	}
	if err := b.ensureParent(parent); err != nil {
		return nil, fmt.Errorf("create parent cgroup %s: %w", parent, err)
	}
	return &Manager{mode: mode, parent: parent, backend: b}, nil
}

// Mode is the cgroup version the manager drives.
func (m *Manager) Mode() Mode { return m.mode }

// Parent is the cgroup path the groups live under.
func (m *Manager) Parent() string { return m.parent }

// Create creates group name with limits r, or applies r to the group if
// it exists already. When it fails, it removes whatever it created.
func (m *Manager) Create(name string, r Resources) (Group, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", name, err)
	}
	p := path.Join(m.parent, name)
	g, err := m.backend.create(p, r)
	if err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", p, err)
	}
	return g, nil
}

// Load finds an existing group (to adopt it again after a restart of the
// agent). It wraps errdefs.ErrNotFound when the group does not exist.
func (m *Manager) Load(name string) (Group, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	p := path.Join(m.parent, name)
	g, err := m.backend.load(p)
	if err != nil {
		return nil, fmt.Errorf("load cgroup %s: %w", p, err)
	}
	return g, nil
}

// List returns the names of the groups under the parent, sorted (to find
// groups that no sandbox owns any more).
func (m *Manager) List() ([]string, error) {
	names, err := m.backend.children(m.parent)
	if err != nil {
		return nil, fmt.Errorf("list cgroups under %s: %w", m.parent, err)
	}
	return names, nil
}

// ValidName reports whether name can name a group: 1 to 128 letters,
// digits, '_', '-' or '.', not starting with '.' (no path, no clash with
// the kernel's files such as cgroup.procs). The error wraps
// errdefs.ErrInvalidArgument.
func ValidName(name string) error {
	ok := name != "" && len(name) <= maxNameLen && name[0] != '.'
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
	}
	if !ok {
		return fmt.Errorf("cgroup name %q: want 1 to %d letters, digits, '_', '-' or '.', not starting with '.': %w", name, maxNameLen, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validParent checks an absolute cgroup path below the root.
func validParent(p string) error {
	if !strings.HasPrefix(p, "/") || path.Clean(p) == "/" {
		return fmt.Errorf("parent cgroup %q: want an absolute cgroup path below the root, such as /nodeagent: %w", p, errdefs.ErrInvalidArgument)
	}
	for _, el := range strings.Split(strings.Trim(path.Clean(p), "/"), "/") {
		if err := ValidName(el); err != nil {
			return fmt.Errorf("parent cgroup %q: %w", p, err)
		}
	}
	return nil
}
