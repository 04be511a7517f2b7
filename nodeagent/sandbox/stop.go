package sandbox

// The end of a sandbox: Stop, Delete, and the one release path that every
// end takes (a boot failure, a stop, QEMU's death).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Stop shuts a sandbox down; see Service.
func (m *Manager) Stop(ctx context.Context, id string, timeout time.Duration) (Sandbox, error) {
	b, err := m.lookup(id)
	if err != nil {
		return Sandbox{}, err
	}
	b.op.Lock()
	defer b.op.Unlock()
	if err := m.stopLocked(ctx, b, timeout); err != nil {
		return Sandbox{}, err
	}
	return m.Get(id)
}

func (m *Manager) stopLocked(ctx context.Context, b *box, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = m.cfg.StopTimeout
	}
	m.mu.Lock()
	r := b.cur
	m.mu.Unlock()
	if r == nil {
		return nil // Stopped or Failed already
	}
	r.mu.Lock()
	first := !r.stopping
	r.stopping = true
	if r.cancel != nil {
		r.cancel() // a boot in progress gives up
	}
	proc, agent, q := r.proc, r.agent, r.qmp
	r.mu.Unlock()
	if first {
		m.setState(b, StateStopping, "", nil)
	}
	id := b.rec.Sandbox.Spec.ID
	wait := func(d time.Duration) bool {
		select {
		case <-r.ended:
			return true
		case <-time.After(d):
			return false
		case <-ctx.Done():
			return false
		}
	}
	if proc == nil {
		// The boot had not started QEMU yet: it sees the stop and cleans up.
		if !wait(timeout) {
			return fmt.Errorf("stop sandbox %q: boot did not give up: %w", id, errdefs.ErrUnavailable)
		}
		return nil
	}
	deadline := time.Now().Add(timeout)
	if agent != nil {
		sctx, cancel := context.WithTimeout(ctx, timeout/2)
		err := agent.Shutdown(sctx)
		cancel()
		if err == nil && wait(time.Until(deadline)-timeout/4) {
			return nil
		}
	}
	if q != nil {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = q.Execute(qctx, "quit", nil, nil)
		cancel()
		if wait(max(time.Until(deadline), 500*time.Millisecond)) {
			return nil
		}
	}
	m.log.Warn("sandbox did not stop in time; killing qemu", "sandbox", id, "timeout", timeout)
	proc.signal(syscall.SIGKILL)
	select {
	case <-r.ended:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop sandbox %q: %w", id, ctx.Err())
	}
}

// Delete stops a sandbox and removes it; see Service.
func (m *Manager) Delete(ctx context.Context, id string) error {
	b, err := m.lookup(id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	b.op.Lock()
	defer b.op.Unlock()
	if err := m.stopLocked(ctx, b, 0); err != nil {
		return err
	}
	// A cleanup that failed when the sandbox ended gets another go.
	if problems := m.release(m.record(b), nil); len(problems) > 0 {
		return fmt.Errorf("delete sandbox %q: %s: %w", id, strings.Join(problems, "; "), errdefs.ErrUnavailable)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.removeDirLocked(b); err != nil {
		return fmt.Errorf("delete sandbox %q: %w", id, err)
	}
	delete(m.boxes, id)
	m.publishLocked(Event{Type: EventDeleted, Sandbox: b.snapshot()})
	m.log.Info("sandbox deleted", "sandbox", id)
	return nil
}

// finish ends a run: it releases the tap, the cgroup, the sockets and the
// files, and records the sandbox as Stopped (a Stop or a guest shutdown)
// or Failed (anything else), with the reason.
func (m *Manager) finish(b *box, r *run, exitReason string) {
	r.mu.Lock()
	if r.cancel != nil {
		r.cancel()
	}
	stopping, failure := r.stopping, r.failure
	if r.agent != nil {
		r.agent.Close()
	}
	if r.qmp != nil {
		r.qmp.Close()
	}
	group := r.group
	r.mu.Unlock()

	rec := m.record(b)
	id := rec.Sandbox.Spec.ID
	problems := m.release(rec, group)
	tail := logTail(filepath.Join(b.dir, "qemu.log"), 2)
	removeRunFiles(b.dir)

	state, reason := StateFailed, exitReason
	switch {
	case stopping:
		state, reason = StateStopped, "stopped"
	case failure != "":
		reason = failure
	case exitReason == "qemu exited with status 0":
		state, reason = StateStopped, "guest shut down"
	}
	if tail != "" && state == StateFailed {
		reason += " (qemu: " + tail + ")"
	}
	if len(problems) > 0 {
		m.log.Error("sandbox cleanup incomplete", "sandbox", id, "problems", strings.Join(problems, "; "))
		reason += " (cleanup: " + strings.Join(problems, "; ") + ")"
	}
	m.setState(b, state, reason, func(rec *record) {
		rec.Sandbox.PID = 0
		rec.Sandbox.Addresses = nil
		if len(problems) == 0 {
			rec.Net = nil
			rec.Cgroup, rec.CgroupParent, rec.Sandbox.Cgroup = "", "", ""
		}
	})
	m.mu.Lock()
	if b.cur == r {
		b.cur = nil
	}
	m.mu.Unlock()
	if state == StateFailed {
		m.log.Error("sandbox failed", "sandbox", id, "reason", reason)
	} else {
		m.log.Info("sandbox stopped", "sandbox", id, "reason", reason)
	}
	close(r.ended)
	r.markConnected()
}

// release gives back what rec says the sandbox holds: its cgroup (group,
// when the run has it open) and the pod network. It returns what failed.
func (m *Manager) release(rec record, group cgroup.Group) []string {
	var problems []string
	if group == nil && rec.Cgroup != "" && m.cfg.Cgroups != nil {
		if g, err := m.loadGroup(rec.CgroupParent, rec.Cgroup); err == nil {
			group = g
		}
	}
	if group != nil {
		if err := deleteGroup(group); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if rec.Net != nil {
		if err := podnet.Teardown(rec.Sandbox.Spec.NetNS, *rec.Net); err != nil {
			problems = append(problems, "pod network: "+err.Error())
		}
	}
	if tap := rec.poolTap(); tap != "" {
		if err := podnet.DeleteHeldTap(tap); err != nil {
			problems = append(problems, "held tap: "+err.Error())
		}
	}
	return problems
}

// deleteGroup removes a cgroup; the kernel may take a moment to let go of
// a process that just exited.
func deleteGroup(g cgroup.Group) error {
	if err := cgroup.DeleteSettled(g); err != nil {
		return fmt.Errorf("cgroup: %w", err)
	}
	return nil
}

// removeRunFiles removes what a run leaves in the sandbox dir: everything
// but the record and the logs.
func removeRunFiles(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != recordFile && !isLogFile(e.Name()) {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// logTail returns the last n non-empty lines of a file, joined by " | ".
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
			if len(lines) > n {
				lines = lines[1:]
			}
		}
	}
	return strings.Join(lines, " | ")
}
