package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
)

// adopt takes over a sandbox whose QEMU an earlier agent started: it
// checks that the pid is still that sandbox's QEMU, reopens its cgroup,
// and runs the boot's steps from "connect" on.
func (m *Manager) adopt(b *box) {
	id := b.rec.Sandbox.Spec.ID
	pid := b.rec.Sandbox.PID
	if pid == 0 { // died between starting QEMU and recording its pid
		if s, err := os.ReadFile(filepath.Join(b.dir, qemu.PIDFile)); err == nil {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(s)))
		}
	}
	r := newRun(b)
	b.cur = r
	proc, err := adoptProcess(pid, b.rec.qemuName())
	if err != nil {
		r.failure = "qemu exited while no agent was watching it"
		if pid == 0 {
			r.failure = "the agent that created it died before qemu started"
		}
		// A QEMU whose pid was never recorded (the agent died as it started
		// it) still carries the sandbox's name: end it, it has no owner.
		// In the background: the agent's start does not wait for it.
		orphans := findByName(b.rec.qemuName(), b.dir)
		if len(orphans) > 0 {
			r.failure = "qemu started by an agent that died before recording it; ended"
		}
		m.log.Warn("sandbox's qemu is gone; cleaning up", "sandbox", id, "pid", pid, "reason", r.failure, "error", err)
		go func() {
			for _, p := range orphans {
				if o, err := adoptProcess(p, b.rec.qemuName()); err == nil {
					o.signal(syscall.SIGKILL)
					select {
					case <-o.done:
					case <-time.After(undoTimeout):
					}
				}
			}
			m.finish(b, r, "")
		}()
		return
	}
	r.proc = proc
	if b.rec.Sandbox.PID != pid { // found through QEMU's pid file
		b.rec.Sandbox.PID = pid
		if err := writeRecord(b.dir, b.rec, true); err != nil {
			m.log.Error("cannot persist sandbox state", "sandbox", id, "error", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.BootTimeout)
	r.cancel = cancel
	was := b.rec.Sandbox.State
	bt := &booting{b: b, r: r, spec: b.rec.Sandbox.Spec, adopted: true, proc: proc,
		// A guest that was Ready has its network; one still Creating may not.
		configure: was == StateCreating}
	go m.watch(b, r)
	if was == StateCreating && (b.rec.Sandbox.Start == StartTemplate || b.rec.Sandbox.Start == StartPool) {
		// Its restore or hot-plugs may be half done, and its template is
		// gone with the last agent: end it.
		go func() {
			defer cancel()
			m.bootFailed(b, r, "re-adopt", errors.New("the agent restarted while the sandbox was starting from a template or the pool"))
		}()
		return
	}
	go func() {
		defer cancel()
		if err := runSteps(ctx, bt, m.readoptSteps()); err != nil {
			m.bootFailed(b, r, "re-adopt", err)
			return
		}
		m.log.Info("re-adopted running sandbox", "sandbox", id, "pid", proc.pid)
		if was == StateStopping {
			b.op.Lock()
			defer b.op.Unlock()
			_ = m.stopLocked(context.Background(), b, 0)
		}
	}()
}
