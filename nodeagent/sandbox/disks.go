package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/cephkey"

	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// blockDevice describes d for QEMU. An RBD image is opened as its own
// cephx user (the disk's, else the agent's --ceph-user) with key (else
// the user's key in --ceph-keyring). At boot the key goes in a 0600 file
// (dir/<disk>.key) that QEMU's secret object reads before it is
// confined; a hot-plug hands it over QMP. It is never on a command line.
func (m *Manager) blockDevice(dir string, d Disk, key string, hotplug bool) (qemu.BlockDevice, error) {
	bd := qemu.BlockDevice{ID: d.ID, Path: d.Path, ReadOnly: d.ReadOnly}
	if d.RBD == nil {
		if _, err := os.Stat(d.Path); err != nil {
			return bd, fmt.Errorf("disk %s: %w", d.ID, errdefs.ErrInvalidArgument)
		}
		return bd, nil
	}
	c := m.cfg.Ceph
	user := d.RBD.User
	if user == "" {
		user = c.User
	}
	switch {
	case c.Conf == "":
		return bd, fmt.Errorf("disk %s: RBD disks need the agent's --ceph-conf: %w", d.ID, errdefs.ErrFailedPrecondition)
	case user == "":
		return bd, fmt.Errorf("disk %s: no cephx user (give one with the disk, or the agent's --ceph-user): %w", d.ID, errdefs.ErrFailedPrecondition)
	case key == "" && c.Keyring == "":
		return bd, fmt.Errorf("disk %s: no key for cephx user %q (give it with the disk, or the agent's --ceph-keyring): %w",
			d.ID, user, errdefs.ErrFailedPrecondition)
	}
	if key == "" {
		k, err := cephkey.Read(c.Keyring, user)
		if err != nil {
			return bd, fmt.Errorf("disk %s: %v: %w", d.ID, err, errdefs.ErrFailedPrecondition)
		}
		key = k
	}
	bd.RBD = &qemu.RBD{Pool: d.RBD.Pool, Image: d.RBD.Image, Conf: c.Conf, User: user}
	if hotplug {
		bd.RBD.Key = key
		if m.cfg.Confine {
			bd.RBD.Conf = "/" + chrootCephConf // QEMU sees its sandbox dir as /
		}
		return bd, nil
	}
	bd.RBD.KeyFile = filepath.Join(dir, d.ID+".key")
	if err := os.WriteFile(bd.RBD.KeyFile, []byte(key), 0o600); err != nil {
		return bd, fmt.Errorf("disk %s: %w", d.ID, err)
	}
	return bd, nil
}

// passFile hands a host file or device to a confined QEMU, which cannot
// open it itself: the agent opens it and adds the descriptor to an fd set
// of QEMU's (named after the disk), whose /dev/fdset/N path QEMU's file
// driver then opens.
func passFile(ctx context.Context, q *qemu.QMP, bd *qemu.BlockDevice) error {
	flags := os.O_RDWR
	if bd.ReadOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(bd.Path, flags, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", bd.Path, err)
	}
	defer f.Close() // QEMU holds its own copy
	if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeDevice != 0 {
		bd.Driver = "host_device"
	}
	var set struct {
		ID int `json:"fdset-id"`
	}
	if err := q.ExecuteWithFile(ctx, "add-fd", map[string]any{"opaque": qemu.NodeName(bd.ID)}, &set, f); err != nil {
		return err
	}
	bd.Path = "/dev/fdset/" + strconv.Itoa(set.ID)
	return nil
}

// releaseFile removes the fd set passFile made for disk id, if any.
func releaseFile(ctx context.Context, q *qemu.QMP, id string) {
	var sets []struct {
		ID  int `json:"fdset-id"`
		FDs []struct {
			Opaque string `json:"opaque"`
		} `json:"fds"`
	}
	if err := q.Execute(ctx, "query-fdsets", nil, &sets); err != nil {
		return
	}
	for _, s := range sets {
		for _, fd := range s.FDs {
			if fd.Opaque == qemu.NodeName(id) {
				_ = q.Execute(ctx, "remove-fd", map[string]any{"fdset-id": s.ID}, nil)
				break
			}
		}
	}
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
	key := ""
	if d.RBD != nil {
		key = d.RBD.Key
		rbd := *d.RBD
		rbd.Key = "" // kept nowhere but in QEMU
		d.RBD = &rbd
	}
	bd, err := m.blockDevice(b.dir, d, key, true)
	if err != nil {
		return Sandbox{}, err
	}
	r.mu.Lock()
	q := r.qmp
	r.mu.Unlock()
	// Recorded before QEMU hears of it: a crash from here on is reconciled
	// with QEMU's block list by the next agent.
	m.update(b, func(rec *record) { dd := d; rec.PendingDisk = &dd })
	// plugDisk undoes its own steps when one fails.
	if err := m.plugDisk(ctx, r, q, bd, d, m.record(b).UID != 0); err != nil {
		m.update(b, func(rec *record) { rec.PendingDisk = nil })
		return Sandbox{}, fmt.Errorf("attach disk %s to %q: %w", d.ID, id, err)
	}
	crashpoint("attach:record")
	m.mu.Lock()
	b.rec.Sandbox.Disks = append(b.rec.Sandbox.Disks, d)
	b.rec.PendingDisk = nil
	m.persistLocked(b)
	dd := d
	m.publishLocked(Event{Type: EventDiskAttached, Sandbox: b.snapshot(), Disk: &dd})
	m.mu.Unlock()
	r.disks.forget()
	m.log.Info("disk attached", "sandbox", id, "disk", d.ID)
	return m.Get(id)
}

// plugDisk hot-plugs bd (disk d) into a running QEMU: its cephx key, its
// file (a confined QEMU can no longer open paths), its block node, its
// virtio-blk device and its QoS. On a failure it undoes what it did.
func (m *Manager) plugDisk(ctx context.Context, r *run, q *qemu.QMP, bd qemu.BlockDevice, d Disk, confined bool) error {
	// Every undo has a deadline, whatever the caller's context.
	var undo []func(context.Context)
	fail := func(err error) error {
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i](cleanup)
		}
		return err
	}
	crashpoint("attach:object-add")
	if s := bd.Secret(); s != nil {
		if err := q.Execute(ctx, "object-add", s, nil); err != nil {
			return fail(err)
		}
		undo = append(undo, func(c context.Context) {
			_ = q.Execute(c, "object-del", map[string]any{"id": qemu.SecretID(d.ID)}, nil)
		})
	}
	if bd.RBD == nil && confined {
		if err := passFile(ctx, q, &bd); err != nil {
			return fail(err)
		}
		undo = append(undo, func(c context.Context) { releaseFile(c, q, d.ID) })
	}
	crashpoint("attach:blockdev-add")
	if err := q.Execute(ctx, "blockdev-add", bd.Blockdev(), nil); err != nil {
		return fail(err)
	}
	undo = append(undo, func(c context.Context) {
		_ = q.Execute(c, "blockdev-del", map[string]any{"node-name": qemu.NodeName(d.ID)}, nil)
	})
	crashpoint("attach:device_add")
	if err := q.Execute(ctx, "device_add", bd.Device(), nil); err != nil {
		return fail(err)
	}
	// From here a failure unplugs the device first: its block node is
	// busy until the guest lets go of it.
	undo = append(undo, func(c context.Context) { _ = r.unplug(c, q, d.ID) })
	if d.QoS != (DiskQoS{}) {
		if err := q.SetIOThrottle(ctx, d.ID, d.QoS.limits()); err != nil {
			return fail(err)
		}
	}
	return nil
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
	r.mu.Lock()
	q := r.qmp
	r.mu.Unlock()
	if err := r.unplug(ctx, q, diskID); err != nil {
		return Sandbox{}, fmt.Errorf("detach disk %s from %q: %w", diskID, id, err)
	}
	if err := q.Execute(ctx, "blockdev-del", map[string]any{"node-name": qemu.NodeName(diskID)}, nil); err != nil &&
		!strings.Contains(err.Error(), "not found") && !strings.Contains(err.Error(), "Cannot find") {
		return Sandbox{}, fmt.Errorf("detach disk %s from %q: %w", diskID, id, err)
	}
	if disk.RBD != nil {
		_ = q.Execute(ctx, "object-del", map[string]any{"id": qemu.SecretID(diskID)}, nil)
		os.Remove(filepath.Join(b.dir, diskID+".key"))
	} else {
		releaseFile(ctx, q, diskID)
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
	r.disks.forget()
	m.log.Info("disk detached", "sandbox", id, "disk", diskID)
	return m.Get(id)
}

func (b *box) snapshotDisks(m *Manager) []Disk {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Disk(nil), b.rec.Sandbox.Disks...)
}

// undoTimeout bounds each undo of a failed operation.
const undoTimeout = 5 * time.Second

// stepReconcileDisks makes a re-adopted sandbox's record and QEMU's block
// list agree after a crash: a disk being hot-plugged (PendingDisk) is
// recorded when QEMU has its device, removed from QEMU when it has only its
// block node, and dropped otherwise; a recorded disk QEMU no longer has (a
// detach that finished) leaves the record; a block node of ours that the
// record does not know is removed.
func (m *Manager) stepReconcileDisks(ctx context.Context, bt *booting) error {
	bt.r.mu.Lock()
	q := bt.r.qmp
	bt.r.mu.Unlock()
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := q.Execute(ctx, "query-named-block-nodes", nil, &nodes); err != nil {
		return err
	}
	var devs []struct {
		Name string `json:"name"`
	}
	if err := q.Execute(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"}, &devs); err != nil {
		return err
	}
	hasNode, hasDev := map[string]bool{}, map[string]bool{}
	for _, n := range nodes {
		hasNode[n.NodeName] = true
	}
	for _, d := range devs {
		hasDev[d.Name] = true
	}
	rec := m.record(bt.b)
	m.log.Debug("reconciling disks with qemu", "sandbox", bt.spec.ID, "nodes", hasNode, "devices", hasDev,
		"recorded", len(rec.Sandbox.Disks), "pending", rec.PendingDisk != nil)
	var keep []Disk
	known := map[string]bool{}
	remove := func(d Disk) {
		_ = q.Execute(ctx, "blockdev-del", map[string]any{"node-name": qemu.NodeName(d.ID)}, nil)
		if d.RBD != nil {
			_ = q.Execute(ctx, "object-del", map[string]any{"id": qemu.SecretID(d.ID)}, nil)
			os.Remove(filepath.Join(bt.b.dir, d.ID+".key"))
		} else {
			releaseFile(ctx, q, d.ID)
		}
	}
	for _, d := range rec.Sandbox.Disks {
		switch {
		case hasNode[qemu.NodeName(d.ID)] && hasDev[qemu.DeviceID(d.ID)]:
			keep = append(keep, d)
			known[qemu.NodeName(d.ID)] = true
		case hasNode[qemu.NodeName(d.ID)]: // unplugged; its node was not deleted yet
			remove(d)
			m.log.Info("reconciled a detach that an earlier agent did not finish", "sandbox", bt.spec.ID, "disk", d.ID)
		default:
			m.log.Info("dropped a disk qemu no longer has", "sandbox", bt.spec.ID, "disk", d.ID)
		}
	}
	if p := rec.PendingDisk; p != nil {
		switch {
		case hasNode[qemu.NodeName(p.ID)] && hasDev[qemu.DeviceID(p.ID)]:
			keep = append(keep, *p)
			known[qemu.NodeName(p.ID)] = true
			m.log.Info("recorded a disk an earlier agent hot-plugged", "sandbox", bt.spec.ID, "disk", p.ID)
		default:
			remove(*p)
			known[qemu.NodeName(p.ID)] = true
			m.log.Info("undid a hot-plug an earlier agent did not finish", "sandbox", bt.spec.ID, "disk", p.ID)
		}
	}
	for name := range hasNode {
		if strings.HasPrefix(name, qemu.NodeName("")) && !known[name] {
			id := strings.TrimPrefix(name, qemu.NodeName(""))
			if hasDev[qemu.DeviceID(id)] {
				_ = q.Execute(ctx, "device_del", map[string]any{"id": qemu.DeviceID(id)}, nil)
			}
			_ = q.Execute(ctx, "blockdev-del", map[string]any{"node-name": name}, nil)
			m.log.Warn("removed a block node the record does not know", "sandbox", bt.spec.ID, "node", name)
		}
	}
	m.update(bt.b, func(rec *record) {
		rec.Sandbox.Disks = keep
		rec.PendingDisk = nil
	})
	return nil
}

// unplug removes disk id's virtio-blk device and waits until the guest
// has released it (ACPI: until then the device stays, and its block node
// with it). A device that is not there is unplugged already.
func (r *run) unplug(ctx context.Context, q *qemu.QMP, id string) error {
	dev := qemu.DeviceID(id)
	gone := make(chan struct{})
	r.mu.Lock()
	r.waiters[dev] = gone
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.waiters, dev)
		r.mu.Unlock()
	}()
	err := q.Execute(ctx, "device_del", map[string]any{"id": dev}, nil)
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			return nil
		}
		return err
	}
	select {
	case <-gone:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("the guest did not release the device in 10s: %w", errdefs.ErrUnavailable)
	case <-ctx.Done():
		return ctx.Err()
	}
}
