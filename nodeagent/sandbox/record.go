package sandbox

// The sandbox record: what the agent keeps per sandbox on disk and in
// memory, and the accessors that read and change it under Manager.mu.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/atomicfile"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// record is what the agent keeps on disk per sandbox, in
// <state>/sandboxes/<id>/sandbox.json: enough for a new agent to re-adopt
// a running VM or clean up after a dead one.
type record struct {
	Sandbox Sandbox `json:"sandbox"`
	// Net is the pod network as it was before the VM took it over; it is
	// given back to eth0 when the sandbox ends.
	Net *podnet.Config `json:"net,omitempty"`
	// Cgroup is the name of the sandbox's cgroup, if any, under
	// CgroupParent (empty: the agent's parent).
	Cgroup       string `json:"cgroup,omitempty"`
	CgroupParent string `json:"cgroupParent,omitempty"`
	// UID is the unprivileged user (and group) a confined QEMU runs as.
	UID int `json:"uid,omitempty"`
	// PendingDisk is a disk being hot-plugged: recorded before QEMU is
	// told of it, so that a crash halfway lets the next agent reconcile the
	// record with QEMU's block list (stepReconcileDisks).
	PendingDisk *Disk `json:"pendingDisk,omitempty"`
	// Pool marks a warm pool VM, not a sandbox yet (pool.go); PoolTap is
	// its tap while held in the agent's namespace.
	Pool    bool   `json:"pool,omitempty"`
	PoolTap string `json:"poolTap,omitempty"`
	// QEMUName is QEMU's -name when it is not qemu.ProcessName of the ID
	// (a sandbox taken from the pool keeps its VM's).
	QEMUName string `json:"qemuName,omitempty"`
	// GuestMAC is the MAC the guest's card has until the guest agent
	// gives it the pod's (a template's clone, a pool VM).
	GuestMAC string `json:"guestMac,omitempty"`
}

// qemuName is the name on QEMU's command line, the marker re-adoption
// looks for on a pid's command line (and kills by, for a pool VM). A
// record may be old or tampered with: a recorded name counts only if it is
// a pool VM's (the one name a sandbox keeps from elsewhere).
func (r record) qemuName() string {
	if id, ok := strings.CutPrefix(r.QEMUName, qemu.ProcessName("")); ok && validPoolID(id) {
		return r.QEMUName
	}
	return qemu.ProcessName(r.Sandbox.Spec.ID)
}

// poolTap is the record's held tap, if it names one the agent could have
// made ("np" and 8 hex digits): only that is deleted from the agent's
// namespace.
func (r record) poolTap() string {
	if validPoolTap(r.PoolTap) {
		return r.PoolTap
	}
	return ""
}

const recordFile = "sandbox.json"

// writeRecord replaces dir/sandbox.json atomically and durably, or (not
// durable) only atomically.
func writeRecord(dir string, r record, durable bool) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	write := atomicfile.Write
	if !durable {
		write = atomicfile.WriteVolatile
	}
	if err := write(filepath.Join(dir, recordFile), b, 0o600); err != nil {
		return fmt.Errorf("write sandbox record: %w", err)
	}
	return nil
}

func readRecord(dir string) (record, error) {
	var r record
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("read %s: %w", filepath.Join(dir, recordFile), err)
	}
	return r, nil
}

// box is one sandbox. op serializes Create, Stop, Delete and disk changes;
// rec and cur are guarded by Manager.mu.
type box struct {
	op      sync.Mutex
	dir     string
	rec     record
	cur     *run          // the QEMU run, nil when none
	changed chan struct{} // closed and replaced at each state change
	deleted bool
	// keys are the cephx keys that came with the spec's RBD disks, by disk
	// ID: held in memory for the boot, never in the record.
	keys map[string]string
	// edits counts the record's changes; written is the count the file
	// on disk holds (updateVolatile never puts back an older one).
	edits, written uint64
}

// setState moves b to state with reason, persists it and tells watchers.
func (m *Manager) setState(b *box, state State, reason string, edit func(*record)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b.rec.Sandbox.State = state
	b.rec.Sandbox.Reason = reason
	if edit != nil {
		edit(&b.rec)
	}
	m.persistLocked(b)
	close(b.changed)
	b.changed = make(chan struct{})
	m.publishLocked(Event{Type: EventState, Sandbox: b.snapshot()})
}

// update edits b's record and persists it without a state change.
func (m *Manager) update(b *box, edit func(*record)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	edit(&b.rec)
	m.persistLocked(b)
}

// updateVolatile is update for what a reboot loses anyway and the
// kernel or QEMU holds meanwhile (the limits of a running sandbox): the
// record is written in the background, atomically, without the fsyncs,
// and outside m.mu but for the rename (a call right after this one does
// not wait for the file). A write renames only if no newer state was
// written meanwhile, so the file never goes back to an older state.
func (m *Manager) updateVolatile(b *box, edit func(*record)) {
	m.mu.Lock()
	edit(&b.rec)
	b.edits++
	m.mu.Unlock()
	go func() {
		m.mu.Lock()
		if b.deleted {
			m.mu.Unlock()
			return
		}
		seq, dir := b.edits, b.dir
		data, err := json.MarshalIndent(b.rec, "", "  ")
		m.mu.Unlock()
		if err != nil {
			return
		}
		f, err := os.CreateTemp(dir, "."+recordFile+".tmp-*")
		if err != nil {
			return
		}
		tmp := f.Name()
		defer os.Remove(tmp) // a no-op after the rename
		_, err = f.Write(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Chmod(tmp, 0o600)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if err != nil || b.deleted || b.written >= seq || b.dir != dir {
			return
		}
		if err := os.Rename(tmp, filepath.Join(dir, recordFile)); err != nil {
			m.log.Error("cannot persist sandbox state", "sandbox", b.rec.Sandbox.Spec.ID, "error", err)
			return
		}
		b.written = seq
	}()
}

func (m *Manager) persistLocked(b *box) { m.persistLockedAs(b, true) }

func (m *Manager) persistLockedAs(b *box, durable bool) {
	if b.deleted {
		return
	}
	b.edits++
	if err := writeRecord(b.dir, b.rec, durable); err != nil {
		m.log.Error("cannot persist sandbox state", "sandbox", b.rec.Sandbox.Spec.ID, "error", err)
		return
	}
	b.written = b.edits
}

// record returns a copy of b's record.
func (m *Manager) record(b *box) record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return b.rec
}

func (b *box) snapshot() Sandbox {
	s := b.rec.Sandbox
	s.Disks = append([]Disk(nil), s.Disks...)
	s.Addresses = append([]string(nil), s.Addresses...)
	return s
}

func (m *Manager) state(b *box) (State, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return b.rec.Sandbox.State, b.changed
}

// lookup finds a sandbox by ID; a malformed ID is InvalidArgument.
func (m *Manager) lookup(id string) (*box, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boxes[id]
	if !ok {
		return nil, fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	return b, nil
}

// withoutKeys returns disks with their cephx keys removed, and the keys by
// disk ID.
func withoutKeys(disks []Disk) ([]Disk, map[string]string) {
	keys := map[string]string{}
	out := make([]Disk, len(disks))
	for i, d := range disks {
		if d.RBD != nil && d.RBD.Key != "" {
			keys[d.ID] = d.RBD.Key
			rbd := *d.RBD
			rbd.Key = ""
			d.RBD = &rbd
		}
		out[i] = d
	}
	return out, keys
}
