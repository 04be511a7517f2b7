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

	"github.com/containerd/cgroups/v3/cgroup2"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// v2Controllers are the controllers a group needs; they are enabled for
// every group whatever its limits, so that a later Update and Stats work.
var v2Controllers = []string{"cpu", "memory", "pids"}

// v2Optional are the controllers enabled for every group where the host
// has them (as kubelet enables them for pods): the limits that need them
// are refused without them (FailedPrecondition), and io gives Stats its IO.
var v2Optional = []string{"cpuset", "io"}

// v2Backend drives the unified hierarchy mounted at mount.
type v2Backend struct {
	mount string
	// have are the controllers the hierarchy offers (the root's
	// cgroup.controllers); enable those to enable for each group.
	have, enable []string
	// sysBlock is sysfs' /sys/dev/block, where block devices are.
	sysBlock string
	// write writes the limits' files.
	write writeFunc
}

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
	enable := slices.Clone(v2Controllers)
	for _, c := range v2Optional {
		if slices.Contains(have, c) {
			enable = append(enable, c)
		}
	}
	return &v2Backend{mount: mount, have: have, enable: enable, sysBlock: "/sys/dev/block", write: writeKernelFile}, nil
}

func (b *v2Backend) dir(p string) string { return filepath.Join(b.mount, p) }

func (b *v2Backend) dirs(p string) []string { return []string{b.dir(p)} }

// makeGroup creates cgroup p where it is missing and enables the controllers
// for it in every ancestor's cgroup.subtree_control.
func (b *v2Backend) makeGroup(p string) (*cgroup2.Manager, error) {
	if err := os.MkdirAll(b.dir(p), 0o755); err != nil {
		return nil, err
	}
	m, err := cgroup2.Load(p, cgroup2.WithMountpoint(b.mount))
	if err != nil {
		return nil, err
	}
	if err := m.ToggleControllers(b.enable, cgroup2.Enable); err != nil {
		return nil, err
	}
	return m, nil
}

func (b *v2Backend) ensureParent(parent string) error {
	_, err := b.makeGroup(parent)
	return err
}

func (b *v2Backend) create(p string, r Resources) (Group, error) {
	_, err := os.Stat(b.dir(p))
	fresh := errors.Is(err, fs.ErrNotExist)
	m, err := b.makeGroup(p)
	var g *v2Group
	if err == nil {
		g = &v2Group{path: p, b: b, m: m}
		err = g.update(r)
	}
	if err != nil {
		if fresh {
			// Empty: the kernel's files go with the directory. A
			// test's tree holds the files written.
			if removeDir(b.dir(p)) != nil {
				_ = os.RemoveAll(b.dir(p))
			}
		}
		return nil, err
	}
	return g, nil
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

func (g *v2Group) file(name string) string { return filepath.Join(g.b.dir(g.path), name) }

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
	if err := g.update(r); err != nil {
		return fmt.Errorf("update cgroup %s: %w", g.path, err)
	}
	return nil
}

// update writes the limits r sets, all or nothing.
func (g *v2Group) update(r Resources) error {
	ss, err := g.settings(r)
	if err != nil {
		return err
	}
	return apply(ss, g.b.write)
}

// settings are the files r changes, in the order to write them, once it
// is checked that the host has what they need. A group made before the
// optional controllers were enabled for every group gets the one it needs
// enabled here (that stays, and changes no limit).
func (g *v2Group) settings(r Resources) ([]setting, error) {
	var need []string
	if r.CPUSetCPUs != nil || r.CPUSetMems != nil {
		if !slices.Contains(g.b.have, "cpuset") {
			return nil, unavailable("cpuset: the cgroup v2 hierarchy at %s has no cpuset controller", g.b.mount)
		}
		need = append(need, "cpuset")
	}
	if r.IOWeight != nil || len(r.IO) > 0 {
		if !slices.Contains(g.b.have, "io") {
			return nil, unavailable("block io limits: the cgroup v2 hierarchy at %s has no io controller", g.b.mount)
		}
		need = append(need, "io")
	}
	if err := checkDevices(g.b.sysBlock, r.IO); err != nil {
		return nil, err
	}
	if r.MemoryBytes != nil {
		// The kernel would reclaim down to the new limit, and OOM-kill
		// when it cannot.
		usage, err := readV2Bytes(g.file("memory.current"))
		if err != nil {
			return nil, err
		}
		if uint64(*r.MemoryBytes) < usage {
			return nil, fmt.Errorf("memory %d: under the %d bytes the group uses now: %w", *r.MemoryBytes, usage, errdefs.ErrInvalidArgument)
		}
	}
	swapFile := g.file("memory.swap.max")
	if r.SwapBytes != nil && !exists(swapFile) {
		return nil, unavailable("swap %d: the kernel does not account swap here (no memory.swap.max)", *r.SwapBytes)
	}
	if err := g.enable(need); err != nil {
		return nil, err
	}

	var ss []setting
	if r.CPUWeight != nil {
		ss = append(ss, setting{file: g.file("cpu.weight"), value: strconv.FormatUint(*r.CPUWeight, 10)})
	}
	if r.CPUs != nil {
		ss = append(ss, setting{file: g.file("cpu.max"), value: fmt.Sprintf("%d %d", quotaUs(*r.CPUs), periodUs)})
	}
	if r.CPUSetCPUs != nil {
		ss = append(ss, setting{file: g.file("cpuset.cpus"), value: *r.CPUSetCPUs})
	}
	if r.CPUSetMems != nil {
		ss = append(ss, setting{file: g.file("cpuset.mems"), value: *r.CPUSetMems})
	}
	if r.MemoryBytes != nil {
		ss = append(ss, setting{file: g.file("memory.max"), value: strconv.FormatInt(*r.MemoryBytes, 10)})
	}
	switch {
	case r.SwapBytes != nil && *r.SwapBytes == -1:
		ss = append(ss, setting{file: swapFile, value: "max"})
	case r.SwapBytes != nil:
		ss = append(ss, setting{file: swapFile, value: strconv.FormatInt(*r.SwapBytes, 10)})
	case r.MemoryBytes != nil && exists(swapFile):
		// No swap past the memory limit unless SwapBytes says so.
		ss = append(ss, setting{file: swapFile, value: "0"})
	}
	if r.MemoryLowBytes != nil {
		ss = append(ss, setting{file: g.file("memory.low"), value: strconv.FormatInt(*r.MemoryLowBytes, 10)})
	}
	if r.Pids != nil {
		ss = append(ss, setting{file: g.file("pids.max"), value: strconv.FormatInt(*r.Pids, 10)})
	}
	if r.IOWeight != nil {
		w := *r.IOWeight
		n := len(ss)
		// io.weight is the iocost controller's (when built in), on v2's
		// own scale; io.bfq.weight the BFQ scheduler's. Each device
		// follows one of them: set both.
		if f := g.file("io.weight"); exists(f) {
			ss = append(ss, setting{file: f, value: strconv.FormatUint(w, 10), restore: defaultWeightOf})
		}
		if f := g.file("io.bfq.weight"); exists(f) {
			ss = append(ss, setting{file: f, value: strconv.FormatUint(bfqWeight(w), 10), restore: defaultWeightOf})
		}
		if len(ss) == n {
			return nil, unavailable("io weight %d: the io controller has no weight here (no io.weight or io.bfq.weight: neither iocost nor the BFQ scheduler)", w)
		}
	}
	for _, d := range r.IO {
		dev := fmt.Sprintf("%d:%d", d.Major, d.Minor)
		ss = append(ss, setting{
			file: g.file("io.max"),
			// The kernel's own format, "max" for no limit.
			value: fmt.Sprintf("%s rbps=%s wbps=%s riops=%s wiops=%s", dev, orMax(d.ReadBps), orMax(d.WriteBps), orMax(d.ReadIOPS), orMax(d.WriteIOPS)),
			restore: func(content string) string {
				if l := deviceLine(content, d); l != "" {
					return l
				}
				return dev + " rbps=max wbps=max riops=max wiops=max"
			},
		})
	}
	return ss, nil
}

// enable enables controllers for the group where its cgroup.controllers
// lacks them (a test's tree has no such file: its groups were made with
// every controller).
func (g *v2Group) enable(controllers []string) error {
	b, err := os.ReadFile(g.file("cgroup.controllers"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", g.file("cgroup.controllers"), classify(err))
	}
	have := strings.Fields(string(b))
	var missing []string
	for _, c := range controllers {
		if !slices.Contains(have, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := g.m.ToggleControllers(missing, cgroup2.Enable); err != nil {
		return fmt.Errorf("enable controllers %v: %w", missing, err)
	}
	return nil
}

// readV2Bytes reads a v2 memory counter; 0 where a test's tree lacks it.
func readV2Bytes(file string) (uint64, error) {
	b, err := readKernelFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", file, classify(err))
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", file, err)
	}
	return n, nil
}

func (g *v2Group) Processes() ([]int, error) {
	pids, err := processes(g.b.dirs(g.path))
	if err != nil {
		return nil, fmt.Errorf("processes of cgroup %s: %w", g.path, err)
	}
	return pids, nil
}

// Kill writes cgroup.kill where the kernel has it (5.14 on): it kills the
// group and its descendants at once, forks included. killAll then waits
// for them to go, and sends SIGKILL itself on older kernels.
func (g *v2Group) Kill() error {
	if err := g.exists(); errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if f := g.file("cgroup.kill"); exists(f) {
		if err := g.b.write(f, "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("kill cgroup %s: %w", g.path, err)
		}
	}
	if err := killAll(g.Processes); err != nil {
		return fmt.Errorf("kill cgroup %s: %w", g.path, err)
	}
	return nil
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
