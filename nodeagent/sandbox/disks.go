package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/cephkey"

	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// blockDevice describes d for QEMU. For an RBD image it writes the cephx
// key where QEMU's secret object reads it (dir/<disk>.key, mode 0600), so
// the key is never on a command line.
func (m *Manager) blockDevice(dir string, d Disk) (qemu.BlockDevice, error) {
	bd := qemu.BlockDevice{ID: d.ID, Path: d.Path, ReadOnly: d.ReadOnly}
	if d.RBD == nil {
		if _, err := os.Stat(d.Path); err != nil {
			return bd, fmt.Errorf("disk %s: %w", d.ID, errdefs.ErrInvalidArgument)
		}
		return bd, nil
	}
	c := m.cfg.Ceph
	if c.Conf == "" || c.User == "" || c.Keyring == "" {
		return bd, fmt.Errorf("disk %s: RBD disks need the agent's Ceph configuration (--ceph-conf, --ceph-user, --ceph-keyring): %w",
			d.ID, errdefs.ErrFailedPrecondition)
	}
	key, err := cephkey.Read(c.Keyring, c.User)
	if err != nil {
		return bd, fmt.Errorf("disk %s: %w", d.ID, err)
	}
	keyFile := filepath.Join(dir, d.ID+".key")
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		return bd, fmt.Errorf("disk %s: %w", d.ID, err)
	}
	bd.RBD = &qemu.RBD{Pool: d.RBD.Pool, Image: d.RBD.Image, Conf: c.Conf, User: c.User, KeyFile: keyFile}
	return bd, nil
}

// AttachDisk hot-plugs a disk into a Ready sandbox; see Service.
func (m *Manager) AttachDisk(ctx context.Context, id string, d Disk) (Sandbox, error) {
	if err := ValidateID(id); err != nil {
		return Sandbox{}, err
	}
	if err := d.Validate(); err != nil {
		return Sandbox{}, fmt.Errorf("attach disk to %q: %w", id, err)
	}
	if err := checkDiskPath(m.cfg.StateDir, d); err != nil {
		return Sandbox{}, fmt.Errorf("attach disk to %q: %w", id, err)
	}
	b, err := m.lookup(id)
	if err != nil {
		return Sandbox{}, err
	}
	b.op.Lock()
	defer b.op.Unlock()
	for _, have := range b.snapshotDisks(m) {
		if have.ID == d.ID {
			if have.Equal(d) {
				return m.Get(id)
			}
			return Sandbox{}, fmt.Errorf("sandbox %q has another disk %q: %w", id, d.ID, errdefs.ErrAlreadyExists)
		}
	}
	r, _, err := m.ready(ctx, id)
	if err != nil {
		return Sandbox{}, err
	}
	bd, err := m.blockDevice(b.dir, d)
	if err != nil {
		return Sandbox{}, err
	}
	r.mu.Lock()
	q := r.qmp
	r.mu.Unlock()
	var undo []func()
	fail := func(err error) (Sandbox, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		if bd.RBD != nil {
			os.Remove(bd.RBD.KeyFile)
		}
		return Sandbox{}, fmt.Errorf("attach disk %s to %q: %w", d.ID, id, err)
	}
	cleanup := context.WithoutCancel(ctx)
	if s := bd.Secret(); s != nil {
		if err := q.Execute(ctx, "object-add", s, nil); err != nil {
			return fail(err)
		}
		undo = append(undo, func() { _ = q.Execute(cleanup, "object-del", map[string]any{"id": qemu.SecretID(d.ID)}, nil) })
	}
	if err := q.Execute(ctx, "blockdev-add", bd.Blockdev(), nil); err != nil {
		return fail(err)
	}
	undo = append(undo, func() {
		_ = q.Execute(cleanup, "blockdev-del", map[string]any{"node-name": qemu.NodeName(d.ID)}, nil)
	})
	if err := q.Execute(ctx, "device_add", bd.Device(), nil); err != nil {
		return fail(err)
	}
	m.mu.Lock()
	b.rec.Sandbox.Disks = append(b.rec.Sandbox.Disks, d)
	m.persistLocked(b)
	dd := d
	m.publishLocked(Event{Type: EventDiskAttached, Sandbox: b.snapshot(), Disk: &dd})
	m.mu.Unlock()
	m.log.Info("disk attached", "sandbox", id, "disk", d.ID)
	return m.Get(id)
}

// DetachDisk unplugs a disk from a Ready sandbox; see Service.
func (m *Manager) DetachDisk(ctx context.Context, id, diskID string) (Sandbox, error) {
	if err := ValidateID(id); err != nil {
		return Sandbox{}, err
	}
	if err := ValidateDiskID(diskID); err != nil {
		return Sandbox{}, fmt.Errorf("detach disk from %q: %w", id, err)
	}
	b, err := m.lookup(id)
	if err != nil {
		return Sandbox{}, err
	}
	b.op.Lock()
	defer b.op.Unlock()
	var disk *Disk
	for _, have := range b.snapshotDisks(m) {
		if have.ID == diskID {
			disk = &have
		}
	}
	if disk == nil {
		return m.Get(id) // not attached: nothing to do
	}
	r, _, err := m.ready(ctx, id)
	if err != nil {
		return Sandbox{}, err
	}
	dev := qemu.DeviceID(diskID)
	gone := make(chan struct{})
	r.mu.Lock()
	q := r.qmp
	r.waiters[dev] = gone
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.waiters, dev)
		r.mu.Unlock()
	}()
	err = q.Execute(ctx, "device_del", map[string]any{"id": dev}, nil)
	if err != nil && !strings.Contains(err.Error(), "not found") {
		return Sandbox{}, fmt.Errorf("detach disk %s from %q: %w", diskID, id, err)
	}
	if err == nil {
		// The guest acknowledges the unplug (ACPI); until then the device
		// stays, and the block node with it.
		select {
		case <-gone:
		case <-time.After(10 * time.Second):
			return Sandbox{}, fmt.Errorf("detach disk %s from %q: the guest did not release the device in 10s: %w",
				diskID, id, errdefs.ErrUnavailable)
		case <-ctx.Done():
			return Sandbox{}, fmt.Errorf("detach disk %s from %q: %w", diskID, id, ctx.Err())
		}
	}
	if err := q.Execute(ctx, "blockdev-del", map[string]any{"node-name": qemu.NodeName(diskID)}, nil); err != nil &&
		!strings.Contains(err.Error(), "not found") && !strings.Contains(err.Error(), "Cannot find") {
		return Sandbox{}, fmt.Errorf("detach disk %s from %q: %w", diskID, id, err)
	}
	if disk.RBD != nil {
		_ = q.Execute(ctx, "object-del", map[string]any{"id": qemu.SecretID(diskID)}, nil)
		os.Remove(filepath.Join(b.dir, diskID+".key"))
	}
	m.mu.Lock()
	var kept []Disk
	for _, have := range b.rec.Sandbox.Disks {
		if have.ID != diskID {
			kept = append(kept, have)
		}
	}
	b.rec.Sandbox.Disks = kept
	m.persistLocked(b)
	m.publishLocked(Event{Type: EventDiskDetached, Sandbox: b.snapshot(), Disk: disk})
	m.mu.Unlock()
	m.log.Info("disk detached", "sandbox", id, "disk", diskID)
	return m.Get(id)
}

func (b *box) snapshotDisks(m *Manager) []Disk {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Disk(nil), b.rec.Sandbox.Disks...)
}
