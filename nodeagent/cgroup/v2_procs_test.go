package cgroup

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestV2Processes(t *testing.T) {
	_, g, dir := newFakeV2Group(t, Resources{})
	if pids, err := g.Processes(); err != nil || len(pids) != 0 {
		t.Errorf("Processes of an empty group: %v, %v", pids, err)
	}
	writeFile(t, filepath.Join(dir, "cgroup.procs"), "30\n10\n")
	if err := os.Mkdir(filepath.Join(dir, "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "inner", "cgroup.procs"), "20\n10\n")
	if pids, err := g.Processes(); err != nil || !slices.Equal(pids, []int{10, 20, 30}) {
		t.Errorf("Processes() = %v, %v, want [10 20 30]", pids, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Processes(); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Processes of a removed group: %v, want not found", err)
	}
	if err := g.Kill(); err != nil {
		t.Errorf("Kill of a removed group: %v", err)
	}
}

// sleeps starts n processes that sleep, reaped at the test's end.
func sleeps(t *testing.T, n int) []*exec.Cmd {
	t.Helper()
	var out []*exec.Cmd
	for range n {
		c := exec.Command("sleep", "60")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.Process.Kill()
			_ = c.Wait()
		})
		out = append(out, c)
	}
	return out
}

// wantKilled waits for cmds to exit by SIGKILL.
func wantKilled(t *testing.T, cmds []*exec.Cmd) {
	t.Helper()
	for _, c := range cmds {
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case err := <-done:
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Errorf("pid %d exited with %v, want SIGKILL", c.Process.Pid, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("pid %d still runs", c.Process.Pid)
		}
	}
}

func TestV2KillWithCgroupKill(t *testing.T) {
	m, g, dir := newFakeV2Group(t, Resources{})
	cmds := sleeps(t, 2)
	procs := filepath.Join(dir, "cgroup.procs")
	writeFile(t, procs, strconv.Itoa(cmds[0].Process.Pid)+"\n"+strconv.Itoa(cmds[1].Process.Pid)+"\n")
	writeFile(t, filepath.Join(dir, "cgroup.kill"), "")
	// The kernel's part: cgroup.kill kills what the group holds, and it
	// leaves cgroup.procs.
	var wrote []string
	m.backend.(*v2Backend).write = func(file, value string) error {
		wrote = append(wrote, filepath.Base(file)+"="+value)
		if filepath.Base(file) == "cgroup.kill" && value == "1" {
			for _, c := range cmds {
				_ = c.Process.Signal(syscall.SIGKILL)
			}
			return writeKernelFile(procs, "")
		}
		return writeKernelFile(file, value)
	}
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(wrote, []string{"cgroup.kill=1"}) {
		t.Errorf("writes %v, want cgroup.kill=1", wrote)
	}
	wantKilled(t, cmds)
}

func TestV2KillBySignals(t *testing.T) {
	_, g, dir := newFakeV2Group(t, Resources{})
	cmds := sleeps(t, 2)
	// One in the group, one in a group under it. The kernel's part:
	// a process leaves cgroup.procs when it dies.
	if err := os.Mkdir(filepath.Join(dir, "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := []string{filepath.Join(dir, "cgroup.procs"), filepath.Join(dir, "inner", "cgroup.procs")}
	for i, c := range cmds {
		writeFile(t, files[i], strconv.Itoa(c.Process.Pid)+"\n")
		go func() {
			_, _ = c.Process.Wait()
			_ = os.WriteFile(files[i], nil, 0o644)
		}()
	}
	t0 := time.Now()
	if err := g.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed in %v", time.Since(t0))
	if pids, err := g.Processes(); err != nil || len(pids) != 0 {
		t.Errorf("Processes after Kill: %v, %v", pids, err)
	}
}

func TestV2OOMEvents(t *testing.T) {
	_, g, dir := newFakeV2Group(t, Resources{MemoryBytes: ptr(int64(64 << 20))})
	events := filepath.Join(dir, "memory.events")
	writeFile(t, events, "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := g.OOMEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A kill before the watch is not sent; each one after is, within
	// the second.
	expect := func(n int) {
		t.Helper()
		for i := range n {
			select {
			case _, ok := <-ch:
				if !ok {
					t.Fatal("the channel closed")
				}
			case <-time.After(time.Second):
				t.Fatalf("event %d of %d did not come within 1 s", i+1, n)
			}
		}
		select {
		case <-ch:
			t.Fatalf("more than %d events", n)
		case <-time.After(100 * time.Millisecond):
		}
	}
	expect(0)
	writeFile(t, events, "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n")
	expect(1)
	writeFile(t, events, "low 0\nhigh 0\nmax 12\noom 4\noom_kill 4\noom_group_kill 0\n")
	expect(2)
	writeFile(t, events, "low 0\nhigh 0\nmax 13\noom 4\noom_kill 4\noom_group_kill 0\n")
	expect(0)
	cancel()
	waitClosed(t, ch, time.Second)

	// A watch ends when the group goes.
	ch2, err := g.OOMEvents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, ch2, 3*recheckEvery)
	if _, err := g.OOMEvents(context.Background()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("OOMEvents of a removed group: %v, want not found", err)
	}

	// A reader that does not read blocks nothing: more events than the
	// channel holds are dropped, and the watch still ends with ctx.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, events, "oom_kill 0\n")
	ctx3, cancel3 := context.WithCancel(context.Background())
	ch3, err := g.OOMEvents(ctx3)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, events, "oom_kill 40\n")
	deadline := time.Now().Add(2 * time.Second)
	for len(ch3) < eventBuffer && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	writeFile(t, events, "oom_kill 41\n")
	time.Sleep(50 * time.Millisecond)
	cancel3()
	n := 0
	timeout := time.After(time.Second)
	for open := true; open; {
		select {
		case _, open = <-ch3:
			if open {
				n++
			}
		case <-timeout:
			t.Fatal("the watch did not end with its context")
		}
	}
	if n != eventBuffer {
		t.Errorf("%d events buffered, want %d", n, eventBuffer)
	}

	// A context already done closes at once.
	done, stop := context.WithCancel(context.Background())
	stop()
	ch4, err := g.OOMEvents(done)
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, ch4, time.Second)
}
