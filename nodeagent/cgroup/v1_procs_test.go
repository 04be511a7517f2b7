package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestV1ProcessesAndKill(t *testing.T) {
	m := newV1Manager(t)
	g := createV1(t, m, "kill", Resources{Pids: ptr(int64(20))})
	if pids, err := g.Processes(); err != nil || len(pids) != 0 {
		t.Fatalf("Processes of an empty group: %v, %v", pids, err)
	}
	// A shell that forks two sleeps once it is in, and waits.
	c := start(t, exec.Command("/bin/sh", "-c", "echo ready; read a; sleep 60 & sleep 60 & echo forked; wait"))
	if got := c.line(t); got != "ready" {
		t.Fatalf("shell said %q", got)
	}
	sh := c.cmd.Process.Pid
	if err := g.Add(sh); err != nil {
		t.Fatal(err)
	}
	c.send(t)
	if got := c.line(t); got != "forked" {
		t.Fatalf("shell said %q", got)
	}
	var pids []int
	deadline := time.Now().Add(5 * time.Second)
	for len(pids) < 3 && time.Now().Before(deadline) {
		var err error
		if pids, err = g.Processes(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(pids) != 3 || !slices.Contains(pids, sh) || !slices.IsSorted(pids) {
		t.Fatalf("Processes() = %v, want the shell %d and its two sleeps, sorted", pids, sh)
	}

	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	if pids, err := g.Processes(); err != nil || len(pids) != 0 {
		t.Errorf("Processes after Kill: %v, %v", pids, err)
	}
	err := c.wait(t, 5*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() {
		t.Errorf("the shell exited with %v, want SIGKILL", err)
	}
	// Empty: Kill does nothing; gone: neither.
	if err := g.Kill(); err != nil {
		t.Errorf("Kill of an empty group: %v", err)
	}
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := g.Kill(); err != nil {
		t.Errorf("Kill of a deleted group: %v", err)
	}
	if _, err := g.Processes(); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Processes of a deleted group: %v, want not found", err)
	}
}

func TestV1OOMEvents(t *testing.T) {
	m := newV1Manager(t)
	g := createV1(t, m, "oomev", Resources{MemoryBytes: ptr(int64(48 << 20))})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := g.OOMEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=alloc")
	c := start(t, cmd)
	if got := c.line(t); got != "ready" {
		t.Fatalf("helper said %q", got)
	}
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-ch:
		t.Fatalf("an event (open %v) before any OOM", ok)
	default:
	}
	c.send(t)
	err = c.wait(t, 30*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("the helper exited with %v, want a kill by the OOM killer", err)
	}
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatal("the channel closed instead of an event")
		}
	case <-time.After(time.Second):
		t.Fatal("no OOM event within 1 s of the kill")
	}

	// The watch ends with ctx.
	cancel()
	waitClosed(t, ch, 2*time.Second)

	// ...and with the group: a second watch closes when it is deleted.
	ch2, err := g.OOMEvents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	waitClosed(t, ch2, 3*time.Second)
	t.Logf("closed %v after the group's removal", time.Since(t0))
	if _, err := g.OOMEvents(context.Background()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("OOMEvents of a deleted group: %v, want not found", err)
	}
}

// waitClosed drains ch until it closes, or fails after d.
func waitClosed(t *testing.T, ch <-chan struct{}, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("the channel did not close within %v", d)
		}
	}
}

func TestV1CreateIn(t *testing.T) {
	m := newV1Manager(t)
	b := m.backend.(*v1Backend)
	top := fmt.Sprintf("/nodeagent-test-%d-%d-pods", os.Getpid(), time.Now().UnixNano())
	pod := top + "/pod-1"
	t.Cleanup(func() {
		for _, p := range []string{pod, top} {
			for _, d := range v1Dirs(m, p) {
				if err := removeDir(d); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
	})
	for _, bad := range []string{"", "/", "pods", "/a/../..", "/a b"} {
		if _, err := m.CreateIn(bad, "sb", Resources{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("CreateIn(%q): %v, want an invalid-argument error", bad, err)
		}
		if _, err := m.LoadIn(bad, "sb"); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("LoadIn(%q): %v, want an invalid-argument error", bad, err)
		}
	}

	// A parent that fails half way is removed with the group.
	failing := *m
	fb := *b
	fb.subsystems = append(slices.Clone(b.subsystems), failingSubsystem{})
	failing.backend = &fb
	if _, err := failing.CreateIn(pod, "sb", Resources{}); err == nil {
		t.Fatal("CreateIn with a failing controller succeeded")
	}
	for _, d := range append(v1Dirs(m, pod), v1Dirs(m, top)...) {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", d, err)
		}
	}

	g, err := m.CreateIn(pod+"/", "sb", Resources{CPUs: ptr(0.5), Pids: ptr(int64(8))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if g.Path() != pod+"/sb" {
		t.Errorf("Path() = %q, want %s/sb", g.Path(), pod)
	}
	for _, d := range v1Dirs(m, g.Path()) {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("missing in a hierarchy: %v", err)
		}
	}
	wantFile(t, v1File("cpu", g.Path(), "cpu.cfs_quota_us"), "50000")
	wantFile(t, v1File("pids", g.Path(), "pids.max"), "8")
	if b.cpuset {
		// The parents got the root's CPUs and memory nodes: a task may
		// run in the group.
		for _, p := range []string{top, pod, g.Path()} {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if readFile(t, v1File("cpuset", p, f)) == "" {
					t.Errorf("%s of %s is empty", f, p)
				}
			}
		}
	}
	sleep := start(t, exec.Command("sleep", "60"))
	if err := g.Add(sleep.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Kill() })

	l, err := m.LoadIn(pod, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if pids, err := l.Processes(); err != nil || !slices.Equal(pids, []int{sleep.cmd.Process.Pid}) {
		t.Errorf("Processes through LoadIn: %v, %v", pids, err)
	}
	if _, err := m.Load("sb"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Load under the manager's parent: %v, want not found", err)
	}
	if _, err := m.LoadIn(pod, "other"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("LoadIn of a missing group: %v, want not found", err)
	}
	if names, err := m.List(); err != nil || len(names) != 0 {
		t.Errorf("List() = %v, %v: the group is not under the manager's parent", names, err)
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
}

// Rename keeps a group's process and limits: a pooled sandbox becomes its
// tenant's without leaving its cgroup (its memory stays charged there).
func TestV1Rename(t *testing.T) {
	m := newV1Manager(t)
	g := createV1(t, m, "pool-a", Resources{Pids: ptr(int64(20))})
	c := start(t, exec.Command("/bin/sh", "-c", "echo ready; read a"))
	if got := c.line(t); got != "ready" {
		t.Fatalf("shell said %q", got)
	}
	if err := g.Add(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	r, err := m.Rename("pool-a", "tenant-a")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Kill(); _ = c.wait(t, 5*time.Second); _ = r.Delete() }()
	if pids, err := r.Processes(); err != nil || len(pids) != 1 || pids[0] != c.cmd.Process.Pid {
		t.Errorf("renamed group's processes: %v, %v", pids, err)
	}
	if st, err := r.Stats(); err != nil || st.PidsLimit != 20 {
		t.Errorf("renamed group's pids limit: %+v, %v", st, err)
	}
	if _, err := m.Load("pool-a"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("old name still loads: %v", err)
	}
	if _, err := m.Rename("pool-a", "x"); err == nil {
		t.Error("renamed a group that is gone")
	}
	if _, err := m.Rename("tenant-a", "../x"); err == nil {
		t.Error("renamed to an invalid name")
	}
}
