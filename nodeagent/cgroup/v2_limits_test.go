package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// newFakeV2Group is a group "sb" in a fake v2 tree whose block devices are
// fakeSysBlock's, and its directory.
func newFakeV2Group(t *testing.T, r Resources) (*Manager, Group, string) {
	t.Helper()
	m, mount := newFakeV2Manager(t)
	m.backend.(*v2Backend).sysBlock = fakeSysBlock(t)
	g, err := m.Create("sb", r)
	if err != nil {
		t.Fatal(err)
	}
	return m, g, filepath.Join(mount, "nodeagent", "sb")
}

func TestV2NewLimits(t *testing.T) {
	m, g, dir := newFakeV2Group(t, Resources{
		CPUWeight:      ptr(uint64(300)),
		CPUSetCPUs:     ptr("0-1"),
		CPUSetMems:     ptr("0"),
		MemoryBytes:    ptr(int64(256 << 20)),
		MemoryLowBytes: ptr(int64(64 << 20)),
		Pids:           ptr(int64(10)),
	})
	wantFile(t, filepath.Join(dir, "cpu.weight"), "300")
	wantFile(t, filepath.Join(dir, "cpuset.cpus"), "0-1")
	wantFile(t, filepath.Join(dir, "cpuset.mems"), "0")
	wantFile(t, filepath.Join(dir, "memory.max"), "268435456")
	wantFile(t, filepath.Join(dir, "memory.low"), "67108864")
	wantFile(t, filepath.Join(dir, "pids.max"), "10")

	// The files of a kernel with swap accounting, iocost and BFQ, and a
	// read IOPS limit on 8:16.
	writeFile(t, filepath.Join(dir, "memory.swap.max"), "max\n")
	writeFile(t, filepath.Join(dir, "io.weight"), "default 100\n")
	writeFile(t, filepath.Join(dir, "io.bfq.weight"), "default 100\n8:16 300\n")
	writeFile(t, filepath.Join(dir, "io.max"), "8:16 rbps=max wbps=max riops=300 wiops=max\n")
	var wrote []string
	m.backend.(*v2Backend).write = recordWrites(&wrote)
	for _, tc := range []struct {
		r    Resources
		want []string
	}{
		{Resources{SwapBytes: ptr(int64(1 << 30)), IOWeight: ptr(uint64(500)), IO: []DeviceIO{{Major: 8, Minor: 0, ReadBps: 1 << 20, WriteIOPS: 50}, {Major: 8, Minor: 16}}}, []string{
			"memory.swap.max=1073741824",
			"io.weight=500",
			"io.bfq.weight=136",
			"io.max=8:0 rbps=1048576 wbps=max riops=max wiops=50",
			"io.max=8:16 rbps=max wbps=max riops=max wiops=max",
		}},
		{Resources{SwapBytes: ptr(int64(-1)), IOWeight: ptr(uint64(100))}, []string{"memory.swap.max=max", "io.weight=100", "io.bfq.weight=100"}},
		// Memory alone: no swap past it.
		{Resources{MemoryBytes: ptr(int64(128 << 20))}, []string{"memory.max=134217728", "memory.swap.max=0"}},
		{Resources{MemoryBytes: ptr(int64(128 << 20)), SwapBytes: ptr(int64(0))}, nil}, // already so
		{Resources{CPUs: ptr(0.25), CPUWeight: ptr(uint64(1))}, []string{"cpu.weight=1", "cpu.max=25000 100000"}},
	} {
		wrote = nil
		if err := g.Update(tc.r); err != nil {
			t.Fatalf("%+v: %v", tc.r, err)
		}
		if strings.Join(wrote, "\n") != strings.Join(tc.want, "\n") {
			t.Errorf("%+v: writes\n%s\nwant\n%s", tc.r, strings.Join(wrote, "\n"), strings.Join(tc.want, "\n"))
		}
	}
	wantFile(t, filepath.Join(dir, "cpuset.cpus"), "0-1")
	wantFile(t, filepath.Join(dir, "memory.low"), "67108864")
}

func TestV2UpdateRollsBack(t *testing.T) {
	m, g, dir := newFakeV2Group(t, Resources{})
	// The kernel's files of the group, unlimited but for 8:0's writes.
	before := map[string]string{
		"cpu.weight":      "100",
		"cpu.max":         "max 100000",
		"cpuset.cpus":     "",
		"memory.max":      "max",
		"memory.swap.max": "max",
		"memory.low":      "0",
		"pids.max":        "max",
		"io.weight":       "default 100",
		"io.max":          "8:0 rbps=max wbps=2097152 riops=max wiops=max",
	}
	for f, v := range before {
		writeFile(t, filepath.Join(dir, f), v+"\n")
	}
	var wrote []string
	m.backend.(*v2Backend).write = failWrite("io.max", &wrote)
	err := g.Update(Resources{
		CPUs: ptr(1.0), CPUWeight: ptr(uint64(50)), CPUSetMems: ptr("0"), MemoryBytes: ptr(int64(1 << 30)),
		MemoryLowBytes: ptr(int64(1 << 20)), Pids: ptr(int64(9)), IOWeight: ptr(uint64(200)),
		IO: []DeviceIO{{Major: 8, Minor: 0, ReadBps: 1}},
	})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "io.max") {
		t.Fatalf("Update: %v, want the injected EBUSY on io.max", err)
	}
	t.Logf("writes: %v", wrote)
	for f, v := range before {
		if f == "io.weight" {
			v = "100" // written back as a number; the kernel shows "default 100"
		}
		wantFile(t, filepath.Join(dir, f), v)
	}
	// A file the tree lacked (the kernel would have it) is removed.
	if _, err := os.Stat(filepath.Join(dir, "cpuset.mems")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cpuset.mems left: %v", err)
	}
}

func TestV2HostLacks(t *testing.T) {
	mount := t.TempDir()
	writeFile(t, filepath.Join(mount, "cgroup.controllers"), "cpu memory pids\n")
	writeFile(t, filepath.Join(mount, "cgroup.subtree_control"), "")
	if err := os.Mkdir(filepath.Join(mount, "nodeagent"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(mount, "nodeagent", "cgroup.subtree_control"), "")
	m, err := NewManager(V2, "/nodeagent", WithMountpoint(mount))
	if err != nil {
		t.Fatal(err)
	}
	m.backend.(*v2Backend).sysBlock = fakeSysBlock(t)
	wantFile(t, filepath.Join(mount, "cgroup.subtree_control"), "+cpu +memory +pids")
	g, err := m.Create("sb", Resources{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mount, "nodeagent", "sb")
	for _, tc := range []struct {
		r    Resources
		want string
	}{
		{Resources{CPUSetCPUs: ptr("0")}, "no cpuset controller"},
		{Resources{IOWeight: ptr(uint64(10))}, "no io controller"},
		{Resources{IO: []DeviceIO{{Major: 8, Minor: 0}}}, "no io controller"},
		{Resources{SwapBytes: ptr(int64(0))}, "swap 0: the kernel does not account swap here (no memory.swap.max)"},
	} {
		tc.r.CPUs = ptr(2.0)
		if err := g.Update(tc.r); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want a failed-precondition error about %q", tc.r, err, tc.want)
		}
		if _, err := os.Stat(filepath.Join(dir, "cpu.max")); err == nil {
			t.Fatalf("%+v: cpu.max written", tc.r)
		}
	}
	// A new group that cannot have its limits is not made.
	if _, err := m.Create("sb2", Resources{CPUSetMems: ptr("0")}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Create with a cpuset: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mount, "nodeagent", "sb2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the group was left: %v", err)
	}
}

func TestV2Refusals(t *testing.T) {
	_, g, dir := newFakeV2Group(t, Resources{})
	writeFile(t, filepath.Join(dir, "memory.current"), "100000\n")
	for _, tc := range []struct {
		r    Resources
		kind error
		want string
	}{
		{Resources{MemoryBytes: ptr(int64(4096))}, errdefs.ErrInvalidArgument, "memory 4096: under the 100000 bytes the group uses now"},
		{Resources{IO: []DeviceIO{{Major: 9, Minor: 9, ReadBps: 1}}}, errdefs.ErrInvalidArgument, "io device 9:9: unknown device"},
		{Resources{IO: []DeviceIO{{Major: 8, Minor: 1, ReadBps: 1}}}, errdefs.ErrInvalidArgument, "io device 8:1: a partition"},
		// The io controller is on, but neither iocost nor BFQ.
		{Resources{IOWeight: ptr(uint64(100))}, errdefs.ErrFailedPrecondition, "io weight 100: the io controller has no weight here"},
	} {
		tc.r.CPUs = ptr(2.0)
		if err := g.Update(tc.r); !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %v about %q", tc.r, err, tc.kind, tc.want)
		}
		if _, err := os.Stat(filepath.Join(dir, "cpu.max")); err == nil {
			t.Fatalf("%+v: cpu.max written", tc.r)
		}
	}
	if err := g.Update(Resources{MemoryBytes: ptr(int64(100000))}); err != nil {
		t.Errorf("a limit at the usage: %v", err)
	}
}

func TestV2Stats(t *testing.T) {
	_, g, dir := newFakeV2Group(t, Resources{})
	for f, v := range map[string]string{
		"cpu.stat":       "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 12\nthrottled_usec 900000\nnr_bursts 0\nburst_usec 0\n",
		"memory.stat":    "anon 1048576\nfile 0\n", // the library reads memory.* only with it
		"memory.current": "1048576\n",
		"memory.peak":    "4194304\n",
		"memory.max":     "max\n",
		"memory.events":  "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
		"pids.current":   "4\n",
		"pids.max":       "max\n",
		"io.stat":        "253:0 rbytes=5 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n8:16 rbytes=0 wbytes=0 rios=0 wios=0 dbytes=0 dios=0\n8:0 rbytes=1024 wbytes=2048 rios=1 wios=2 dbytes=0 dios=0\n",
	} {
		writeFile(t, filepath.Join(dir, f), v)
	}
	want := Stats{
		CPUUsage: 2500 * time.Millisecond, CPUPeriods: 40, CPUThrottledPeriods: 12, CPUThrottledTime: 900 * time.Millisecond,
		MemoryBytes: 1 << 20, MemoryMaxBytes: 4 << 20, OOMKills: 1, Pids: 4,
		IO: []DeviceIOStats{
			{Major: 8, Minor: 0, ReadBytes: 1024, WriteBytes: 2048, ReadOps: 1, WriteOps: 2},
			{Major: 253, Minor: 0, ReadBytes: 5, ReadOps: 1},
		},
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(st, want) {
		t.Errorf("Stats() = %+v\nwant %+v", st, want)
	}
	// Limits set; a kernel before memory.peak.
	writeFile(t, filepath.Join(dir, "memory.max"), "1073741824\n")
	writeFile(t, filepath.Join(dir, "pids.max"), "100\n")
	if err := os.Remove(filepath.Join(dir, "memory.peak")); err != nil {
		t.Fatal(err)
	}
	if st, err = g.Stats(); err != nil {
		t.Fatal(err)
	}
	if st.MemoryLimitBytes != 1<<30 || st.PidsLimit != 100 || st.MemoryMaxBytes != 0 {
		t.Errorf("limits: %+v, want memory 1 GiB, pids 100, no peak", st)
	}
}

func TestV2CreateIn(t *testing.T) {
	mount := fakeV2(t, "/nodeagent", "/kubepods", "/kubepods/pod-1")
	m, err := NewManager(V2, "/nodeagent", WithMountpoint(mount))
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.CreateIn("/kubepods/pod-1", "sb", Resources{CPUs: ptr(1.5)})
	if err != nil {
		t.Fatal(err)
	}
	if g.Path() != "/kubepods/pod-1/sb" {
		t.Errorf("Path() = %q", g.Path())
	}
	wantFile(t, filepath.Join(mount, "kubepods", "pod-1", "sb", "cpu.max"), "150000 100000")
	for _, p := range []string{"", "kubepods", "kubepods/pod-1"} {
		wantFile(t, filepath.Join(mount, p, "cgroup.subtree_control"), allControllers)
	}
	if _, err := m.LoadIn("/kubepods/pod-1", "sb"); err != nil {
		t.Errorf("LoadIn: %v", err)
	}
	if _, err := m.Load("sb"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Load under the manager's parent: %v, want not found", err)
	}
	if names, err := m.List(); err != nil || len(names) != 0 {
		t.Errorf("List() = %v, %v", names, err)
	}
	// A parent made for a group that fails goes with it (here the tree
	// lacks the new directories' subtree_control, which the kernel
	// would fill in).
	if _, err := m.CreateIn("/new/pod", "sb", Resources{}); err == nil {
		t.Fatal("CreateIn succeeded")
	} else {
		t.Logf("failed as expected: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mount, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the parent made is still there: %v", err)
	}
}
