package sandbox

// The warm pool (--fast-start pool): per size class, VMs booted ahead,
// idle, with no tenant and nothing shared with any other VM. A create of
// that size takes one: its directory, cgroup and record take the
// sandbox's name, its tap (held down in the agent's namespace until now)
// moves into the pod's namespace, the guest agent gives the guest its
// identity and the pod's MAC, addresses and routes, its disks are
// hot-plugged; the pool refills in the background. A pool VM has run
// nothing but the guest agent: each tenant gets a VM no one else used.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/nodeagent/vmtemplate"
)

// FastStartPool is the warm pool's Config.FastStart.
const FastStartPool = "pool"

// StartPool is Sandbox.Start of a sandbox taken from the warm pool.
const StartPool = "pool"

// poolPrefix starts a pool VM's ID; no sandbox ID can (IDs start with a
// letter or digit), so the API never finds one.
const poolPrefix = "_pool-"

// warmMAC is the MAC a pool VM's card gets when it is warmed up (the
// guest agent's network code runs once before a tenant waits for it).
const warmMAC = "02:00:5e:10:00:02"

// poolTBSizeMiB is a pool VM's translation cache under TCG: large enough
// that the code its boot and warm-up translated is still translated when
// a tenant takes it (with 12 MiB, a flush made the hand-over 130 ms
// instead of 18 ms; the cost is about 28 MiB more per VM).
const poolTBSizeMiB = 64

func isPoolID(id string) bool { return strings.HasPrefix(id, poolPrefix) }

// validPoolID checks a pool VM's ID as bootPoolVM makes them:
// "_pool-<class>-<8 hex>".
func validPoolID(id string) bool {
	rest, ok := strings.CutPrefix(id, poolPrefix)
	class, hex, ok2 := strings.Cut(rest, "-")
	if _, err := vmtemplate.ParseClass(class); !ok || !ok2 || err != nil {
		return false
	}
	return isHex(hex, 8)
}

// validPoolTap checks a held tap's name as bootPoolVM makes them.
func validPoolTap(name string) bool {
	rest, ok := strings.CutPrefix(name, "np")
	return ok && isHex(rest, 8)
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// pool holds the idle pool VMs by class.
type pool struct {
	size    int
	classes []vmtemplate.Class
	// ctx ends the boots in flight when the agent shuts down; wg waits
	// for them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	idle    map[vmtemplate.Class][]*box
	keys    map[*box]string // what each idle VM was booted from (vmtemplate.Fingerprint)
	booting map[vmtemplate.Class]int
	failed  map[vmtemplate.Class]string // the last boot failure
	fails   map[vmtemplate.Class]int    // boots failed in a row
	closed  bool
}

// PoolInfo describes one class of the warm pool.
type PoolInfo struct {
	Class   vmtemplate.Class
	Ready   int
	Booting int
	Error   string
}

// Pool describes the warm pool (none unless fast start is "pool").
func (m *Manager) Pool() []PoolInfo {
	p := m.pool
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []PoolInfo
	for _, c := range p.classes {
		out = append(out, PoolInfo{Class: c, Ready: len(p.idle[c]), Booting: p.booting[c], Error: p.failed[c]})
	}
	return out
}

// fillPool boots the VMs the pool lacks.
func (m *Manager) fillPool() {
	p := m.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	for _, c := range p.classes {
		for n := len(p.idle[c]) + p.booting[c]; n < p.size; n++ {
			p.booting[c]++
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				m.bootPoolVM(c)
			}()
		}
	}
}

// bootPoolVM boots one pool VM of class c and, once warmed up, makes it
// idle in the pool.
func (m *Manager) bootPoolVM(c vmtemplate.Class) {
	p := m.pool
	key, _ := m.poolKey(c)
	id := poolPrefix + c.String() + "-" + randomHex(4)
	spec := Spec{ID: id, VCPUs: c.VCPUs, MemoryMiB: c.MemoryMiB}.WithDefaults()
	dir := filepath.Join(m.dir, id)
	b := &box{dir: dir, changed: make(chan struct{}), rec: record{
		Sandbox: Sandbox{Spec: spec, State: StateCreating, WorkDir: dir, CreatedAt: time.Now().UTC(), Accel: m.accel},
		Pool:    true, PoolTap: "np" + randomHex(4)}}
	err := func() error {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := writeRecord(dir, b.rec, true); err != nil {
			os.RemoveAll(dir)
			return err
		}
		r := newRun(b)
		b.cur = r
		m.mu.Lock()
		m.boxes[id] = b
		m.mu.Unlock()
		ctx, cancel := context.WithTimeout(p.ctx, m.cfg.BootTimeout)
		r.cancel = cancel
		m.boot(ctx, b, r)
		if st, _ := m.state(b); st != StateReady {
			reason := m.record(b).Sandbox.Reason
			m.removePoolVM(b)
			return fmt.Errorf("pool vm boot: %s", reason)
		}
		return m.warmUp(p.ctx, b, r)
	}()
	p.mu.Lock()
	p.booting[c]--
	if err == nil && !p.closed {
		p.idle[c] = append(p.idle[c], b)
		p.keys[b] = key
		delete(p.failed, c)
		delete(p.fails, c)
	}
	closed := p.closed
	var retry time.Duration
	if err != nil {
		p.failed[c] = err.Error()
		p.fails[c]++
		retry = poolRetry(p.fails[c])
	}
	p.mu.Unlock()
	switch {
	case err != nil && closed:
	case err != nil:
		m.log.Error("warm pool vm failed; retrying", "class", c.String(), "in", retry.String(), "error", err)
		time.AfterFunc(retry, m.fillPool)
	case closed:
		m.removePoolVM(b)
	default:
		m.log.Info("warm pool vm ready", "class", c.String(), "vm", id)
	}
}

// poolRetry is the wait before booting again after n failed boots in a
// row: 5 s, doubling, at most 5 minutes (a broken guest kernel must not
// keep the node's CPUs booting).
func poolRetry(n int) time.Duration {
	d := 5 * time.Second
	for i := 1; i < n && d < 5*time.Minute; i++ {
		d *= 2
	}
	return min(d, 5*time.Minute)
}

// warmUp runs the guest agent's identity and network code once, so that
// its first run for a tenant is not its first run at all (under TCG, code
// run the first time is translated first).
func (m *Manager) warmUp(ctx context.Context, b *box, r *run) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	r.mu.Lock()
	agent := r.agent
	r.mu.Unlock()
	err := agent.ConfigureNetwork(ctx, agentproto.NetConfig{Interfaces: []agentproto.Interface{
		{MAC: warmMAC, FromMAC: qemu.PlaceholderMAC, Name: podIfname}}})
	if err != nil {
		m.removePoolVM(b)
		return fmt.Errorf("warm up: %w", err)
	}
	m.update(b, func(rec *record) { rec.GuestMAC = warmMAC })
	return nil
}

// removePoolVM ends a pool VM and removes it.
func (m *Manager) removePoolVM(b *box) {
	m.mu.Lock()
	r := b.cur
	m.mu.Unlock()
	if r != nil {
		r.mu.Lock()
		r.stopping = true
		proc := r.proc
		r.mu.Unlock()
		if proc != nil {
			proc.signal(syscall.SIGKILL)
		} else {
			m.finish(b, r, "")
		}
		select {
		case <-r.ended:
		case <-time.After(undoTimeout):
		}
	}
	rec := m.record(b)
	_ = m.release(rec, nil)
	m.mu.Lock()
	b.wmu.Lock()
	os.RemoveAll(b.dir) // what stays behind, the next agent removes
	b.deleted = true
	b.wmu.Unlock()
	if m.boxes[rec.Sandbox.Spec.ID] == b {
		delete(m.boxes, rec.Sandbox.Spec.ID)
	}
	m.mu.Unlock()
}

// takePooledLocked takes an idle pool VM for spec, or nil; m.mu is held.
// Only sandboxes under the agent's own cgroup parent are served (the pool
// VM's cgroup is renamed, not moved).
func (m *Manager) takePooledLocked(spec Spec) *box {
	p := m.pool
	if p == nil {
		return nil
	}
	if spec.CgroupParent != "" {
		m.log.Info("sandbox boots cold", "sandbox", spec.ID, "why", "the pool serves sandboxes under the agent's own cgroup parent only")
		return nil
	}
	c := vmtemplate.Class{VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle[c]) == 0 {
		why := "no idle pool vm of this size (refilling)"
		if !slices.Contains(p.classes, c) {
			why = "no pool for this size class"
		}
		m.log.Info("sandbox boots cold", "sandbox", spec.ID, "class", c.String(), "why", why)
		return nil
	}
	// Booted from the guest files and QEMU in place now? After an upgrade
	// the class's idle VMs are ended and the pool refilled.
	if key, err := m.poolKey(c); err != nil || key != p.keys[p.idle[c][0]] {
		stale := p.idle[c]
		p.idle[c] = nil
		for _, b := range stale {
			delete(p.keys, b)
			go m.removePoolVM(b)
		}
		go m.fillPool()
		m.log.Info("sandbox boots cold", "sandbox", spec.ID, "class", c.String(),
			"why", "the pool's VMs were booted from other guest files or QEMU; refilling")
		return nil
	}
	b := p.idle[c][0]
	p.idle[c] = p.idle[c][1:]
	delete(p.keys, b)
	return b
}

// poolKey is the fingerprint of what a pool VM of class c boots from now.
func (m *Manager) poolKey(c vmtemplate.Class) (string, error) {
	return vmtemplate.Fingerprint(c, m.accel, m.cfg.KernelArgs, m.cfg.QEMU, m.cfg.Kernel, m.cfg.Initrd)
}

// adoptPooledLocked makes pool VM b the sandbox of spec: its directory,
// record and place in the manager; m.mu is held. The rest (cgroup,
// network, identity, disks) is handOver's, in the background.
func (m *Manager) adoptPooledLocked(b *box, spec Spec, keys map[string]string) (poolID string, err error) {
	poolID = b.rec.Sandbox.Spec.ID
	dir := filepath.Join(m.dir, spec.ID)
	if err := m.moveDirLocked(b, dir); err != nil {
		return "", fmt.Errorf("take pool vm %s: %w", poolID, err)
	}
	delete(m.boxes, poolID)
	b.keys = keys
	b.rec.Pool = false
	b.rec.QEMUName = qemu.ProcessName(poolID)
	b.rec.Sandbox.Spec = spec
	b.rec.Sandbox.State = StateCreating
	b.rec.Sandbox.WorkDir = dir
	b.rec.Sandbox.CreatedAt = time.Now().UTC()
	b.rec.Sandbox.ReadyAt = time.Time{}
	b.rec.Sandbox.Disks = append([]Disk(nil), spec.Disks...)
	b.rec.Sandbox.Start = StartPool
	m.boxes[spec.ID] = b
	m.persistLocked(b)
	close(b.changed)
	b.changed = make(chan struct{})
	m.publishLocked(Event{Type: EventState, Sandbox: b.snapshot()})
	return poolID, nil
}

// handOver finishes making a pool VM the sandbox b now is.
func (m *Manager) handOver(ctx context.Context, b *box, r *run, poolID string) {
	start := time.Now()
	bt := &booting{b: b, r: r, spec: m.record(b).Sandbox.Spec, configure: true, proc: r.proc, fast: true}
	steps := []step{
		{"cgroup", func(ctx context.Context, bt *booting) error { return m.renameCgroup(bt, poolID) }},
		{"pod network", m.stepMoveTap},
		{"identity", m.stepIdentity},
		{"configure guest", m.stepConfigureGuest},
		{"disks", m.plugBootDisks},
		{"guest devices", m.waitGuestDevices},
		{"ready", m.stepReady},
	}
	err := runSteps(ctx, bt, steps)
	go m.fillPool()
	if err != nil {
		m.bootFailed(b, r, "start from the pool", err)
		return
	}
	m.log.Info("sandbox ready", "sandbox", bt.spec.ID, "bootSeconds", time.Since(start).Seconds(),
		"start", StartPool, "steps", strings.Join(bt.timings, " "))
}

// renameCgroup gives the pool VM's cgroup the sandbox's name and limits.
func (m *Manager) renameCgroup(bt *booting, poolID string) error {
	if m.cfg.Cgroups == nil {
		return nil
	}
	name := qemu.ProcessName(bt.spec.ID)
	g, err := m.cfg.Cgroups.Rename(qemu.ProcessName(poolID), name)
	if err != nil {
		return err
	}
	m.update(bt.b, func(rec *record) { rec.Cgroup, rec.Sandbox.Cgroup = name, g.Path() })
	bt.r.mu.Lock()
	bt.r.group = g
	bt.r.mu.Unlock()
	res := m.resources(bt.spec)
	if err := g.Update(res); err != nil {
		return err
	}
	m.update(bt.b, func(rec *record) { rec.Sandbox.Resources = res })
	return nil
}

// stepMoveTap hands the pod's network to the pool VM: its tap moves into
// the pod's namespace and is plugged there as a boot's would be.
func (m *Manager) stepMoveTap(ctx context.Context, bt *booting) error {
	if bt.spec.NetNS == "" {
		return nil // the held tap stays down in the agent's namespace
	}
	cfg, err := podnet.Inspect(bt.spec.NetNS, podIfname, tapName)
	if err != nil {
		return err
	}
	m.update(bt.b, func(rec *record) { rec.Net = &cfg })
	if err := podnet.MoveTap(m.record(bt.b).poolTap(), bt.spec.NetNS, cfg); err != nil {
		return err
	}
	m.update(bt.b, func(rec *record) { rec.PoolTap = "" })
	return podnet.Resume(bt.spec.NetNS, cfg)
}

// plugBootDisks hot-plugs a sandbox's boot disks into its running VM (a
// pool VM's or a template's clone).
func (m *Manager) plugBootDisks(ctx context.Context, bt *booting) error {
	bt.r.mu.Lock()
	q := bt.r.qmp
	bt.r.mu.Unlock()
	confined := m.record(bt.b).UID != 0
	for _, d := range bt.spec.Disks {
		bd, err := m.blockDevice(bt.b.dir, d, bt.b.keys[d.ID], true)
		if err != nil {
			return err
		}
		if err := m.plugDisk(ctx, bt.r, q, bd, d, confined); err != nil {
			return fmt.Errorf("disk %s: %w", d.ID, err)
		}
	}
	return nil
}

// discardPoolVM ends a pool VM an earlier agent left (its QEMU, if it
// still runs, its held tap, its directory); its cgroup goes with the
// orphans.
func (m *Manager) discardPoolVM(b *box) {
	rec := b.rec
	if proc, err := adoptProcess(rec.Sandbox.PID, rec.qemuName()); err == nil {
		proc.signal(syscall.SIGKILL)
		select {
		case <-proc.done:
		case <-time.After(undoTimeout):
		}
	}
	for _, pid := range findByName(rec.qemuName(), b.dir) {
		if o, err := adoptProcess(pid, rec.qemuName()); err == nil {
			o.signal(syscall.SIGKILL)
		}
	}
	if problems := m.release(rec, nil); len(problems) > 0 {
		m.log.Warn("cleanup of an old pool vm incomplete", "vm", rec.Sandbox.Spec.ID, "problems", strings.Join(problems, "; "))
	}
	os.RemoveAll(b.dir)
	m.log.Info("removed an idle pool vm of an earlier agent", "vm", rec.Sandbox.Spec.ID)
}
