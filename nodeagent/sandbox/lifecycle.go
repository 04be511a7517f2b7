package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/guest/client"
	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Names inside the pod's network namespace and in the cgroup tree.
const (
	podIfname = "eth0"
	tapName   = "tap0"
)

func cgroupName(id string) string { return "sandbox-" + id }

// run is one QEMU process of a sandbox and what hangs off it.
type run struct {
	box    *box
	cancel context.CancelFunc // ends the boot
	ended  chan struct{}      // closed once QEMU is gone and cleaned up

	// connected closes once QMP and the guest agent are connected, or the
	// run ended.
	connected     chan struct{}
	connectedOnce sync.Once

	mu       sync.Mutex
	proc     *process
	qmp      *qemu.QMP
	agent    *client.Client
	group    cgroup.Group
	stopping bool   // a Stop asked for this exit
	failure  string // why the boot failed, if it did
	detached bool   // the manager let go of it (Close)
	waiters  map[string]chan struct{}
}

func newRun(b *box) *run {
	return &run{box: b, ended: make(chan struct{}), connected: make(chan struct{}), waiters: map[string]chan struct{}{}}
}

func (r *run) markConnected() { r.connectedOnce.Do(func() { close(r.connected) }) }

// detach closes the agent's connections to a VM it leaves running.
func (r *run) detach() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.detached = true
	if r.cancel != nil {
		r.cancel()
	}
	if r.agent != nil {
		r.agent.Close()
	}
	if r.qmp != nil {
		r.qmp.Close()
	}
}

// Create boots a sandbox; see Service.
func (m *Manager) Create(ctx context.Context, spec Spec, wait bool) (Sandbox, error) {
	spec = spec.WithDefaults()
	if err := spec.Validate(); err != nil {
		return Sandbox{}, err
	}
	// A unix socket path has room for 107 bytes.
	if sock := filepath.Join(m.dir, spec.ID, qemu.AgentSocket); len(sock) > 107 {
		return Sandbox{}, fmt.Errorf("sandbox %q: its socket %s would be longer than 107 bytes; use a shorter ID or state dir: %w",
			spec.ID, sock, errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	b, exists := m.boxes[spec.ID]
	if exists {
		m.mu.Unlock()
		if !b.rec.Sandbox.Spec.Equal(spec) {
			return Sandbox{}, fmt.Errorf("sandbox %q exists with another spec: %w", spec.ID, errdefs.ErrAlreadyExists)
		}
		if wait {
			return m.waitBooted(ctx, b)
		}
		return m.Get(spec.ID)
	}
	dir := filepath.Join(m.dir, spec.ID)
	b = &box{dir: dir, changed: make(chan struct{}), rec: record{Sandbox: Sandbox{
		Spec: spec, State: StateCreating, Disks: append([]Disk(nil), spec.Disks...),
		WorkDir: dir, CreatedAt: time.Now().UTC(), Accel: m.accel}}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		m.mu.Unlock()
		return Sandbox{}, fmt.Errorf("create sandbox %q: %w", spec.ID, err)
	}
	if err := writeRecord(dir, b.rec); err != nil {
		os.RemoveAll(dir)
		m.mu.Unlock()
		return Sandbox{}, fmt.Errorf("create sandbox %q: %w", spec.ID, err)
	}
	r := newRun(b)
	b.cur = r
	m.boxes[spec.ID] = b
	m.publishLocked(Event{Type: EventState, Sandbox: b.snapshot()})
	m.mu.Unlock()

	// The VM outlives this request: its boot hangs off its own context,
	// which Stop cancels.
	bctx, cancel := context.WithTimeout(context.Background(), m.cfg.BootTimeout)
	r.cancel = cancel
	m.log.Info("creating sandbox", "sandbox", spec.ID, "vcpus", spec.VCPUs, "memoryMiB", spec.MemoryMiB,
		"netns", spec.NetNS, "disks", len(spec.Disks), "accel", m.accel)
	go m.boot(bctx, b, r)
	if wait {
		return m.waitBooted(ctx, b)
	}
	return m.Get(spec.ID)
}

// waitBooted waits until b has left Creating.
func (m *Manager) waitBooted(ctx context.Context, b *box) (Sandbox, error) {
	for {
		st, changed := m.state(b)
		if st != StateCreating {
			m.mu.Lock()
			defer m.mu.Unlock()
			return b.snapshot(), nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			m.mu.Lock()
			defer m.mu.Unlock()
			return b.snapshot(), fmt.Errorf("wait for sandbox %q: %w", b.rec.Sandbox.Spec.ID, ctx.Err())
		}
	}
}

// boot runs the boot steps; on failure it kills QEMU (whose exit cleans
// up) or, before QEMU started, cleans up itself.
func (m *Manager) boot(ctx context.Context, b *box, r *run) {
	defer r.cancel()
	start := time.Now()
	err := m.bootSteps(ctx, b, r)
	id := b.rec.Sandbox.Spec.ID
	if err == nil {
		m.log.Info("sandbox ready", "sandbox", id, "bootSeconds", time.Since(start).Seconds())
		return
	}
	r.mu.Lock()
	detached, stopping := r.detached, r.stopping
	if r.failure == "" {
		r.failure = "boot: " + err.Error()
	}
	proc := r.proc
	r.mu.Unlock()
	if detached {
		return // the agent is closing; the next one re-adopts the VM
	}
	if !stopping {
		m.log.Error("sandbox boot failed", "sandbox", id, "error", err)
	}
	if proc != nil {
		proc.signal(syscall.SIGKILL)
		return // watch() sees the exit and cleans up
	}
	m.finish(b, r, "")
}

func (m *Manager) bootSteps(ctx context.Context, b *box, r *run) error {
	spec := b.rec.Sandbox.Spec
	mach := qemu.Machine{Name: spec.ID, Dir: b.dir, Accel: m.accel, VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB,
		Kernel: m.cfg.Kernel, Initrd: m.cfg.Initrd, KernelArgs: m.cfg.KernelArgs, Paused: true}
	var extra []*os.File
	defer func() {
		for _, f := range extra {
			f.Close()
		}
	}()
	if spec.NetNS != "" {
		// Recorded before eth0 gives up its addresses, so that a crash in
		// between still lets the next agent give them back.
		cfg, err := podnet.Inspect(spec.NetNS, podIfname, tapName)
		if err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		m.update(b, func(rec *record) { rec.Net = &cfg })
		if err := podnet.Resume(spec.NetNS, cfg); err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		tap, err := podnet.OpenTap(spec.NetNS, cfg.Tap)
		if err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
		extra = append(extra, tap)
		mach.NIC = &qemu.NIC{MAC: cfg.MAC}
	}
	for _, d := range spec.Disks {
		bd, err := m.blockDevice(b.dir, d)
		if err != nil {
			return err
		}
		mach.Disks = append(mach.Disks, bd)
	}
	if m.cfg.Cgroups != nil {
		name := cgroupName(spec.ID)
		mem := int64(spec.MemoryMiB+m.cfg.OverheadMiB) << 20
		cpus := float64(spec.VCPUs)
		pids := int64(1024)
		m.update(b, func(rec *record) { rec.Cgroup = name })
		g, err := m.cfg.Cgroups.Create(name, cgroup.Resources{CPUs: &cpus, MemoryBytes: &mem, Pids: &pids})
		if err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
		r.mu.Lock()
		r.group = g
		r.mu.Unlock()
	}
	args, err := mach.Args()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(b.dir, "qemu.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(m.cfg.QEMU, args...)
	cmd.Dir = b.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = extra
	// Its own session: the VM survives the agent's exit and its signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		logf.Close()
		return errStopped
	}
	proc, err := startProcess(cmd)
	if err == nil {
		r.proc = proc
	}
	r.mu.Unlock()
	logf.Close()
	if err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	m.update(b, func(rec *record) { rec.Sandbox.PID = proc.pid })
	go m.watch(b, r)
	if g := r.group; g != nil {
		if err := g.Add(proc.pid); err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
	}
	q, err := dialQMP(ctx, filepath.Join(b.dir, qemu.QMPSocket), proc)
	if err != nil {
		return err
	}
	r.setQMP(q)
	go r.pumpEvents(q)
	if err := q.Execute(ctx, "cont", nil, nil); err != nil {
		return err
	}
	agent, err := client.Dial(ctx, filepath.Join(b.dir, qemu.AgentSocket))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("no answer from the guest agent in %v: %w", m.cfg.BootTimeout, err)
		}
		return fmt.Errorf("guest agent: %w", err)
	}
	r.mu.Lock()
	r.agent = agent
	r.mu.Unlock()
	r.markConnected()
	var addrs []string
	if net := m.record(b).Net; net != nil {
		if err := agent.ConfigureNetwork(ctx, guestNetConfig(*net)); err != nil {
			return fmt.Errorf("guest network: %w", err)
		}
		addrs = net.Addresses
	}
	return m.becomeReady(b, r, addrs)
}

// becomeReady moves b to Ready unless a Stop came first.
func (m *Manager) becomeReady(b *box, r *run, addrs []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return errStopped
	}
	m.setState(b, StateReady, "", func(rec *record) {
		rec.Sandbox.ReadyAt = time.Now().UTC()
		rec.Sandbox.Addresses = addrs
	})
	return nil
}

func (r *run) setQMP(q *qemu.QMP) {
	r.mu.Lock()
	r.qmp = q
	r.mu.Unlock()
}

// dialQMP connects to QEMU's monitor, waiting for the socket to appear.
func dialQMP(ctx context.Context, path string, proc *process) (*qemu.QMP, error) {
	for {
		q, err := qemu.Dial(ctx, path, 64)
		if err == nil {
			return q, nil
		}
		var ne *net.OpError
		if !errors.As(err, &ne) && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("qmp: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: %w", err)
		case <-proc.done:
			return nil, fmt.Errorf("qmp: qemu exited before its monitor opened")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// pumpEvents hands DEVICE_DELETED events to the unplug waiting for them.
func (r *run) pumpEvents(q *qemu.QMP) {
	for ev := range q.Events() {
		if ev.Name != "DEVICE_DELETED" {
			continue
		}
		var d struct {
			Device string `json:"device"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		r.mu.Lock()
		if ch, ok := r.waiters[d.Device]; ok {
			close(ch)
			delete(r.waiters, d.Device)
		}
		r.mu.Unlock()
	}
}

// watch waits for QEMU to exit, then records why and cleans up.
func (m *Manager) watch(b *box, r *run) {
	<-r.proc.done
	r.mu.Lock()
	detached := r.detached
	r.mu.Unlock()
	if detached {
		return
	}
	m.finish(b, r, r.proc.reason)
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
			rec.Cgroup = ""
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
		if g, err := m.cfg.Cgroups.Load(rec.Cgroup); err == nil {
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
	return problems
}

// deleteGroup removes a cgroup; the kernel may take a moment to let go of
// a process that just exited.
func deleteGroup(g cgroup.Group) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = g.Delete(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("cgroup: %w", err)
}

// removeRunFiles removes what a run leaves in the sandbox dir: everything
// but the record.
func removeRunFiles(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != recordFile {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

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
	if err := os.RemoveAll(b.dir); err != nil {
		return fmt.Errorf("delete sandbox %q: %w", id, err)
	}
	b.deleted = true
	delete(m.boxes, id)
	m.publishLocked(Event{Type: EventDeleted, Sandbox: b.snapshot()})
	m.log.Info("sandbox deleted", "sandbox", id)
	return nil
}

// adopt takes over a sandbox whose QEMU an earlier agent started.
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
	proc, err := adoptProcess(pid, "sandbox-"+id)
	if err != nil {
		m.log.Warn("sandbox's qemu is gone; cleaning up", "sandbox", id, "pid", pid, "error", err)
		r.failure = "qemu exited while no agent was watching it"
		go m.finish(b, r, "")
		return
	}
	r.proc = proc
	if b.rec.Cgroup != "" && m.cfg.Cgroups != nil {
		if g, err := m.cfg.Cgroups.Load(b.rec.Cgroup); err == nil {
			r.group = g
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.BootTimeout)
	r.cancel = cancel
	was := b.rec.Sandbox.State
	go m.watch(b, r)
	go func() {
		defer cancel()
		err := func() error {
			q, err := dialQMP(ctx, filepath.Join(b.dir, qemu.QMPSocket), proc)
			if err != nil {
				return err
			}
			r.setQMP(q)
			go r.pumpEvents(q)
			if st, err := q.QueryStatus(ctx); err == nil && (st.Status == "prelaunch" || st.Status == "paused") {
				if err := q.Execute(ctx, "cont", nil, nil); err != nil {
					return err
				}
			}
			agent, err := client.Dial(ctx, filepath.Join(b.dir, qemu.AgentSocket))
			if err != nil {
				return fmt.Errorf("guest agent: %w", err)
			}
			r.mu.Lock()
			r.agent = agent
			r.mu.Unlock()
			r.markConnected()
			net := m.record(b).Net
			if was == StateCreating && net != nil {
				if err := agent.ConfigureNetwork(ctx, guestNetConfig(*net)); err != nil {
					return fmt.Errorf("guest network: %w", err)
				}
			}
			var addrs []string
			if net != nil {
				addrs = net.Addresses
			}
			return m.becomeReady(b, r, addrs)
		}()
		if err != nil {
			r.mu.Lock()
			detached := r.detached
			if r.failure == "" {
				r.failure = "re-adopt: " + err.Error()
			}
			r.mu.Unlock()
			if !detached {
				m.log.Error("cannot re-adopt sandbox; killing it", "sandbox", id, "error", err)
				proc.signal(syscall.SIGKILL)
			}
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
