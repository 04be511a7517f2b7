package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/guest/client"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/nodeagent/vmtemplate"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Config configures the manager.
type Config struct {
	// StateDir holds one directory per sandbox under sandboxes/.
	StateDir string
	// QEMU is the qemu-system-x86_64 binary.
	QEMU string
	// Kernel and Initrd boot every guest (the tailored vmlinux and the
	// initramfs with the guest agent as /init).
	Kernel, Initrd string
	// Accel is "auto" (probe KVM, fall back to TCG), "kvm" or "tcg".
	Accel string
	// KernelArgs are appended to the guests' kernel command line.
	KernelArgs []string
	// Ceph is the cluster (ceph.conf) of RBD disks, and the default cephx
	// user and keyring for disks that name none.
	Ceph CephCredentials
	// Confine runs each QEMU under seccomp, as its own unprivileged uid
	// (and gid) from UIDs, chrooted into its sandbox dir.
	Confine bool
	UIDs    UIDRange
	// Quota places each QEMU in its own cgroup; nil disables cgroups.
	Cgroups *cgroup.Manager
	// OverheadMiB is added to the guest's memory for the cgroup limit
	// (QEMU's own memory and its translation cache under TCG).
	OverheadMiB uint32
	// BootTimeout bounds the time from QEMU start to the guest agent's
	// first answer; StopTimeout is Stop's default.
	BootTimeout, StopTimeout time.Duration
	// FastStart is FastStartOff (every sandbox boots cold) or
	// FastStartTemplate: sandboxes of TemplateClasses start from a VM
	// template, whose unwritten memory pages all of them share.
	FastStart       string
	TemplateClasses []vmtemplate.Class
	// PoolSize is how many idle VMs the warm pool keeps per class of
	// TemplateClasses, with FastStartPool.
	PoolSize int
	Log      *slog.Logger
}

// UIDRange is Count ids from First, which nothing else on the node uses.
type UIDRange struct{ First, Count int }

// CephCredentials name a cluster and a cephx user.
type CephCredentials struct {
	Conf    string // ceph.conf with mon_host
	User    string // cephx user without "client.", e.g. "admin"
	Keyring string // keyring file (or a file holding just the base64 key)
}

func (c *Config) defaults() {
	if c.QEMU == "" {
		c.QEMU = "qemu-system-x86_64"
	}
	if c.Accel == "" {
		c.Accel = "auto"
	}
	if c.OverheadMiB == 0 {
		c.OverheadMiB = 256
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = 60 * time.Second
	}
	if c.UIDs.Count == 0 {
		c.UIDs = UIDRange{First: DefaultUIDFirst, Count: DefaultUIDCount}
	}
	if c.FastStart == "" {
		c.FastStart = FastStartOff
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
}

// The default range of QEMU's uids: far above the ids of users and of
// the usual /etc/subuid ranges.
const (
	DefaultUIDFirst = 60000000
	DefaultUIDCount = 65536
)

// Validate checks the configuration.
func (c Config) Validate() error {
	for name, p := range map[string]string{"state dir": c.StateDir, "kernel": c.Kernel, "initrd": c.Initrd} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("sandbox %s %q must be an absolute path: %w", name, p, errdefs.ErrInvalidArgument)
		}
	}
	if c.UIDs.First < 1 || c.UIDs.Count < 1 || c.UIDs.First+c.UIDs.Count > 1<<31-1 {
		return fmt.Errorf("qemu uids %d+%d: want a range of positive ids below 2^31: %w", c.UIDs.First, c.UIDs.Count, errdefs.ErrInvalidArgument)
	}
	switch c.FastStart {
	case "", FastStartOff:
	case FastStartTemplate, FastStartPool:
		if c.FastStart == FastStartPool && (c.PoolSize < 1 || c.PoolSize > 64) {
			return fmt.Errorf("warm pool size %d: want 1-64 per class: %w", c.PoolSize, errdefs.ErrInvalidArgument)
		}
		if len(c.TemplateClasses) == 0 {
			return fmt.Errorf("fast start %q needs at least one size class: %w", c.FastStart, errdefs.ErrInvalidArgument)
		}
	default:
		return fmt.Errorf("fast start %q: want off, pool or template: %w", c.FastStart, errdefs.ErrInvalidArgument)
	}
	switch c.Accel {
	case "", "auto", qemu.AccelKVM, qemu.AccelTCG:
	default:
		return fmt.Errorf("accel %q: want auto, kvm or tcg: %w", c.Accel, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Manager runs the node's sandboxes.
//
// Lock order: box.op, then run.mu, then Manager.mu. Code that holds a
// later one never takes an earlier one.
type Manager struct {
	cfg Config
	log *slog.Logger
	dir string // StateDir/sandboxes
	// accel is decided in the background (the KVM probe boots a test
	// guest); accelKnown closes once it is set. Creates wait for it.
	accel      string
	accelKnown chan struct{}

	// tmpls keeps the VM templates (nil unless fast start is "template");
	// it starts building once the accelerator is known.
	tmpls *vmtemplate.Factory
	// pool is the warm pool (nil unless fast start is "pool").
	pool *pool

	mu    sync.Mutex
	boxes map[string]*box
	subs  map[chan Event]struct{}
}

var _ Service = (*Manager)(nil)

// Open loads the sandboxes recorded in cfg.StateDir, re-adopts the ones
// whose QEMU still runs and cleans up after the ones that died while no
// agent watched them. It returns at once: the accelerator probe runs in the
// background (until ctx ends), and creates wait for it.
func Open(ctx context.Context, cfg Config) (*Manager, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Log.With("component", "sandbox"), dir: filepath.Join(cfg.StateDir, "sandboxes"),
		boxes: map[string]*box{}, subs: map[chan Event]struct{}{}, accelKnown: make(chan struct{})}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return nil, fmt.Errorf("sandbox state dir: %w", err)
	}
	if cfg.FastStart == FastStartTemplate {
		m.tmpls = vmtemplate.New(vmtemplate.Config{QEMU: cfg.QEMU, Kernel: cfg.Kernel, Initrd: cfg.Initrd,
			KernelArgs: cfg.KernelArgs, Dir: filepath.Join(cfg.StateDir, "templates"), Classes: cfg.TemplateClasses,
			BootTimeout: cfg.BootTimeout, Log: m.log})
	}
	if cfg.FastStart == FastStartPool {
		m.pool = &pool{size: cfg.PoolSize, classes: cfg.TemplateClasses, idle: map[vmtemplate.Class][]*box{}, keys: map[*box]string{},
			booting: map[vmtemplate.Class]int{}, failed: map[vmtemplate.Class]string{}, fails: map[vmtemplate.Class]int{}}
		m.pool.ctx, m.pool.cancel = context.WithCancel(context.Background())
	}
	go func() {
		m.accel = m.chooseAccel(ctx)
		if m.tmpls != nil {
			m.tmpls.Start(m.accel)
		}
		close(m.accelKnown)
		if m.pool != nil {
			m.fillPool()
		}
	}()
	entries, err := os.ReadDir(m.dir)
	if err != nil {
		return nil, fmt.Errorf("sandbox state dir: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(m.dir, e.Name())
		rec, err := readRecord(dir)
		if err != nil || rec.Sandbox.Spec.ID != e.Name() {
			m.log.Warn("ignoring a sandbox dir without a valid record", "dir", dir, "error", err)
			continue
		}
		b := &box{dir: dir, rec: rec, changed: make(chan struct{})}
		if rec.Pool {
			// An idle pool VM of an earlier agent: ended, not re-adopted
			// (the pool is built again; its cgroup is an orphan).
			go m.discardPoolVM(b)
			continue
		}
		m.boxes[rec.Sandbox.Spec.ID] = b
		switch rec.Sandbox.State {
		case StateCreating, StateReady, StateStopping:
			m.adopt(b)
		}
	}
	return m, nil
}

// Accel reports the accelerator guests run under, or "" while the probe
// still runs.
func (m *Manager) Accel() string {
	select {
	case <-m.accelKnown:
		return m.accel
	default:
		return ""
	}
}

// waitAccel waits for the accelerator probe.
func (m *Manager) waitAccel(ctx context.Context) error {
	select {
	case <-m.accelKnown:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the KVM probe: %w", ctx.Err())
	}
}

func (m *Manager) chooseAccel(ctx context.Context) string {
	switch m.cfg.Accel {
	case qemu.AccelKVM, qemu.AccelTCG:
		m.log.Info("sandbox accelerator set by configuration", "accel", m.cfg.Accel)
		return m.cfg.Accel
	}
	if err := qemu.ProbeKVM(ctx, m.cfg.QEMU, m.cfg.Kernel); err != nil {
		m.log.Info("KVM does not work here; sandboxes run under TCG (emulation, slower)", "accel", qemu.AccelTCG, "why", err.Error())
		return qemu.AccelTCG
	}
	m.log.Info("KVM works; sandboxes run under KVM", "accel", qemu.AccelKVM)
	return qemu.AccelKVM
}

// Close lets go of the running sandboxes without stopping them (the next
// agent re-adopts them).
func (m *Manager) Close() {
	if p := m.pool; p != nil {
		// Cleaned at shutdown (the next agent builds its own): boots in
		// flight end and remove their VMs, then the idle ones go.
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.cancel()
		done := make(chan struct{})
		go func() { p.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * undoTimeout):
			m.log.Warn("pool vms still booting at shutdown; the next agent removes them")
		}
		p.mu.Lock()
		var idle []*box
		for _, bs := range p.idle {
			idle = append(idle, bs...)
		}
		p.idle = map[vmtemplate.Class][]*box{}
		p.mu.Unlock()
		for _, b := range idle {
			m.removePoolVM(b)
		}
	}
	m.mu.Lock()
	var runs []*run
	for _, b := range m.boxes {
		if r := b.cur; r != nil && !b.rec.Pool {
			runs = append(runs, r)
		}
	}
	for ch := range m.subs {
		delete(m.subs, ch)
		close(ch)
	}
	m.mu.Unlock()
	// Outside m.mu: the lock order is b.op, then run.mu, then Manager.mu.
	for _, r := range runs {
		r.detach()
	}
	if m.tmpls != nil {
		m.tmpls.Close()
	}
	m.flushVolatileAll()
}

// Get returns one sandbox.
func (m *Manager) Get(id string) (Sandbox, error) {
	b, err := m.lookup(id)
	if err != nil {
		return Sandbox{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return b.snapshot(), nil
}

// List returns all sandboxes, by ID.
func (m *Manager) List() []Sandbox {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Sandbox, 0, len(m.boxes))
	for id, b := range m.boxes {
		if !isPoolID(id) {
			out = append(out, b.snapshot())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.ID < out[j].Spec.ID })
	return out
}

// Watch streams events. A watcher that falls 256 events behind is cut
// off (its channel closes) rather than slowing the agent down.
func (m *Manager) Watch(ctx context.Context, includeCurrent bool) <-chan Event {
	ch := make(chan Event, 256)
	m.mu.Lock()
	if includeCurrent {
		ids := make([]string, 0, len(m.boxes))
		for id := range m.boxes {
			if !isPoolID(id) {
				ids = append(ids, id)
			}
		}
		sort.Strings(ids)
		for _, id := range ids {
			if len(ch) < cap(ch) {
				ch <- Event{Time: time.Now(), Type: EventState, Sandbox: m.boxes[id].snapshot()}
			}
		}
	}
	m.subs[ch] = struct{}{}
	m.mu.Unlock()
	go func() {
		<-ctx.Done()
		m.mu.Lock()
		if _, ok := m.subs[ch]; ok {
			delete(m.subs, ch)
			close(ch)
		}
		m.mu.Unlock()
	}()
	return ch
}

// publishLocked sends an event to the watchers; m.mu is held.
func (m *Manager) publishLocked(e Event) {
	if isPoolID(e.Sandbox.Spec.ID) {
		return // pool VMs are no one's sandboxes yet
	}
	e.Time = time.Now()
	for ch := range m.subs {
		select {
		case ch <- e:
		default:
			delete(m.subs, ch)
			close(ch)
		}
	}
}

// ready returns the run of a Ready sandbox, with its guest agent. A
// sandbox re-adopted after a restart is Ready as recorded while the agent
// reconnects to its QMP and guest agent; ready waits for that.
func (m *Manager) ready(ctx context.Context, id string) (*run, *client.Client, error) {
	b, err := m.lookup(id)
	if err != nil {
		return nil, nil, err
	}
	for {
		m.mu.Lock()
		st, r := b.rec.Sandbox.State, b.cur
		m.mu.Unlock()
		if st != StateReady || r == nil {
			return nil, nil, fmt.Errorf("sandbox %q is %s, not Ready: %w", id, st, errdefs.ErrFailedPrecondition)
		}
		select {
		case <-r.connected:
			r.mu.Lock()
			agent, q := r.agent, r.qmp
			r.mu.Unlock()
			if agent != nil && q != nil {
				return r, agent, nil
			}
			// The run ended; the loop reports the state it left.
			<-r.ended
		case <-r.ended:
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("sandbox %q: still reconnecting: %w", id, ctx.Err())
		}
	}
}

// Exec runs a process in the guest.
func (m *Manager) Exec(ctx context.Context, id string, req ExecRequest) (ExitStatus, error) {
	if err := ValidateID(id); err != nil {
		return ExitStatus{}, fmt.Errorf("exec: %w", err)
	}
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return ExitStatus{}, fmt.Errorf("exec in %q: empty command: %w", id, errdefs.ErrInvalidArgument)
	}
	_, agent, err := m.ready(ctx, id)
	if err != nil {
		return ExitStatus{}, err
	}
	st, err := agent.Exec(ctx, execSpec(req), req.Stdin, req.Stdout, req.Stderr)
	if err != nil {
		return ExitStatus{}, fmt.Errorf("exec in %q: %w", id, err)
	}
	return ExitStatus{Code: st.Code, Signal: st.Signal}, nil
}
