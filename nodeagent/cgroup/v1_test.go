package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// The v1 tests use this machine's real cgroup v1 controllers, under a
// parent of their own (/nodeagent-test-PID-N) removed at the end.

var v1Names = []string{"cpu", "cpuacct", "memory", "pids"}

// newV1Manager returns a manager under a fresh parent, or skips.
func newV1Manager(t *testing.T) *Manager {
	t.Helper()
	testutil.RequiresRoot(t)
	if mode, err := Detect(); err != nil || mode != V1 {
		t.Skipf("needs cgroup v1 (this host: %v, %v)", mode, err)
	}
	parent := fmt.Sprintf("/nodeagent-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	m, err := NewManager(V1, parent)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Runs after every group's own cleanup.
		for _, d := range v1Dirs(m, parent) {
			if err := removeDir(d); err != nil {
				t.Errorf("remove test parent: %v", err)
			}
		}
	})
	dirs := v1Dirs(m, parent)
	for _, c := range v1Names {
		if !slices.Contains(dirs, v1Dir(c, parent)) {
			t.Fatalf("the manager does not use controller %s: %v", c, dirs)
		}
	}
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("NewManager did not create the parent: %v", err)
		}
	}
	return m
}

// v1Dirs are a cgroup's directories in every hierarchy the manager uses.
func v1Dirs(m *Manager, p string) []string { return m.backend.(*v1Backend).dirs(p) }

func v1Dir(controller, p string) string { return filepath.Join(DefaultMountpoint, controller, p) }

// procsIn lists the pids in a cgroup directory's cgroup.procs.
func procsIn(t *testing.T, dir string) []int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, n)
	}
	return pids
}

// createV1 creates a group and, at the end of the test, kills what is left
// in it (processes this test started) and deletes it.
func createV1(t *testing.T, m *Manager, name string, r Resources) Group {
	t.Helper()
	g, err := m.Create(name, r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			var pids []int
			for _, d := range v1Dirs(m, g.Path()) {
				pids = append(pids, procsIn(t, d)...)
			}
			if len(pids) == 0 || time.Now().After(deadline) {
				break
			}
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := g.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return g
}

// child is a process started by a test, killed and reaped at its end.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr strings.Builder
}

func start(t *testing.T, cmd *exec.Cmd) *child {
	t.Helper()
	c := &child{cmd: cmd}
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.stdout = bufio.NewReader(out)
	cmd.Stderr = &c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return c
}

// line reads one line of the child's output, with a deadline.
func (c *child) line(t *testing.T) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := c.stdout.ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil && r.s == "" {
			t.Fatalf("read from child: %v (stderr %q)", r.err, c.stderr.String())
		}
		return r.s
	case <-time.After(10 * time.Second):
		t.Fatalf("no output from the child in 10 s (stderr %q)", c.stderr.String())
	}
	return ""
}

func (c *child) send(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
}

// wait waits for the child to exit, with a deadline.
func (c *child) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("the child did not exit in %v", d)
	}
	return nil
}

func TestV1Lifecycle(t *testing.T) {
	m := newV1Manager(t)
	g := createV1(t, m, "life", Resources{CPUs: ptr(1.5), MemoryBytes: ptr(int64(256 << 20)), Pids: ptr(int64(64))})
	p := g.Path()
	if p != m.Parent()+"/life" {
		t.Fatalf("Path() = %q", p)
	}

	// The limits, as the kernel shows them.
	wantFile(t, filepath.Join(v1Dir("cpu", p), "cpu.cfs_period_us"), "100000")
	wantFile(t, filepath.Join(v1Dir("cpu", p), "cpu.cfs_quota_us"), "150000")
	wantFile(t, filepath.Join(v1Dir("memory", p), "memory.limit_in_bytes"), "268435456")
	if _, err := os.Stat(filepath.Join(v1Dir("memory", p), "memory.memsw.limit_in_bytes")); err == nil {
		wantFile(t, filepath.Join(v1Dir("memory", p), "memory.memsw.limit_in_bytes"), "268435456")
	}
	wantFile(t, filepath.Join(v1Dir("pids", p), "pids.max"), "64")

	// A real process moves in, in every hierarchy: nothing of it stays in
	// the cgroups it was started in.
	sleep := start(t, exec.Command("sleep", "60"))
	pid := sleep.cmd.Process.Pid
	if err := g.Add(pid); err != nil {
		t.Fatal(err)
	}
	for _, d := range v1Dirs(m, p) {
		if !slices.Contains(procsIn(t, d), pid) {
			t.Errorf("pid %d not in %s/cgroup.procs", pid, d)
		}
		if tasks := readFile(t, filepath.Join(d, "tasks")); !slices.Contains(strings.Fields(tasks), strconv.Itoa(pid)) {
			t.Errorf("pid %d not in %s/tasks (%q)", pid, d, tasks)
		}
	}
	own := readFile(t, fmt.Sprintf("/proc/%d/cgroup", pid))
	for _, l := range strings.Split(own, "\n") {
		// hierarchy-ID:controllers:path; the v2 line (empty controllers)
		// of a hybrid host is not ours.
		f := strings.SplitN(l, ":", 3)
		if len(f) == 3 && f[1] != "" && f[2] != p {
			t.Errorf("/proc/%d/cgroup: %q, want every v1 hierarchy at %s", pid, l, p)
		}
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Pids != 1 {
		t.Errorf("Stats().Pids = %d, want 1", st.Pids)
	}
	t.Logf("stats with one sleep: %+v", st)

	// Adopted again by name, as after an agent restart.
	l, err := m.Load("life")
	if err != nil {
		t.Fatal(err)
	}
	if l.Path() != p {
		t.Errorf("Load: path %q, want %q", l.Path(), p)
	}
	if st, err := l.Stats(); err != nil || st.Pids != 1 {
		t.Errorf("Stats of the loaded group: %+v, %v", st, err)
	}
	if names, err := m.List(); err != nil || !slices.Equal(names, []string{"life"}) {
		t.Errorf("List() = %v, %v", names, err)
	}

	// Add of a process that does not exist.
	if err := g.Add(1 << 30); err == nil {
		t.Error("Add of a pid that does not exist succeeded")
	} else {
		t.Logf("Add of a missing pid: %v", err)
	}

	// Delete refuses while the sleep lives, and removes nothing.
	err = g.Delete()
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), strconv.Itoa(pid)) {
		t.Errorf("Delete with a process inside: %v, want a failed-precondition error naming %d", err, pid)
	}
	for _, d := range v1Dirs(m, p) {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("Delete removed %s although it refused", d)
		}
	}

	if err := sleep.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = sleep.wait(t, 5*time.Second)
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	for _, d := range v1Dirs(m, p) {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after Delete: %v", d, err)
		}
	}
	if err := g.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	if err := l.Delete(); err != nil {
		t.Errorf("Delete through the loaded handle: %v", err)
	}
	if _, err := m.Load("life"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Load after Delete: %v, want not found", err)
	}
	if _, err := g.Stats(); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Stats after Delete: %v, want not found", err)
	}
	if names, err := m.List(); err != nil || len(names) != 0 {
		t.Errorf("List() = %v, %v, want nothing", names, err)
	}
}

func TestV1UpdateAndIdempotentCreate(t *testing.T) {
	m := newV1Manager(t)
	g := createV1(t, m, "upd", Resources{CPUs: ptr(1.0), MemoryBytes: ptr(int64(64 << 20))})
	p := g.Path()
	memDir := v1Dir("memory", p)
	_, swapErr := os.Stat(filepath.Join(memDir, "memory.memsw.limit_in_bytes"))
	wantMem := func(n int64) {
		t.Helper()
		wantFile(t, filepath.Join(memDir, "memory.limit_in_bytes"), strconv.FormatInt(n, 10))
		if swapErr == nil {
			wantFile(t, filepath.Join(memDir, "memory.memsw.limit_in_bytes"), strconv.FormatInt(n, 10))
		}
	}
	wantMem(64 << 20)
	// Up then down: memory+swap must stay at or above memory all along.
	for _, n := range []int64{512 << 20, 32 << 20} {
		if err := g.Update(Resources{MemoryBytes: ptr(n)}); err != nil {
			t.Fatal(err)
		}
		wantMem(n)
	}
	wantFile(t, filepath.Join(v1Dir("cpu", p), "cpu.cfs_quota_us"), "100000")
	if err := g.Update(Resources{CPUs: ptr(2.0), Pids: ptr(int64(9))}); err != nil {
		t.Fatal(err)
	}
	wantFile(t, filepath.Join(v1Dir("cpu", p), "cpu.cfs_quota_us"), "200000")
	wantFile(t, filepath.Join(v1Dir("pids", p), "pids.max"), "9")
	wantMem(32 << 20)
	if err := g.Update(Resources{CPUs: ptr(-1.0)}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("Update with cpus -1: %v", err)
	}

	// Create again: the same group, with the new limits applied.
	g2, err := m.Create("upd", Resources{CPUs: ptr(0.25)})
	if err != nil {
		t.Fatal(err)
	}
	if g2.Path() != p {
		t.Errorf("second Create: path %q", g2.Path())
	}
	wantFile(t, filepath.Join(v1Dir("cpu", p), "cpu.cfs_quota_us"), "25000")
	wantFile(t, filepath.Join(v1Dir("pids", p), "pids.max"), "9")
	wantMem(32 << 20)
}

// failingSubsystem fails to create its part of a group, after the real
// controllers have made theirs.
type failingSubsystem struct{}

func (failingSubsystem) Name() cgroup1.Name { return "failing" }
func (failingSubsystem) Create(string, *specs.LinuxResources) error {
	return errors.New("injected failure")
}

func TestV1CreateCleansUpOnFailure(t *testing.T) {
	m := newV1Manager(t)
	failing := *m
	b := *m.backend.(*v1Backend)
	b.subsystems = append(slices.Clone(b.subsystems), failingSubsystem{})
	failing.backend = &b

	if _, err := failing.Create("half", Resources{CPUs: ptr(1.0), Pids: ptr(int64(5))}); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("Create: %v, want the injected failure", err)
	}
	for _, d := range v1Dirs(m, m.Parent()+"/half") {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", d, err)
		}
	}

	// A group that existed stays when its update fails.
	g := createV1(t, m, "kept", Resources{})
	if _, err := failing.Create("kept", Resources{CPUs: ptr(1.0)}); err == nil {
		t.Fatal("Create succeeded")
	}
	for _, d := range v1Dirs(m, g.Path()) {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("existing group lost %s: %v", d, err)
		}
	}
}

func TestV1LoadIncomplete(t *testing.T) {
	m := newV1Manager(t)
	g := createV1(t, m, "partial", Resources{})
	if err := removeDir(v1Dir("pids", g.Path())); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Load("partial"); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "pids") {
		t.Errorf("Load of a group missing in pids: %v", err)
	}
	if names, _ := m.List(); !slices.Equal(names, []string{"partial"}) {
		t.Errorf("List() = %v", names)
	}
	// Create completes it.
	if _, err := m.Create("partial", Resources{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Load("partial"); err != nil {
		t.Errorf("Load after Create: %v", err)
	}
	if _, err := m.Load("never"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Load of a missing group: %v, want not found", err)
	}
}

func TestV1BadNames(t *testing.T) {
	m := newV1Manager(t)
	for _, name := range []string{"", ".", "..", "../escape", "a/b", ".x", "tasks/.."} {
		if _, err := m.Create(name, Resources{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Create(%q): %v, want an invalid-argument error", name, err)
		}
		if _, err := m.Load(name); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Load(%q): %v, want an invalid-argument error", name, err)
		}
	}
	if names, err := m.List(); err != nil || len(names) != 0 {
		t.Errorf("List() = %v, %v", names, err)
	}
}

func TestV1MemoryLimitKills(t *testing.T) {
	m := newV1Manager(t)
	g := createV1(t, m, "oom", Resources{MemoryBytes: ptr(int64(48 << 20))})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=alloc")
	c := start(t, cmd)
	if got := c.line(t); got != "ready" {
		t.Fatalf("helper said %q", got)
	}
	// In the group before it touches its 512 MiB.
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	c.send(t)
	err := c.wait(t, 30*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("the helper exited with %v, want a kill by the OOM killer (stderr %q)", err, c.stderr.String())
	}
	ws, _ := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the helper exited with %v, want SIGKILL from the OOM killer", err)
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.OOMKills == 0 {
		t.Errorf("Stats().OOMKills = 0 after the kill (%+v)", st)
	}
	t.Logf("killed past 48 MiB; stats %+v", st)
}

func TestV1PidsLimitStopsForks(t *testing.T) {
	m := newV1Manager(t)
	g := createV1(t, m, "forks", Resources{Pids: ptr(int64(2))})
	// Each fork runs in the foreground: nothing outlives the shell.
	c := start(t, exec.Command("/bin/sh", "-c", "echo ready; read a; /bin/true && echo fork1-ok; read b; /bin/true; echo fork2-done"))
	if got := c.line(t); got != "ready" {
		t.Fatalf("shell said %q", got)
	}
	if err := g.Add(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	c.send(t) // shell + /bin/true = 2 tasks: allowed
	if got := c.line(t); got != "fork1-ok" {
		t.Fatalf("first fork: shell said %q (stderr %q)", got, c.stderr.String())
	}
	if err := g.Update(Resources{Pids: ptr(int64(1))}); err != nil {
		t.Fatal(err)
	}
	c.send(t) // shell + /bin/true = 2 tasks: refused
	restc := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(c.stdout); restc <- b }()
	var rest []byte
	select {
	case rest = <-restc:
	case <-time.After(10 * time.Second):
		t.Fatalf("the shell neither forked nor gave up in 10 s (stderr %q)", c.stderr.String())
	}
	err := c.wait(t, 10*time.Second)
	if strings.Contains(string(rest), "fork2-done") || err == nil {
		t.Fatalf("the second fork went through: exit %v, output %q, stderr %q", err, rest, c.stderr.String())
	}
	t.Logf("second fork refused: exit %v, stderr %q", err, strings.TrimSpace(c.stderr.String()))
	if ev, err := os.ReadFile(filepath.Join(v1Dir("pids", g.Path()), "pids.events")); err == nil {
		if f := strings.Fields(string(ev)); len(f) != 2 || f[0] != "max" || f[1] == "0" {
			t.Errorf("pids.events = %q, want a max count above 0", ev)
		}
	}
}

func TestV1CPUQuotaThrottles(t *testing.T) {
	m := newV1Manager(t)
	g := createV1(t, m, "cpu", Resources{CPUs: ptr(0.1)})
	c := start(t, exec.Command("/bin/sh", "-c", "echo ready; read a; while :; do :; done"))
	if got := c.line(t); got != "ready" {
		t.Fatalf("shell said %q", got)
	}
	if err := g.Add(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	before, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	c.send(t)
	time.Sleep(600 * time.Millisecond)
	after, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(t0)
	used := after.CPUUsage - before.CPUUsage
	// 10% of a CPU, plus two periods' quota of slack.
	if limit := elapsed/10 + 2*CPUPeriod/10 + 20*time.Millisecond; used > limit || used <= 0 {
		t.Errorf("a busy loop used %v of CPU in %v, want (0, %v]", used, elapsed, limit)
	}
	if after.CPUPeriods == 0 || after.CPUThrottledPeriods == 0 || after.CPUThrottledTime == 0 || after.CPUThrottledPeriods > after.CPUPeriods {
		t.Errorf("Stats() shows no throttling: %+v", after)
	}
	t.Logf("busy loop: %v of CPU in %v; %d periods, %d throttled, %v waited", used, elapsed, after.CPUPeriods, after.CPUThrottledPeriods, after.CPUThrottledTime)
}

// Stats keeps the group's accounting files open and reads them afresh
// each time; a group removed and made again under its name is read anew;
// Delete closes the files.
func TestV1StatsKeepFilesOpen(t *testing.T) {
	m := newV1Manager(t)
	g, err := m.Create("open", Resources{Pids: ptr(int64(10))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeDirs(v1Dirs(m, g.Path())) })
	st, err := g.Stats()
	if err != nil || st.PidsLimit != 10 {
		t.Fatalf("stats %+v, %v", st, err)
	}
	if n := fdsUnder(t, g.Path()); n < 8 {
		t.Errorf("%d of the group's files open after Stats, want its accounting files", n)
	}
	if err := g.Update(Resources{Pids: ptr(int64(20))}); err != nil {
		t.Fatal(err)
	}
	if st, err := g.Stats(); err != nil || st.PidsLimit != 20 {
		t.Fatalf("after an update: pids limit %d, %v; want 20", st.PidsLimit, err)
	}
	// Gone and made again behind the handle's back.
	removeDirs(v1Dirs(m, g.Path()))
	if _, err := m.Create("open", Resources{Pids: ptr(int64(30))}); err != nil {
		t.Fatal(err)
	}
	if st, err := g.Stats(); err != nil || st.PidsLimit != 30 {
		t.Fatalf("after the group was made again: pids limit %d, %v; want 30", st.PidsLimit, err)
	}
	if err := g.Delete(); err != nil {
		t.Fatal(err)
	}
	if n := fdsUnder(t, g.Path()); n != 0 {
		t.Errorf("%d of the group's files still open after Delete", n)
	}
	if _, err := g.Stats(); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("stats of a deleted group: %v, want NotFound", err)
	}
	if n := fdsUnder(t, g.Path()); n != 0 {
		t.Errorf("a failed Stats left %d files open", n)
	}
}

// fdsUnder counts this process's open files in cgroup p's directories.
func fdsUnder(t *testing.T, p string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(target, DefaultMountpoint+"/") && strings.Contains(target, p+"/") {
			n++
		}
	}
	return n
}
