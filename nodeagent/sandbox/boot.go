package sandbox

// Create, and the steps that take a sandbox from nothing to Ready, read top
// to bottom. Re-adoption (adopt.go) reuses the steps from "connect" on.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/guest/client"
	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/nodeagent/vmtemplate"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Names inside the pod's network namespace.
const (
	podIfname = "eth0"
	tapName   = "tap0"
)

// Create boots a sandbox; see Service.
func (m *Manager) Create(ctx context.Context, spec Spec, wait bool) (Sandbox, error) {
	spec = spec.WithDefaults()
	if err := spec.Validate(); err != nil {
		return Sandbox{}, err
	}
	if err := m.waitAccel(ctx); err != nil {
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
	if err := m.checkHostLocked(spec); err != nil {
		m.mu.Unlock()
		return Sandbox{}, err
	}
	dir := filepath.Join(m.dir, spec.ID)
	var keys map[string]string
	spec.Disks, keys = withoutKeys(spec.Disks)
	if pb := m.takePooledLocked(spec); pb != nil {
		poolID, err := m.adoptPooledLocked(pb, spec, keys)
		if err != nil {
			m.log.Error("cannot take a pool vm; booting", "sandbox", spec.ID, "error", err)
			go m.removePoolVM(pb)
			go m.fillPool()
		} else {
			r := pb.cur
			m.mu.Unlock()
			hctx, cancel := context.WithTimeout(context.Background(), m.cfg.BootTimeout)
			r.mu.Lock()
			r.cancel = cancel
			r.mu.Unlock()
			m.log.Info("creating sandbox from the warm pool", "sandbox", spec.ID, "vcpus", spec.VCPUs, "memoryMiB", spec.MemoryMiB,
				"netns", spec.NetNS, "disks", len(spec.Disks))
			go func() {
				defer cancel()
				m.handOver(hctx, pb, r, poolID)
			}()
			if wait {
				return m.waitBooted(ctx, pb)
			}
			return m.Get(spec.ID)
		}
	}
	b = &box{dir: dir, changed: make(chan struct{}), keys: keys, rec: record{Sandbox: Sandbox{
		Spec: spec, State: StateCreating, Disks: append([]Disk(nil), spec.Disks...),
		WorkDir: dir, CreatedAt: time.Now().UTC(), Accel: m.accel}}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		m.mu.Unlock()
		return Sandbox{}, fmt.Errorf("create sandbox %q: %w", spec.ID, err)
	}
	if err := writeRecord(dir, b.rec, true); err != nil {
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

// booting is what the steps of one boot (or re-adoption) share.
type booting struct {
	b    *box
	r    *run
	spec Spec
	// adopted: the VM was started by an earlier agent.
	adopted bool
	// configure: the guest still needs its network configured.
	configure bool

	mach  qemu.Machine
	files []*os.File // handed to QEMU (the tap), closed after the start
	proc  *process

	// tmpl, when set, is the template the sandbox starts from
	// (faststart.go).
	tmpl *vmtemplate.Template
	// fast: a template's clone or a pool VM becoming a sandbox, whose
	// guest must take its identity, and whose disks were hot-plugged.
	fast bool
	// timings are the steps' durations, for the log.
	timings []string
}

// step is one named part of a boot; a failed step fails the boot with
// its name.
type step struct {
	name string
	run  func(ctx context.Context, bt *booting) error
}

// bootSteps take a new sandbox from nothing to Ready.
func (m *Manager) bootSteps() []step {
	return []step{
		{"pod network", m.stepPodNetwork},
		{"disks", m.stepDisks},
		{"cgroup", m.stepCgroup},
		{"console", m.stepConsole},
		{"qemu", m.stepStartQEMU},
		{"connect", m.stepConnect},
		{"identity", m.stepIdentity},
		{"configure guest", m.stepConfigureGuest},
		{"guest devices", m.waitGuestDevices},
		{"ready", m.stepReady},
	}
}

// readoptSteps take over a VM an earlier agent started.
func (m *Manager) readoptSteps() []step {
	return []step{
		{"cgroup", m.stepAdoptCgroup},
		{"console", m.stepConsole},
		{"connect", m.stepConnect},
		{"disks", m.stepReconcileDisks},
		{"configure guest", m.stepConfigureGuest},
		{"ready", m.stepReady},
	}
}

// runSteps runs steps in order; it stops at the first failure.
func runSteps(ctx context.Context, bt *booting, steps []step) error {
	defer func() {
		for _, f := range bt.files {
			f.Close()
		}
	}()
	for _, s := range steps {
		crashpoint(s.name)
		start := time.Now()
		err := s.run(ctx, bt)
		bt.timings = append(bt.timings, fmt.Sprintf("%s=%.1fms", s.name, float64(time.Since(start).Microseconds())/1000))
		if err != nil {
			if errors.Is(err, errStopped) {
				return err
			}
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return nil
}

// boot runs the boot steps; on failure it kills QEMU (whose exit cleans
// up) or, before QEMU started, cleans up itself.
func (m *Manager) boot(ctx context.Context, b *box, r *run) {
	defer r.cancel()
	start := time.Now()
	bt := &booting{b: b, r: r, spec: b.rec.Sandbox.Spec, configure: true}
	m.chooseStart(bt)
	if bt.tmpl != nil {
		bt.fast = true
		defer bt.tmpl.Release()
	}
	err := runSteps(ctx, bt, m.bootSteps())
	id := bt.spec.ID
	if err == nil {
		m.log.Info("sandbox ready", "sandbox", id, "bootSeconds", time.Since(start).Seconds(),
			"start", m.record(b).Sandbox.Start, "steps", strings.Join(bt.timings, " "))
		return
	}
	m.bootFailed(b, r, "boot", err)
}

// bootFailed ends a run whose boot or re-adoption failed: it kills QEMU,
// whose exit cleans up, or cleans up itself when QEMU never started.
func (m *Manager) bootFailed(b *box, r *run, what string, err error) {
	r.mu.Lock()
	detached, stopping := r.detached, r.stopping
	if r.failure == "" {
		r.failure = what + ": " + err.Error()
	}
	proc := r.proc
	r.mu.Unlock()
	if detached {
		return // the agent is closing; the next one re-adopts the VM
	}
	if !stopping {
		m.log.Error("sandbox "+what+" failed; ending it", "sandbox", b.rec.Sandbox.Spec.ID, "error", err)
	}
	if proc != nil {
		proc.signal(syscall.SIGKILL)
		return // watch() sees the exit and cleans up
	}
	m.finish(b, r, "")
}

// stepPodNetwork takes the pod's network over from eth0: a tap for QEMU
// and tc redirects both ways. The config is recorded before eth0 gives up
// its addresses, so that a crash in between still lets the next agent
// give them back.
func (m *Manager) stepPodNetwork(ctx context.Context, bt *booting) error {
	if rec := m.record(bt.b); rec.Pool {
		tap, err := podnet.NewHeldTap(rec.PoolTap)
		if err != nil {
			return err
		}
		bt.mach.NIC = &qemu.NIC{MAC: qemu.PlaceholderMAC, FD: 3 + len(bt.files)}
		bt.files = append(bt.files, tap)
		m.update(bt.b, func(rec *record) { rec.GuestMAC = qemu.PlaceholderMAC })
		return nil
	}
	if bt.spec.NetNS == "" {
		return nil
	}
	cfg, err := podnet.Inspect(bt.spec.NetNS, podIfname, tapName)
	if err != nil {
		return err
	}
	m.update(bt.b, func(rec *record) { rec.Net = &cfg })
	if err := podnet.Resume(bt.spec.NetNS, cfg); err != nil {
		return err
	}
	tap, err := podnet.OpenTap(bt.spec.NetNS, cfg.Tap)
	if err != nil {
		return err
	}
	bt.mach.NIC = &qemu.NIC{MAC: cfg.MAC, FD: 3 + len(bt.files)}
	bt.files = append(bt.files, tap)
	if bt.tmpl != nil {
		// A clone has its template's card, on the pod's tap: the guest
		// agent gives it the pod's MAC (stepConfigureGuest).
		bt.mach.NIC.MAC = qemu.PlaceholderMAC
	}
	return nil
}

// stepDisks describes the boot disks for QEMU.
func (m *Manager) stepDisks(ctx context.Context, bt *booting) error {
	if bt.tmpl != nil {
		return nil // hot-plugged after the restore
	}
	for _, d := range bt.spec.Disks {
		bd, err := m.blockDevice(bt.b.dir, d, bt.b.keys[d.ID], false)
		if err != nil {
			return err
		}
		bt.mach.Disks = append(bt.mach.Disks, bd)
	}
	return nil
}

// stepCgroup makes the sandbox's cgroup (recorded first, so that a crash
// still lets the next agent remove it).
func (m *Manager) stepCgroup(ctx context.Context, bt *booting) error {
	if m.cfg.Cgroups == nil {
		return nil
	}
	name, parent := qemu.ProcessName(bt.spec.ID), bt.spec.CgroupParent
	m.update(bt.b, func(rec *record) { rec.Cgroup, rec.CgroupParent = name, parent })
	res := m.resources(bt.spec)
	g, err := m.createGroup(parent, name, res)
	if err != nil {
		return err
	}
	m.update(bt.b, func(rec *record) { rec.Sandbox.Resources, rec.Sandbox.Cgroup = res, g.Path() })
	bt.r.mu.Lock()
	bt.r.group = g
	bt.r.mu.Unlock()
	m.watchOOM(bt.b, bt.r, g)
	return nil
}

// stepAdoptCgroup makes sure a re-adopted QEMU is inside its cgroup before
// it runs again: an agent killed between starting QEMU (paused) and
// joining it left it outside; a cgroup removed meanwhile is made again.
func (m *Manager) stepAdoptCgroup(ctx context.Context, bt *booting) error {
	if m.cfg.Cgroups == nil {
		return nil
	}
	rec := m.record(bt.b)
	name, parent := rec.Cgroup, rec.CgroupParent
	if name == "" {
		name, parent = qemu.ProcessName(bt.spec.ID), bt.spec.CgroupParent
		m.update(bt.b, func(rec *record) { rec.Cgroup, rec.CgroupParent = name, parent })
	}
	g, err := m.loadGroup(parent, name)
	if err != nil {
		// Gone meanwhile: made again with the limits last in force.
		res := rec.Sandbox.Resources
		if res.CPUs == nil && res.MemoryBytes == nil {
			res = m.resources(bt.spec)
		}
		if g, err = m.createGroup(parent, name, res); err != nil {
			return err
		}
		m.update(bt.b, func(rec *record) { rec.Sandbox.Resources = res })
	}
	m.update(bt.b, func(rec *record) { rec.Sandbox.Cgroup = g.Path() })
	bt.r.mu.Lock()
	bt.r.group = g
	bt.r.mu.Unlock()
	m.watchOOM(bt.b, bt.r, g)
	if ok, err := inCgroup(bt.proc.pid, g.Path(), m.cfg.Cgroups.Mode() == cgroup.V2); err == nil && ok {
		return nil
	}
	m.log.Warn("re-adopted qemu was outside its cgroup; moving it in", "sandbox", bt.spec.ID, "pid", bt.proc.pid, "cgroup", g.Path())
	return g.Add(bt.proc.pid)
}

// stepStartQEMU starts QEMU paused in its own session, records its pid,
// watches it and puts it into the sandbox's cgroup before it runs.
func (m *Manager) stepStartQEMU(ctx context.Context, bt *booting) error {
	b, r := bt.b, bt.r
	bt.mach.Name, bt.mach.Dir, bt.mach.Accel = bt.spec.ID, b.dir, m.accel
	bt.mach.VCPUs, bt.mach.MemoryMiB = bt.spec.VCPUs, bt.spec.MemoryMiB
	bt.mach.Kernel, bt.mach.Initrd, bt.mach.KernelArgs = m.cfg.Kernel, m.cfg.Initrd, m.cfg.KernelArgs
	bt.mach.Paused = true
	if m.record(b).Pool {
		bt.mach.TBSizeMiB = poolTBSizeMiB
	}
	if bt.tmpl != nil {
		ram, err := bt.tmpl.RAM()
		if err != nil {
			return err
		}
		bt.mach.Memory = &qemu.MemoryFile{FD: 3 + len(bt.files)}
		bt.files = append(bt.files, ram)
		bt.mach.Incoming = true
		if bt.mach.NIC == nil { // the template's card, leading nowhere
			bt.mach.NIC = &qemu.NIC{MAC: qemu.PlaceholderMAC, Dummy: true}
		}
	}
	var env []string
	if m.cfg.Confine {
		c, e, err := m.confinement(b)
		if err != nil {
			return err
		}
		bt.mach.Confine, env = c, e
	}
	args, err := bt.mach.Args()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(b.dir, "qemu.log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(m.cfg.QEMU, args...)
	cmd.Dir = b.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = bt.files
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	// Its own session: the VM survives the agent's exit and its signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	r.mu.Lock()
	if r.stopping {
		r.mu.Unlock()
		return errStopped
	}
	proc, err := startProcess(cmd)
	if err == nil {
		r.proc = proc
	}
	group := r.group
	r.mu.Unlock()
	if err != nil {
		return err
	}
	bt.proc = proc
	crashpoint("qemu:record pid")
	m.update(b, func(rec *record) { rec.Sandbox.PID = proc.pid })
	go m.watch(b, r)
	crashpoint("qemu:join cgroup")
	if group != nil {
		if err := group.Add(proc.pid); err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
	}
	return nil
}

// stepConnect connects to QEMU's monitor, lets a paused VM run and waits
// for the guest agent's first answer.
func (m *Manager) stepConnect(ctx context.Context, bt *booting) error {
	b, r := bt.b, bt.r
	q, err := dialQMP(ctx, filepath.Join(b.dir, qemu.QMPSocket), bt.proc)
	if err != nil {
		return err
	}
	r.setQMP(q)
	go r.pumpEvents(q)
	if bt.adopted {
		// An earlier agent may have died before letting it run.
		if st, err := q.QueryStatus(ctx); err == nil && (st.Status == "prelaunch" || st.Status == "paused") {
			if err := q.Execute(ctx, "cont", nil, nil); err != nil {
				return err
			}
		}
	} else if bt.tmpl != nil {
		if err := m.restore(ctx, bt, q); err != nil {
			return err
		}
		if err := q.Execute(ctx, "cont", nil, nil); err != nil {
			return err
		}
	} else {
		// The boot disks' QoS, before the guest touches them.
		for _, d := range bt.spec.Disks {
			if d.QoS != (DiskQoS{}) {
				if err := q.SetIOThrottle(ctx, d.ID, d.QoS.limits()); err != nil {
					return err
				}
			}
		}
		if err := q.Execute(ctx, "cont", nil, nil); err != nil {
			return err
		}
	}
	agent, err := client.Dial(ctx, filepath.Join(b.dir, qemu.AgentSocket))
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("no answer from the guest agent in %v: %w", m.cfg.BootTimeout, err)
		}
		return fmt.Errorf("guest agent: %w", err)
	}
	m.setAgent(b, r, agent)
	return nil
}

// stepConfigureGuest gives the guest the pod's addresses and routes.
func (m *Manager) stepConfigureGuest(ctx context.Context, bt *booting) error {
	net := m.record(bt.b).Net
	if !bt.configure || net == nil {
		return nil
	}
	return m.configureNetwork(ctx, bt, guestNetConfig(*net))
}

// stepReady moves the sandbox to Ready unless a Stop came first.
func (m *Manager) stepReady(ctx context.Context, bt *booting) error {
	var addrs []string
	if net := m.record(bt.b).Net; net != nil {
		addrs = net.Addresses
	}
	r := bt.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return errStopped
	}
	m.setState(bt.b, StateReady, "", func(rec *record) {
		rec.Sandbox.ReadyAt = time.Now().UTC()
		rec.Sandbox.Addresses = addrs
	})
	// Only now may exec and disk calls use the run: a re-adoption has
	// reconciled the disks and the guest's network by here.
	r.markConnected()
	return nil
}

// errStopped is the boot error when Stop interrupts a boot.
var errStopped = errors.New("stopped while booting")
