package sandbox

// A sandbox's resources: its cgroup limits (defaults, the spec's, live
// updates), its disks' QoS inside QEMU, what the kernel and QEMU account
// for it, and the OOM kills in its cgroup.

import (
	"context"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// DefaultPids is a sandbox's default pids limit: QEMU's threads (vCPUs,
// IO, RCU) and the helpers it may start, with room.
const DefaultPids = 1024

// maxQoS is QEMU's largest throttle value.
const maxQoS = 1_000_000_000_000_000

// Validate checks the QoS values QEMU would refuse (InvalidArgument).
func (q DiskQoS) Validate() error {
	for name, v := range map[string]uint64{"read bps": q.ReadBps, "write bps": q.WriteBps, "read iops": q.ReadIOPS, "write iops": q.WriteIOPS} {
		if v > maxQoS {
			return invalid("qos %s %d: at most %d", name, v, uint64(maxQoS))
		}
	}
	return nil
}

func (q DiskQoS) limits() qemu.IOLimits {
	return qemu.IOLimits{ReadBps: q.ReadBps, WriteBps: q.WriteBps, ReadIOPS: q.ReadIOPS, WriteIOPS: q.WriteIOPS}
}

// resources are the cgroup limits a sandbox starts with: its vCPUs, its
// memory plus QEMU's overhead and DefaultPids, with the spec's over them.
func (m *Manager) resources(spec Spec) cgroup.Resources {
	mem := int64(spec.MemoryMiB+m.cfg.OverheadMiB) << 20
	cpus := float64(spec.VCPUs)
	pids := int64(DefaultPids)
	return cgroup.Resources{CPUs: &cpus, MemoryBytes: &mem, Pids: &pids}.With(spec.Resources)
}

// createGroup and loadGroup reach a sandbox's cgroup under parent, or
// under the agent's parent when it is empty.
func (m *Manager) createGroup(parent, name string, r cgroup.Resources) (cgroup.Group, error) {
	if parent == "" {
		return m.cfg.Cgroups.Create(name, r)
	}
	return m.cfg.Cgroups.CreateIn(parent, name, r)
}

func (m *Manager) loadGroup(parent, name string) (cgroup.Group, error) {
	if parent == "" {
		return m.cfg.Cgroups.Load(name)
	}
	return m.cfg.Cgroups.LoadIn(parent, name)
}

// validCgroupParent checks a spec's cgroup parent: an absolute, clean
// cgroup path below the root, of valid names.
func validCgroupParent(p string) error {
	if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
		return invalid("cgroup parent %q: want an absolute, clean cgroup path below the root, such as /kubepods/burstable/pod<UID>", p)
	}
	for _, el := range strings.Split(p[1:], "/") {
		if err := cgroup.ValidName(el); err != nil {
			return fmt.Errorf("cgroup parent %q: %w", p, err)
		}
	}
	return nil
}

// watchOOM publishes an OOMKill event each time the kernel's OOM killer
// kills in g, until the run ends or the agent lets go of it.
func (m *Manager) watchOOM(b *box, r *run, g cgroup.Group) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-r.ended:
		case <-r.released:
		}
		cancel()
	}()
	ch, err := g.OOMEvents(ctx)
	if err != nil {
		m.log.Warn("cannot watch the sandbox's cgroup for OOM kills", "sandbox", b.rec.Sandbox.Spec.ID, "cgroup", g.Path(), "error", err)
		return
	}
	go func() {
		for range ch {
			m.mu.Lock()
			s := b.snapshot()
			m.publishLocked(Event{Type: EventOOMKill, Sandbox: s})
			m.mu.Unlock()
			m.log.Warn("the OOM killer killed in a sandbox's cgroup", "sandbox", s.Spec.ID, "cgroup", g.Path())
		}
	}()
}

// UpdateResources changes a Ready sandbox's cgroup limits (the fields r
// sets; the others stay) and the QoS of the disks qos names, all or
// none: a failure part way puts back what was changed.
func (m *Manager) UpdateResources(ctx context.Context, id string, r cgroup.Resources, qos map[string]DiskQoS) (Sandbox, error) {
	if err := ValidateID(id); err != nil {
		return Sandbox{}, err
	}
	if err := r.Validate(); err != nil {
		return Sandbox{}, fmt.Errorf("update sandbox %q: %w", id, err)
	}
	ids := make([]string, 0, len(qos))
	for d, q := range qos {
		if err := ValidateDiskID(d); err != nil {
			return Sandbox{}, fmt.Errorf("update sandbox %q: %w", id, err)
		}
		if err := q.Validate(); err != nil {
			return Sandbox{}, fmt.Errorf("update sandbox %q: disk %s: %w", id, d, err)
		}
		ids = append(ids, d)
	}
	sort.Strings(ids)
	b, err := m.lookup(id)
	if err != nil {
		return Sandbox{}, err
	}
	b.op.Lock()
	defer b.op.Unlock()
	run, _, err := m.ready(ctx, id)
	if err != nil {
		return Sandbox{}, err
	}
	rec := m.record(b)
	old := map[string]DiskQoS{}
	for _, d := range ids {
		i := slices.IndexFunc(rec.Sandbox.Disks, func(x Disk) bool { return x.ID == d })
		if i < 0 {
			return Sandbox{}, fmt.Errorf("update sandbox %q: disk %q: %w", id, d, errdefs.ErrNotFound)
		}
		old[d] = rec.Sandbox.Disks[i].QoS
	}
	run.mu.Lock()
	g, q := run.group, run.qmp
	run.mu.Unlock()
	if !r.IsZero() {
		if g == nil {
			return Sandbox{}, fmt.Errorf("update sandbox %q: it has no cgroup (the agent runs without --cgroup-parent): %w", id, errdefs.ErrFailedPrecondition)
		}
		if err := g.Update(r); err != nil {
			return Sandbox{}, fmt.Errorf("update sandbox %q: %w", id, err)
		}
	}
	for i, d := range ids {
		if err := q.SetIOThrottle(ctx, d, qos[d].limits()); err != nil {
			undo, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
			for _, done := range ids[:i] {
				_ = q.SetIOThrottle(undo, done, old[done].limits())
			}
			cancel()
			if !r.IsZero() {
				if uerr := g.Update(rec.Sandbox.Resources.Undo(r)); uerr != nil {
					m.log.Error("cannot put back a sandbox's cgroup limits", "sandbox", id, "error", uerr)
				}
			}
			return Sandbox{}, fmt.Errorf("update sandbox %q: %w", id, err)
		}
	}
	m.updateVolatile(b, func(rec *record) {
		rec.Sandbox.Resources = rec.Sandbox.Resources.With(r)
		for i := range rec.Sandbox.Disks {
			if v, ok := qos[rec.Sandbox.Disks[i].ID]; ok {
				rec.Sandbox.Disks[i].QoS = v
			}
		}
	})
	m.log.Info("sandbox resources updated", "sandbox", id, "disks", len(ids))
	return m.Get(id)
}

// Stats is what the kernel accounts for a sandbox's cgroup, and QEMU's
// counters per disk.
type Stats struct {
	cgroup.Stats
	// Cgroup is the cgroup's path.
	Cgroup string
	// Disks are QEMU's counters, by disk ID.
	Disks map[string]BlockStats
	// NetRxBytes and NetTxBytes are what the VM received and sent through
	// its tap (0 without a pod network, or when the pod took the tap away).
	NetRxBytes, NetTxBytes uint64
}

// Stats reads a running sandbox's accounting.
func (m *Manager) Stats(ctx context.Context, id string) (Stats, error) {
	b, err := m.lookup(id)
	if err != nil {
		return Stats{}, err
	}
	m.mu.Lock()
	r, st := b.cur, b.rec.Sandbox.State
	hasDisks := len(b.rec.Sandbox.Disks) > 0
	net, netns := b.rec.Net, b.rec.Sandbox.Spec.NetNS
	m.mu.Unlock()
	if r == nil {
		return Stats{}, fmt.Errorf("sandbox %q is %s: no QEMU runs: %w", id, st, errdefs.ErrFailedPrecondition)
	}
	r.mu.Lock()
	g, q := r.group, r.qmp
	r.mu.Unlock()
	// QEMU and the kernel are asked at once: the QMP round trip waits for
	// QEMU's main loop, the cgroup files for nothing but the reads. A VM
	// without disks has no counters to ask QEMU for.
	var disks map[string]BlockStats
	var qerr error
	done := make(chan struct{})
	if q != nil && hasDisks {
		go func() {
			defer close(done)
			disks, qerr = r.disks.get(ctx, q)
		}()
	} else {
		close(done)
	}
	var out Stats
	if g != nil {
		s, err := g.Stats()
		if err != nil {
			<-done
			return Stats{}, fmt.Errorf("stats of sandbox %q: %w", id, err)
		}
		out.Stats, out.Cgroup = s, g.Path()
	}
	if net != nil {
		// The tap's receive counter counts what QEMU wrote: the VM's sends.
		// The tap lives in the pod's namespace, where the pod may rename or
		// delete it: then the network counters stay 0, and the rest of the
		// stats are still answered.
		if rx, tx, err := podnet.TapStats(netns, *net); err == nil {
			out.NetTxBytes, out.NetRxBytes = rx, tx
		} else {
			m.log.Debug("no network counters for a sandbox", "sandbox", id, "error", err)
		}
	}
	<-done
	if qerr != nil {
		return Stats{}, fmt.Errorf("stats of sandbox %q: %w", id, qerr)
	}
	out.Disks = disks
	return out, nil
}

// OwnedCgroups names the cgroups under the agent's parent that sandboxes
// hold or may hold again (their records name them): the rest there is
// orphaned.
func (m *Manager) OwnedCgroups() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for id, b := range m.boxes {
		if b.rec.CgroupParent != "" {
			continue
		}
		if b.rec.Cgroup != "" {
			out = append(out, b.rec.Cgroup)
		}
		// A boot records the name before making the cgroup; a sandbox
		// still being adopted may make it again.
		out = append(out, qemu.ProcessName(id))
	}
	sort.Strings(out)
	return out
}

// PublishGroupOOM tells the watchers that the OOM killer killed in host
// process group name (nodeagent/groups has no event stream of its own).
func (m *Manager) PublishGroupOOM(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.publishLocked(Event{Type: EventOOMKill, Group: name})
}

// BlockStats is QEMU's counters of one disk.
type BlockStats = qemu.BlockStats
