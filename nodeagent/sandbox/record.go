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
	"time"

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
// rec and cur are guarded by Manager.mu. The record file is written under
// wmu (taken after Manager.mu, never before it), and dir, deleted and
// written change only with both held.
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
	flushing       bool // a volatile write runs (flushVolatile)
	wmu            sync.Mutex
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
// and outside m.mu (a call right after this one does not wait for the
// file: replacing a file on ext4 starts its writeback, 1-2 ms, which
// delayed the calls beside it). One writer per sandbox at a time, after
// volatileDelay: the edits made meanwhile are written together. A write
// renames only if no newer state was written meanwhile, so the file never
// goes back to an older state.
func (m *Manager) updateVolatile(b *box, edit func(*record)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	edit(&b.rec)
	b.edits++
	if !b.flushing {
		b.flushing = true
		time.AfterFunc(volatileDelay, func() { m.flushVolatile(b) })
	}
}

// volatileDelay is how long a volatile edit waits for the ones after it
// before its write: a burst of updates is written once. The agent's
// shutdown writes what waits (flushVolatileAll).
var volatileDelay = 50 * time.Millisecond

// flushVolatileAll writes now the records whose volatile edits wait.
func (m *Manager) flushVolatileAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, b := range m.boxes {
		if !b.deleted && b.written < b.edits {
			m.persistLockedAs(b, false)
		}
	}
}

// flushVolatile writes b's record until the file holds its last edit.
func (m *Manager) flushVolatile(b *box) {
	for {
		m.mu.Lock()
		if b.deleted || b.written >= b.edits {
			b.flushing = false
			m.mu.Unlock()
			return
		}
		seq, dir, id := b.edits, b.dir, b.rec.Sandbox.Spec.ID
		data, err := json.MarshalIndent(b.rec, "", "  ")
		m.mu.Unlock()
		if err == nil {
			err = m.writeVolatile(b, dir, seq, data)
		}
		if err != nil {
			m.log.Error("cannot persist sandbox state", "sandbox", id, "error", err)
			m.mu.Lock()
			b.flushing = false // the next edit tries again
			m.mu.Unlock()
			return
		}
	}
}

// writeVolatile replaces dir's record with data (the record at edit seq)
// under b.wmu, unless b moved, was deleted or has a newer file already.
func (m *Manager) writeVolatile(b *box, dir string, seq uint64, data []byte) error {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	if b.deleted || b.written >= seq || b.dir != dir {
		return nil
	}
	if err := atomicfile.WriteVolatile(filepath.Join(dir, recordFile), data, 0o600); err != nil {
		return err
	}
	b.written = seq
	return nil
}

func (m *Manager) persistLocked(b *box) { m.persistLockedAs(b, true) }

// persistLockedAs writes b's record now; m.mu is held.
func (m *Manager) persistLockedAs(b *box, durable bool) {
	if b.deleted {
		return
	}
	b.edits++
	b.wmu.Lock()
	defer b.wmu.Unlock()
	if err := writeRecord(b.dir, b.rec, durable); err != nil {
		m.log.Error("cannot persist sandbox state", "sandbox", b.rec.Sandbox.Spec.ID, "error", err)
		return
	}
	b.written = b.edits
}

// moveDirLocked renames b's directory to dir; m.mu is held.
func (m *Manager) moveDirLocked(b *box, dir string) error {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	if err := os.Rename(b.dir, dir); err != nil {
		return err
	}
	b.dir = dir
	return nil
}

// removeDirLocked removes b's directory and marks b deleted; m.mu is held.
func (m *Manager) removeDirLocked(b *box) error {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	if err := os.RemoveAll(b.dir); err != nil {
		return err
	}
	b.deleted = true
	return nil
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
