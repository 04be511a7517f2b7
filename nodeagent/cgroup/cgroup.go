// Package cgroup puts sandbox processes (QEMU and its helpers) into cgroups
// with CPU, memory, PID and block IO limits. One Group interface hides
// whether the host runs cgroup v1 (one hierarchy per controller) or v2 (the
// unified hierarchy): callers never branch on the mode. What a host lacks
// (swap accounting, the cpuset controller, an IO weight) is refused with
// errdefs.ErrFailedPrecondition, the same way on both.
//
// The sandbox manager creates one group per sandbox (CPUs = the guest's
// vCPUs, memory = guest RAM + QEMU's own overhead) under the manager's
// parent such as /nodeagent, or under another such as a pod's cgroup
// (CreateIn); it starts QEMU stopped (-S), moves it into the group with Add
// before the guest runs, watches it for OOM kills, and kills what is left
// and deletes the group when the sandbox goes. The order matters: cgroup
// v1 charges memory to the group a page was first touched in and does not
// move charges with the process.
//
// Limits are written all or nothing: Update checks every limit first
// (Validate, then what the host has and what the group uses), reads the
// current value of every file it will write, writes, and puts the old
// values back in reverse order when the kernel refuses one. The
// containerd/cgroups library creates, loads, fills and deletes groups and
// reads their statistics; the limits are this package's own writes, since
// the library's Update stops half way on an error.
//
// Calls for one group name must not run concurrently (the sandbox manager
// holds a per-sandbox lock); different names are independent.
package cgroup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"slices"
	"strconv"
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
	maxNodes   = 1024 // the kernel's largest MAX_NUMNODES
	maxNameLen = 128
	// CPUWeight and IOWeight are on cgroup v2's scale.
	minWeight     = 1
	maxWeight     = 10000
	defaultWeight = 100
	// A dev_t holds a 12-bit major and a 20-bit minor number.
	maxMajor = 1<<12 - 1
	maxMinor = 1<<20 - 1
	maxIOPS  = math.MaxUint32 - 1
)

// Resources are a group's limits. A nil field is left as it is (on a new
// group: unlimited, or the kernel's default).
type Resources struct {
	// CPUs caps CPU time at CPUs × CPUPeriod per period (CFS bandwidth:
	// cpu.cfs_quota_us on v1, cpu.max on v2). At least 0.01 (the kernel's
	// 1 ms minimum quota).
	CPUs *float64 `json:"cpus,omitempty"`
	// CPUWeight is the group's share of contended CPU, 1-10000 (v2
	// cpu.weight; default 100). On v1 it is cpu.shares = weight × 1024 /
	// 100, so 100 is v1's default 1024 too.
	CPUWeight *uint64 `json:"cpuWeight,omitempty"`
	// CPUSetCPUs and CPUSetMems pin the group to CPUs and memory nodes, in
	// the kernel's list format ("0-1,3"). They must lie within the
	// parent's.
	CPUSetCPUs *string `json:"cpusetCPUs,omitempty"`
	CPUSetMems *string `json:"cpusetMems,omitempty"`
	// MemoryBytes is a hard limit on the group's memory, page cache
	// included. With SwapBytes unset or 0 the group may not swap past it
	// (v1: memory.memsw.limit_in_bytes equals it where swap accounting is
	// on; v2: memory.swap.max is 0 where the file exists), so a process
	// that outgrows it is OOM-killed rather than slowed down. It may not
	// be set under what the group uses now.
	MemoryBytes *int64 `json:"memoryBytes,omitempty"`
	// MemoryLowBytes is memory the kernel reclaims from the group only
	// after others (v2 memory.low; v1 memory.soft_limit_in_bytes).
	MemoryLowBytes *int64 `json:"memoryLowBytes,omitempty"`
	// SwapBytes is the swap the group may use on top of MemoryBytes (v1:
	// memsw = memory + swap, which needs swap accounting; v2
	// memory.swap.max). -1 is unlimited. Set alone, on v1 it adds to the
	// memory limit in force (none: memsw unlimited). A host without swap
	// accounting refuses it (FailedPrecondition).
	SwapBytes *int64 `json:"swapBytes,omitempty"`
	// Pids caps the number of tasks (processes and threads) in the group.
	Pids *int64 `json:"pids,omitempty"`
	// IOWeight is the group's share of contended block IO, 1-10000 (v2
	// io.weight, default 100; io.bfq.weight under BFQ, and v1
	// blkio.bfq.weight, 1-1000; v1 blkio.weight under CFQ, 10-1000:
	// scaled from it as systemd does, each default to the others'). A
	// host whose IO controller has no weight refuses it
	// (FailedPrecondition).
	IOWeight *uint64 `json:"ioWeight,omitempty"`
	// IO throttles block devices; a device listed replaces that device's
	// throttles (a 0 rate removes one), others stay.
	IO []DeviceIO `json:"io,omitempty"`
}

// DeviceIO is the throttles of one block device, by its major:minor
// numbers. 0 means no limit.
type DeviceIO struct {
	Major     int64  `json:"major"`
	Minor     int64  `json:"minor"`
	ReadBps   uint64 `json:"readBps,omitempty"`
	WriteBps  uint64 `json:"writeBps,omitempty"`
	ReadIOPS  uint64 `json:"readIOPS,omitempty"`
	WriteIOPS uint64 `json:"writeIOPS,omitempty"`
}

// Validate reports a limit the kernel would refuse or misread, wrapping
// errdefs.ErrInvalidArgument and naming each bad limit and its value. What
// depends on the host or the group (a device, the memory in use) is
// checked by Update.
func (r Resources) Validate() error {
	var bad []string
	if r.CPUs != nil {
		c := *r.CPUs
		if math.IsNaN(c) || math.IsInf(c, 0) || c > maxCPUs || quotaUs(c) < minQuotaUs {
			bad = append(bad, fmt.Sprintf("cpus %v: want a number in [0.01, %d]", c, maxCPUs))
		}
	}
	if r.CPUWeight != nil && (*r.CPUWeight < minWeight || *r.CPUWeight > maxWeight) {
		bad = append(bad, fmt.Sprintf("cpu weight %d: want %d to %d", *r.CPUWeight, minWeight, maxWeight))
	}
	if r.CPUSetCPUs != nil && !validList(*r.CPUSetCPUs, maxCPUs) {
		bad = append(bad, fmt.Sprintf("cpuset cpus %q: want a list of CPUs under %d such as 0-1,3", *r.CPUSetCPUs, maxCPUs))
	}
	if r.CPUSetMems != nil && !validList(*r.CPUSetMems, maxNodes) {
		bad = append(bad, fmt.Sprintf("cpuset mems %q: want a list of memory nodes under %d such as 0-1", *r.CPUSetMems, maxNodes))
	}
	if r.MemoryBytes != nil && *r.MemoryBytes <= 0 {
		bad = append(bad, fmt.Sprintf("memory %d: want a positive number of bytes", *r.MemoryBytes))
	}
	if r.MemoryLowBytes != nil && *r.MemoryLowBytes < 0 {
		bad = append(bad, fmt.Sprintf("memory low %d: want 0 or more bytes", *r.MemoryLowBytes))
	}
	if r.SwapBytes != nil && *r.SwapBytes < -1 {
		bad = append(bad, fmt.Sprintf("swap %d: want -1 (unlimited) or 0 or more bytes", *r.SwapBytes))
	}
	if r.MemoryBytes != nil && r.SwapBytes != nil && *r.MemoryBytes > 0 && *r.SwapBytes > 0 && *r.MemoryBytes > math.MaxInt64-*r.SwapBytes {
		bad = append(bad, fmt.Sprintf("memory %d + swap %d: overflows 64 bits", *r.MemoryBytes, *r.SwapBytes))
	}
	if r.Pids != nil && *r.Pids <= 0 {
		bad = append(bad, fmt.Sprintf("pids %d: want a positive number", *r.Pids))
	}
	if r.IOWeight != nil && (*r.IOWeight < minWeight || *r.IOWeight > maxWeight) {
		bad = append(bad, fmt.Sprintf("io weight %d: want %d to %d", *r.IOWeight, minWeight, maxWeight))
	}
	for i, d := range r.IO {
		if d.Major < 0 || d.Major > maxMajor || d.Minor < 0 || d.Minor > maxMinor {
			bad = append(bad, fmt.Sprintf("io device %d:%d: want a major number in [0, %d] and a minor in [0, %d]", d.Major, d.Minor, maxMajor, maxMinor))
		}
		if slices.ContainsFunc(r.IO[:i], func(o DeviceIO) bool { return o.Major == d.Major && o.Minor == d.Minor }) {
			bad = append(bad, fmt.Sprintf("io device %d:%d: listed twice", d.Major, d.Minor))
		}
		for _, l := range []struct {
			name string
			v    uint64
		}{{"read iops", d.ReadIOPS}, {"write iops", d.WriteIOPS}} {
			// The kernel keeps IOPS limits in 32 bits, its largest
			// value meaning none: a larger one would wrap.
			if l.v > maxIOPS {
				bad = append(bad, fmt.Sprintf("io device %d:%d %s %d: at most %d", d.Major, d.Minor, l.name, l.v, maxIOPS))
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("resources: %s: %w", strings.Join(bad, "; "), errdefs.ErrInvalidArgument)
	}
	return nil
}

// validList reports whether s is a list in the kernel's format of
// numbers under limit: comma-separated numbers and ranges "a-b", a range
// possibly strided as "a-b:used/group" (bitmap_parselist).
func validList(s string, limit int) bool {
	if s == "" {
		return false
	}
	num := func(s string) (int, bool) {
		n, err := strconv.Atoi(s)
		return n, err == nil && n >= 0 && n < limit && s[0] != '+'
	}
	for _, el := range strings.Split(s, ",") {
		el, stride, strided := strings.Cut(el, ":")
		a, b, isRange := strings.Cut(el, "-")
		lo, ok := num(a)
		if !ok {
			return false
		}
		if !isRange {
			if strided {
				return false
			}
			continue
		}
		hi, ok := num(b)
		if !ok || hi < lo {
			return false
		}
		if strided {
			u, g, ok := strings.Cut(stride, "/")
			used, ok1 := num(u)
			group, ok2 := num(g)
			if !ok || !ok1 || !ok2 || used == 0 || group == 0 || used > group {
				return false
			}
		}
	}
	return true
}

// quotaUs is the CFS quota for cpus, in microseconds per CPUPeriod.
func quotaUs(cpus float64) int64 {
	return int64(math.Round(cpus * float64(periodUs)))
}

// Stats is what a group has used, and its limits as the kernel holds
// them.
type Stats struct {
	// CPUUsage is the CPU time the group's tasks have consumed.
	CPUUsage time.Duration
	// CPUPeriods counts the CFS periods the group had runnable tasks in,
	// CPUThrottledPeriods those it ran out of quota in, and
	// CPUThrottledTime the time its tasks waited for quota.
	CPUPeriods          uint64
	CPUThrottledPeriods uint64
	CPUThrottledTime    time.Duration
	// MemoryBytes is the memory charged to the group now, page cache
	// included (memory.usage_in_bytes on v1, memory.current on v2);
	// MemoryMaxBytes the most it was charged (v2: memory.peak where the
	// kernel has it); MemoryLimitBytes its limit (0: none).
	MemoryBytes      uint64
	MemoryMaxBytes   uint64
	MemoryLimitBytes uint64
	// OOMKills counts the processes the kernel's OOM killer killed in the
	// group because it reached its memory limit.
	OOMKills uint64
	// Pids is the number of tasks (processes and threads) in the group;
	// PidsLimit its cap (0: none).
	Pids      uint64
	PidsLimit uint64
	// IO is the bytes and operations per block device.
	IO []DeviceIOStats
}

// DeviceIOStats is a group's IO on one block device.
type DeviceIOStats struct {
	Major, Minor                             int64
	ReadBytes, WriteBytes, ReadOps, WriteOps uint64
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
	// Processes lists the process IDs in the group (and in groups under
	// it), sorted.
	Processes() ([]int, error)
	// Kill sends SIGKILL to every process in the group (and in groups
	// under it) and waits (up to a few seconds) until none is left. A
	// group that is gone is empty.
	Kill() error
	// OOMEvents sends on the returned channel each time the kernel's OOM
	// killer kills in the group (v1: the memory.oom_control eventfd, which
	// fires as the group runs out of memory; v2: memory.events' oom_kill
	// growing), until ctx ends or the group goes; then it closes the
	// channel. It never waits for the reader: events a slow reader leaves
	// unread past a small buffer are dropped.
	OOMEvents(ctx context.Context) (<-chan struct{}, error)
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
	// ensureParent creates parent where it is missing, ready to hold
	// groups (on v2: its ancestors' subtree_control enable the
	// controllers).
	ensureParent(parent string) error
	// create creates a group or, when it exists, updates it.
	create(path string, r Resources) (Group, error)
	// load returns a group wrapping errdefs.ErrNotFound when it is absent.
	load(path string) (Group, error)
	// children lists the names of the groups under parent.
	children(parent string) ([]string, error)
	// dirs are a cgroup's directories, one per hierarchy used.
	dirs(path string) []string
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
	return m.CreateIn(m.parent, name, r)
}

// CreateIn is Create under another parent: an absolute cgroup path such as
// a pod's cgroup, validated like NewManager's, created where it is missing
// (in every hierarchy on v1; on v2 with the controllers enabled in each
// ancestor). When it fails, it removes the parts of the parent it made too.
func (m *Manager) CreateIn(parent, name string, r Resources) (Group, error) {
	if err := validParent(parent); err != nil {
		return nil, err
	}
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", name, err)
	}
	parent = path.Clean(parent)
	fresh := m.missing(parent)
	if err := m.backend.ensureParent(parent); err != nil {
		removeDirs(fresh)
		return nil, fmt.Errorf("create parent cgroup %s: %w", parent, err)
	}
	p := path.Join(parent, name)
	g, err := m.backend.create(p, r)
	if err != nil {
		removeDirs(fresh)
		return nil, fmt.Errorf("create cgroup %s: %w", p, err)
	}
	return g, nil
}

// missing lists the directories of p and its ancestors that do not exist,
// deepest first.
func (m *Manager) missing(p string) []string {
	var out []string
	for ; p != "/"; p = path.Dir(p) {
		for _, d := range m.backend.dirs(p) {
			if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
				out = append(out, d)
			}
		}
	}
	return out
}

// removeDirs removes cgroup directories made by a call that failed: they
// hold no process, and nothing but the groups made under them, removed
// before (dirs come deepest first).
func removeDirs(dirs []string) {
	for _, d := range dirs {
		_ = removeDir(d)
	}
}

// Load finds an existing group (to adopt it again after a restart of the
// agent). It wraps errdefs.ErrNotFound when the group does not exist.
func (m *Manager) Load(name string) (Group, error) {
	return m.LoadIn(m.parent, name)
}

// LoadIn is Load under another parent (an absolute cgroup path, as for
// CreateIn).
func (m *Manager) LoadIn(parent, name string) (Group, error) {
	if err := validParent(parent); err != nil {
		return nil, err
	}
	if err := ValidName(name); err != nil {
		return nil, err
	}
	p := path.Join(path.Clean(parent), name)
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

// Rename gives group name under the parent a new name, in every
// hierarchy, with its processes, limits and accounting (a sandbox from
// the warm pool becomes its tenant's). On a failure halfway it renames
// back what it renamed.
func (m *Manager) Rename(name, newName string) (Group, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if err := ValidName(newName); err != nil {
		return nil, err
	}
	from, to := m.backend.dirs(path.Join(m.parent, name)), m.backend.dirs(path.Join(m.parent, newName))
	var done []int
	for i := range from {
		err := os.Rename(from[i], to[i])
		if errors.Is(err, fs.ErrNotExist) {
			// Co-mounted controllers (cpu,cpuacct) share a directory
			// that an earlier rename moved already.
			if _, serr := os.Stat(to[i]); serr == nil {
				continue
			}
		}
		if err != nil {
			for j := len(done) - 1; j >= 0; j-- {
				_ = os.Rename(to[done[j]], from[done[j]])
			}
			return nil, fmt.Errorf("rename cgroup %s to %s: %w", name, newName, err)
		}
		done = append(done, i)
	}
	return m.Load(newName)
}
