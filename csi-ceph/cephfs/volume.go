package cephfs

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/ceph/go-ceph/cephfs/admin"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// QuotaUnit is what a volume's quota is rounded up to: the clients report
// statfs in 4 MiB blocks (CephFS's default object size), so a quota of
// whole blocks is exactly what df shows in the volume.
const QuotaUnit = 4 << 20

// RoundSize rounds a requested size up to whole QuotaUnits.
func RoundSize(b uint64) uint64 { return (b + QuotaUnit - 1) / QuotaUnit * QuotaUnit }

// ErrCloneInProgress means a clone is still being copied: the create is
// to be asked again later (Aborted); the reservation stays.
var ErrCloneInProgress = fmt.Errorf("clone in progress: %w", errdefs.ErrAborted)

// SnapshotRef names a subvolume snapshot.
type SnapshotRef struct{ Subvolume, Snap string }

// VolumeSpec is what CreateVolume makes: an empty subvolume, or a clone of
// a snapshot or of another subvolume, in Group of FS.
type VolumeSpec struct {
	FS    FS
	Group string
	// Name is the request name (the journal's key).
	Name string
	// SizeBytes is the quota (whole QuotaUnits); 0 with a source: the
	// source's.
	SizeBytes    uint64
	Pool         string // data pool layout; "": the file system's default
	FromSnapshot *SnapshotRef
	FromVolume   string
}

func (s VolumeSpec) source() string {
	switch {
	case s.FromSnapshot != nil:
		return "snapshot:" + s.FromSnapshot.Subvolume + "@" + s.FromSnapshot.Snap
	case s.FromVolume != "":
		return "volume:" + s.FromVolume
	}
	return ""
}

// Volume is a subvolume.
type Volume struct {
	Subvolume string
	// Path is the subvolume's directory from the root of the file system
	// (what ceph-fuse -r and the kernel mount take).
	Path      string
	SizeBytes uint64
}

// CreateVolume makes the volume of spec, or finds the one made for its
// name before: the same request answers the same volume (created false);
// the same name with another size, pool or source is AlreadyExists. A
// clone is asynchronous: until Ceph has copied it, CreateVolume answers
// ErrCloneInProgress and keeps the reservation; a failed clone is purged
// and its reservation released, so that the next call starts again.
func (c *Conn) CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, bool, error) {
	if err := c.ensureGroup(spec.FS.Name, spec.Group); err != nil {
		return Volume{}, false, err
	}
	j, err := c.journal(spec.FS, spec.Group)
	if err != nil {
		return Volume{}, false, err
	}
	defer j.close()
	want := volumeRecord{RequestBytes: spec.SizeBytes, Pool: spec.Pool, Source: spec.source()}
	rec, found, err := j.lookupVolume(spec.Name)
	if err != nil {
		return Volume{}, false, err
	}
	if found {
		if rec.RequestBytes != want.RequestBytes || rec.Pool != want.Pool || rec.Source != want.Source {
			return Volume{}, false, fmt.Errorf("volume %q exists as %s with size %d, pool %q and source %q: %w",
				spec.Name, rec.Subvolume, rec.RequestBytes, rec.Pool, rec.Source, errdefs.ErrAlreadyExists)
		}
	} else {
		want.Subvolume = SubvolumeName(newUUID())
		// The journal before the subvolume: a crash in between leaves a
		// reservation that the retried create completes.
		if err := j.reserveVolume(spec.Name, want); err != nil {
			return Volume{}, false, err
		}
		rec = want
	}
	if spec.FromSnapshot == nil && spec.FromVolume == "" {
		if found { // made before: answer it as it is now (its quota may have grown since)
			v, err := c.GetVolume(spec.FS.Name, spec.Group, rec.Subvolume)
			if !errors.Is(err, errdefs.ErrNotFound) {
				return v, false, err
			}
		}
		v, err := c.ensureSubvolume(spec, rec.Subvolume)
		return v, !found, err
	}
	v, err := c.ensureClone(j, spec, rec.Subvolume)
	return v, !found, err
}

// ensureSubvolume creates the subvolume (a reservation whose subvolume
// was not made yet, or is new) and returns it. Its path comes from the
// listing of the subvolume's directory through the MDS (subvolpath.go): the mgr's volumes
// commands queue behind each other, so a create costs one of them; only
// where that cannot be read is the mgr asked (getpath).
func (c *Conn) ensureSubvolume(spec VolumeSpec, sub string) (Volume, error) {
	opts := &admin.SubVolumeOptions{Size: admin.ByteCount(spec.SizeBytes), PoolLayout: spec.Pool}
	if err := c.fsa.CreateSubVolume(spec.FS.Name, spec.Group, sub, opts); err != nil {
		return Volume{}, fmt.Errorf("create subvolume %s: %w", sub, classify(err))
	}
	if p, ok := c.pathFromListing(spec.FS.Name, spec.Group, sub); ok {
		return Volume{Subvolume: sub, Path: p, SizeBytes: spec.SizeBytes}, nil
	}
	p, err := c.SubvolumePath(spec.FS.Name, spec.Group, sub)
	if err != nil {
		return Volume{}, err
	}
	return Volume{Subvolume: sub, Path: p, SizeBytes: spec.SizeBytes}, nil
}

// ensureClone starts the clone of spec into sub, or looks at the one
// started before, and finishes it once Ceph has copied it.
func (c *Conn) ensureClone(j *journal, spec VolumeSpec, sub string) (Volume, error) {
	fs, group := spec.FS.Name, spec.Group
	st, err := c.fsa.CloneStatus(fs, group, sub)
	if isErrno(err, syscall.ENOENT) {
		if err := c.startClone(spec, sub); err != nil {
			return Volume{}, err
		}
		st, err = c.fsa.CloneStatus(fs, group, sub)
	}
	if err != nil {
		return Volume{}, fmt.Errorf("clone status of %s: %w", sub, classify(err))
	}
	switch st.State {
	case admin.ClonePending, admin.CloneInProgress:
		return Volume{}, fmt.Errorf("clone %s is %s (%s): %w", sub, st.State, st.ProgressReport.PercentageCloned, ErrCloneInProgress)
	case admin.CloneComplete:
	default: // failed, canceled: purge it; the next call starts again
		why := string(st.State)
		if f := st.GetFailure(); f != nil {
			why = fmt.Sprintf("%s: errno %s: %s", st.State, f.Errno, f.ErrStr)
		}
		if err := c.purge(j, spec, sub); err != nil {
			return Volume{}, fmt.Errorf("clone %s %s; purge it: %w", sub, why, err)
		}
		return Volume{}, fmt.Errorf("clone %s of %s %s (purged; retry)", sub, spec.source(), why)
	}
	if spec.FromVolume != "" {
		if err := c.removeSnap(fs, group, spec.FromVolume, tmpSnapName(sub)); err != nil {
			return Volume{}, err
		}
	}
	size, err := c.sourceSize(j, spec)
	if err != nil {
		return Volume{}, err
	}
	if spec.SizeBytes > size {
		size = spec.SizeBytes
	}
	if _, err := c.fsa.ResizeSubVolume(fs, group, sub, admin.ByteCount(size), false); err != nil {
		return Volume{}, fmt.Errorf("set the quota of clone %s: %w", sub, classify(err))
	}
	return c.GetVolume(fs, group, sub)
}

// startClone starts Ceph's copy of the source into sub: from the
// snapshot, or from a temporary snapshot of the source volume.
func (c *Conn) startClone(spec VolumeSpec, sub string) error {
	fs, group := spec.FS.Name, spec.Group
	src := spec.FromSnapshot
	if src == nil {
		src = &SnapshotRef{Subvolume: spec.FromVolume, Snap: tmpSnapName(sub)}
		err := c.fsa.CreateSubVolumeSnapshot(fs, group, src.Subvolume, src.Snap)
		if err != nil && !isErrno(err, syscall.EEXIST) {
			return fmt.Errorf("snapshot volume %s to clone it: %w", src.Subvolume, classify(err))
		}
	}
	opts := &admin.CloneOptions{TargetGroup: group, PoolLayout: spec.Pool}
	err := c.fsa.CloneSubVolumeSnapshot(fs, group, src.Subvolume, src.Snap, sub, opts)
	var np admin.NotProtectedError
	if errors.As(err, &np) { // clusters that still need protected snapshots
		if err := c.fsa.ProtectSubVolumeSnapshot(fs, group, src.Subvolume, src.Snap); err != nil {
			return fmt.Errorf("protect snapshot %s@%s: %w", src.Subvolume, src.Snap, classify(err))
		}
		err = c.fsa.CloneSubVolumeSnapshot(fs, group, src.Subvolume, src.Snap, sub, opts)
	}
	if err != nil && !isErrno(err, syscall.EEXIST) {
		return fmt.Errorf("clone %s@%s to %s: %w", src.Subvolume, src.Snap, sub, classify(err))
	}
	return nil
}

// sourceSize is the quota of a clone's source: the snapshot's, as the
// journal recorded it, or the source volume's.
func (c *Conn) sourceSize(j *journal, spec VolumeSpec) (uint64, error) {
	if s := spec.FromSnapshot; s != nil {
		rec, found, err := j.snapshotRecordOf(s.Subvolume, s.Snap)
		if err != nil || !found {
			return 0, err
		}
		return rec.SizeBytes, nil
	}
	v, err := c.GetVolume(spec.FS.Name, spec.Group, spec.FromVolume)
	if errors.Is(err, errdefs.ErrNotFound) {
		return 0, nil
	}
	return v.SizeBytes, err
}

// purge removes a failed clone, its temporary snapshot and its
// reservation.
func (c *Conn) purge(j *journal, spec VolumeSpec, sub string) error {
	fs, group := spec.FS.Name, spec.Group
	if err := c.fsa.ForceRemoveSubVolume(fs, group, sub); err != nil && !isErrno(err, syscall.ENOENT) {
		return fmt.Errorf("remove subvolume %s: %w", sub, classify(err))
	}
	if spec.FromVolume != "" {
		if err := c.removeSnap(fs, group, spec.FromVolume, tmpSnapName(sub)); err != nil {
			return err
		}
	}
	return j.releaseVolume(sub)
}

// removeSnap removes a snapshot; a missing one (or subvolume) is gone
// already.
func (c *Conn) removeSnap(fs, group, sub, snap string) error {
	err := c.fsa.ForceRemoveSubVolumeSnapshot(fs, group, sub, snap)
	if err != nil && !isErrno(err, syscall.ENOENT) {
		return fmt.Errorf("remove snapshot %s@%s: %w", sub, snap, classify(err))
	}
	return nil
}

// GetVolume describes a subvolume (NotFound if there is none).
func (c *Conn) GetVolume(fs, group, sub string) (Volume, error) {
	info, err := c.fsa.SubVolumeInfo(fs, group, sub)
	if err != nil {
		return Volume{}, fmt.Errorf("look up subvolume %s: %w", sub, classify(err))
	}
	v := Volume{Subvolume: sub, Path: info.Path}
	if q, ok := info.BytesQuota.(admin.ByteCount); ok {
		v.SizeBytes = uint64(q)
	}
	return v, nil
}

// SubvolumePath is the path of a subvolume from the root of the file
// system.
func (c *Conn) SubvolumePath(fs, group, sub string) (string, error) {
	p, err := c.fsa.SubVolumePath(fs, group, sub)
	if err != nil {
		return "", fmt.Errorf("path of subvolume %s: %w", sub, classify(err))
	}
	return p, nil
}

// DeleteVolume removes a subvolume and releases its journal entries. A
// subvolume with snapshots is removed with retain_snapshots: its
// snapshots stay (volumes can still be restored from them) until the last
// one is deleted, when Ceph removes what is left. A clone still being
// copied is cancelled first. A missing subvolume is deleted already.
func (c *Conn) DeleteVolume(ctx context.Context, fs FS, group, sub string) error {
	j, err := c.journal(fs, group)
	if err != nil {
		return err
	}
	defer j.close()
	if st, err := c.fsa.CloneStatus(fs.Name, group, sub); err == nil &&
		(st.State == admin.ClonePending || st.State == admin.CloneInProgress) {
		if err := c.fsa.CancelClone(fs.Name, group, sub); err != nil && !isErrno(err, syscall.ENOENT) {
			return fmt.Errorf("cancel clone %s: %w", sub, classify(err))
		}
		if err := c.removeTmpSnapOf(j, fs, group, sub); err != nil {
			return err
		}
	}
	err = c.fsa.RemoveSubVolumeWithFlags(fs.Name, group, sub, admin.SubVolRmFlags{Force: true})
	if isErrno(err, syscall.ENOTEMPTY) {
		err = c.fsa.RemoveSubVolumeWithFlags(fs.Name, group, sub, admin.SubVolRmFlags{Force: true, RetainSnapshots: true})
	}
	if err != nil && !isErrno(err, syscall.ENOENT) {
		return fmt.Errorf("remove subvolume %s: %w", sub, classify(err))
	}
	return j.releaseVolume(sub)
}

// removeTmpSnapOf removes the temporary snapshot a clone from a volume
// was being made from.
func (c *Conn) removeTmpSnapOf(j *journal, fs FS, group, sub string) error {
	name, found, err := j.volumeName(sub)
	if err != nil || !found {
		return err
	}
	rec, found, err := j.lookupVolume(name)
	if err != nil || !found {
		return err
	}
	if src, ok := cutSourceVolume(rec.Source); ok {
		return c.removeSnap(fs.Name, group, src, tmpSnapName(sub))
	}
	return nil
}

func cutSourceVolume(source string) (string, bool) {
	const p = "volume:"
	if len(source) > len(p) && source[:len(p)] == p {
		return source[len(p):], true
	}
	return "", false
}

// ExpandVolume raises a subvolume's quota to size (never lowers it) and
// returns the quota; clients see it at once, with no step on the node.
func (c *Conn) ExpandVolume(ctx context.Context, fs, group, sub string, size uint64) (uint64, error) {
	v, err := c.GetVolume(fs, group, sub)
	if err != nil {
		return 0, err
	}
	if v.SizeBytes >= size && v.SizeBytes != 0 {
		return v.SizeBytes, nil
	}
	if _, err := c.fsa.ResizeSubVolume(fs, group, sub, admin.ByteCount(size), true); err != nil {
		return 0, fmt.Errorf("resize subvolume %s: %w", sub, classify(err))
	}
	return size, nil
}
