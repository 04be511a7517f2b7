package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// The v2 tests run against a temporary tree that has the files the kernel
// would have made (this machine mounts cgroup v1); they check what the
// package writes.

// fakeV2 makes a unified hierarchy with the given parent cgroups already
// created (the kernel fills a new directory with its files; a temporary
// tree does not, so each parent gets its cgroup.subtree_control here).
func fakeV2(t *testing.T, parents ...string) string {
	t.Helper()
	mount := t.TempDir()
	writeFile(t, filepath.Join(mount, "cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n")
	writeFile(t, filepath.Join(mount, "cgroup.subtree_control"), "")
	for _, p := range parents {
		if err := os.MkdirAll(filepath.Join(mount, p), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(mount, p, "cgroup.subtree_control"), "")
	}
	return mount
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func wantFile(t *testing.T, p, want string) {
	t.Helper()
	if got := readFile(t, p); got != want {
		t.Errorf("%s = %q, want %q", p, got, want)
	}
}

// allControllers is what the package enables in a fakeV2 tree.
const allControllers = "+cpu +memory +pids +cpuset +io"

func newFakeV2Manager(t *testing.T) (*Manager, string) {
	t.Helper()
	mount := fakeV2(t, "/nodeagent")
	m, err := NewManager(V2, "/nodeagent", WithMountpoint(mount))
	if err != nil {
		t.Fatal(err)
	}
	if m.Mode() != V2 || m.Parent() != "/nodeagent" {
		t.Fatalf("manager mode %v parent %s", m.Mode(), m.Parent())
	}
	return m, mount
}

func TestV2CreateWritesKernelFiles(t *testing.T) {
	m, mount := newFakeV2Manager(t)
	// The controllers are enabled for the parent (root's subtree_control)
	// when the manager starts: those the groups need, and those of the
	// optional limits this hierarchy has.
	wantFile(t, filepath.Join(mount, "cgroup.subtree_control"), allControllers)

	g, err := m.Create("sb-1", Resources{CPUs: ptr(2.0), MemoryBytes: ptr(int64(512 << 20)), Pids: ptr(int64(100))})
	if err != nil {
		t.Fatal(err)
	}
	if g.Path() != "/nodeagent/sb-1" {
		t.Errorf("Path() = %q", g.Path())
	}
	dir := filepath.Join(mount, "nodeagent", "sb-1")
	wantFile(t, filepath.Join(dir, "cpu.max"), "200000 100000")
	wantFile(t, filepath.Join(dir, "memory.max"), "536870912")
	wantFile(t, filepath.Join(dir, "pids.max"), "100")
	// ...and for the group (the parent's subtree_control), whatever its
	// limits, so that Update and Stats work later.
	wantFile(t, filepath.Join(mount, "nodeagent", "cgroup.subtree_control"), allControllers)
	if _, err := os.Stat(filepath.Join(dir, "memory.swap.max")); err == nil {
		t.Error("memory.swap.max written where the kernel has none")
	}

	// Only CPUs: a fractional quota; nothing else written.
	g2, err := m.Create("sb-2", Resources{CPUs: ptr(0.5)})
	if err != nil {
		t.Fatal(err)
	}
	dir2 := filepath.Join(mount, "nodeagent", "sb-2")
	wantFile(t, filepath.Join(dir2, "cpu.max"), "50000 100000")
	for _, f := range []string{"memory.max", "pids.max"} {
		if _, err := os.Stat(filepath.Join(dir2, f)); err == nil {
			t.Errorf("%s written for a nil limit", f)
		}
	}

	// Update writes what it is given and leaves the rest.
	if err := g.Update(Resources{CPUs: ptr(1.25)}); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(dir, "cpu.max"), "125000 100000")
	wantFile(t, filepath.Join(dir, "memory.max"), "536870912")
	if err := g.Update(Resources{MemoryBytes: ptr(int64(1 << 30)), Pids: ptr(int64(7))}); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(dir, "memory.max"), "1073741824")
	wantFile(t, filepath.Join(dir, "pids.max"), "7")
	wantFile(t, filepath.Join(dir, "cpu.max"), "125000 100000")
	if err := g.Update(Resources{Pids: ptr(int64(0))}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Update with pids 0: %v", err)
	}
	wantFile(t, filepath.Join(dir, "pids.max"), "7")

	names, err := m.List()
	if err != nil || !slices.Equal(names, []string{"sb-1", "sb-2"}) {
		t.Errorf("List() = %v, %v", names, err)
	}
	_ = g2
}

func TestV2AddStatsDelete(t *testing.T) {
	m, mount := newFakeV2Manager(t)
	g, err := m.Create("sb", Resources{MemoryBytes: ptr(int64(64 << 20))})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(mount, "nodeagent", "sb")
	if err := g.Add(4242); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(dir, "cgroup.procs"), "4242")
	if err := g.Add(0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Add(0): %v", err)
	}

	// What the kernel would report.
	writeFile(t, filepath.Join(dir, "cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\nthrottled_usec 20\n")
	writeFile(t, filepath.Join(dir, "memory.current"), "8192\n")
	writeFile(t, filepath.Join(dir, "memory.stat"), "anon 4096\nfile 4096\n")
	writeFile(t, filepath.Join(dir, "memory.events"), "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n")
	writeFile(t, filepath.Join(dir, "pids.current"), "3\n")
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{CPUUsage: 1500 * time.Microsecond, CPUPeriods: 3, CPUThrottledPeriods: 1, CPUThrottledTime: 20 * time.Microsecond, MemoryBytes: 8192, MemoryLimitBytes: 64 << 20, Pids: 3, OOMKills: 2}
	if !reflect.DeepEqual(st, want) {
		t.Errorf("Stats() = %+v, want %+v", st, want)
	}

	// Load finds the same group.
	l, err := m.Load("sb")
	if err != nil {
		t.Fatal(err)
	}
	if l.Path() != g.Path() {
		t.Errorf("Load: path %q, want %q", l.Path(), g.Path())
	}
	if st2, err := l.Stats(); err != nil || !reflect.DeepEqual(st2, st) {
		t.Errorf("Stats of the loaded group: %+v, %v", st2, err)
	}

	// A process remains: Delete refuses and removes nothing.
	err = g.Delete()
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "4242") {
		t.Errorf("Delete with a process inside: %v, want a failed-precondition error naming pid 4242", err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("Delete removed the group although it refused: %v", err)
	}
	// The process left (the kernel empties cgroup.procs).
	writeFile(t, filepath.Join(dir, "cgroup.procs"), "")
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("group directory still there: %v", err)
	}
	if err := g.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	if err := l.Delete(); err != nil {
		t.Errorf("Delete through the loaded handle: %v", err)
	}
	if _, err := m.Load("sb"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Load after Delete: %v, want not found", err)
	}
	if _, err := g.Stats(); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stats after Delete: %v, want not found", err)
	}
	if err := g.Add(4242); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Add after Delete: %v, want not found", err)
	}
	if err := g.Update(Resources{CPUs: ptr(1.0)}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Update after Delete: %v, want not found", err)
	}
	if names, err := m.List(); err != nil || len(names) != 0 {
		t.Errorf("List() = %v, %v, want nothing", names, err)
	}
}

func TestV2CreateIsIdempotent(t *testing.T) {
	m, mount := newFakeV2Manager(t)
	dir := filepath.Join(mount, "nodeagent", "sb")
	if _, err := m.Create("sb", Resources{CPUs: ptr(1.0), Pids: ptr(int64(10))}); err != nil {
		t.Fatal(err)
	}
	// The kernel accounts swap for this group.
	writeFile(t, filepath.Join(dir, "memory.swap.max"), "max\n")
	writeFile(t, filepath.Join(dir, "cgroup.procs"), "77\n")
	g, err := m.Create("sb", Resources{CPUs: ptr(3.0), MemoryBytes: ptr(int64(256 << 20))})
	if err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(dir, "cpu.max"), "300000 100000")
	wantFile(t, filepath.Join(dir, "memory.max"), "268435456")
	wantFile(t, filepath.Join(dir, "memory.swap.max"), "0")
	wantFile(t, filepath.Join(dir, "pids.max"), "10")
	wantFile(t, filepath.Join(dir, "cgroup.procs"), "77")
	if g.Path() != "/nodeagent/sb" {
		t.Errorf("Path() = %q", g.Path())
	}
}

func TestV2CreateCleansUpOnFailure(t *testing.T) {
	m, mount := newFakeV2Manager(t)
	// Enabling the controllers for the group fails (as when the parent
	// holds a process: no internal processes in v2).
	if err := os.Remove(filepath.Join(mount, "nodeagent", "cgroup.subtree_control")); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create("sb", Resources{CPUs: ptr(1.0)}); err == nil {
		t.Fatal("Create succeeded")
	} else {
		t.Logf("failed as expected: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mount, "nodeagent", "sb")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the half-made group is still there: %v", err)
	}
}

func TestV2BadNames(t *testing.T) {
	m, mount := newFakeV2Manager(t)
	for _, name := range []string{"", ".", "..", "../escape", "a/b", "/abs", ".hidden", "a b"} {
		if _, err := m.Create(name, Resources{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Create(%q): %v, want an invalid-argument error", name, err)
		}
		if _, err := m.Load(name); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Load(%q): %v, want an invalid-argument error", name, err)
		}
	}
	if _, err := m.Create("ok", Resources{CPUs: ptr(0.0)}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Create with cpus 0: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mount, "escape")); err == nil {
		t.Error("a bad name escaped the parent")
	}
	if _, err := os.Stat(filepath.Join(mount, "nodeagent", "ok")); err == nil {
		t.Error("Create with invalid resources made the group")
	}
}

func TestV2MissingControllers(t *testing.T) {
	mount := t.TempDir()
	writeFile(t, filepath.Join(mount, "cgroup.controllers"), "cpu io hugetlb\n")
	_, err := NewManager(V2, "/nodeagent", WithMountpoint(mount))
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "memory pids") {
		t.Errorf("NewManager: %v, want a failed-precondition error naming memory and pids", err)
	}
	if _, err := os.Stat(filepath.Join(mount, "nodeagent")); err == nil {
		t.Error("the parent was created anyway")
	}
}
