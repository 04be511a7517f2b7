package cephfs

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Snapshot is a subvolume snapshot.
type Snapshot struct {
	SnapshotRef
	// SizeBytes is the source's quota when it was taken.
	SizeBytes uint64
	CreatedAt time.Time
}

// CreateSnapshot snapshots subvolume sub for request name, or finds the
// snapshot made for that name before (created false); the same name for
// another subvolume is AlreadyExists.
func (c *Conn) CreateSnapshot(ctx context.Context, fs FS, group, name, sub string) (Snapshot, bool, error) {
	j, err := c.journal(fs, group)
	if err != nil {
		return Snapshot{}, false, err
	}
	defer j.close()
	rec, found, err := j.lookupSnapshot(name)
	if err != nil {
		return Snapshot{}, false, err
	}
	if found && rec.Subvolume != sub {
		return Snapshot{}, false, fmt.Errorf("snapshot %q exists of another volume (%s): %w", name, rec.Subvolume, errdefs.ErrAlreadyExists)
	}
	if !found {
		src, err := c.GetVolume(fs.Name, group, sub)
		if err != nil {
			return Snapshot{}, false, err
		}
		rec = snapshotRecord{Subvolume: sub, Snap: SnapName(newUUID()), SizeBytes: src.SizeBytes}
		// The journal before the snapshot, as for volumes.
		if err := j.reserveSnapshot(name, rec); err != nil {
			return Snapshot{}, false, err
		}
	}
	err = c.fsa.CreateSubVolumeSnapshot(fs.Name, group, sub, rec.Snap)
	if err != nil && !isErrno(err, syscall.EEXIST) {
		return Snapshot{}, false, fmt.Errorf("snapshot %s: %w", sub, classify(err))
	}
	s := Snapshot{SnapshotRef: SnapshotRef{Subvolume: sub, Snap: rec.Snap}, SizeBytes: rec.SizeBytes, CreatedAt: time.Now()}
	if info, err := c.fsa.SubVolumeSnapshotInfo(fs.Name, group, sub, rec.Snap); err == nil {
		s.CreatedAt = info.CreatedAt.Time
	}
	return s, !found, nil
}

// GetSnapshot describes a snapshot the driver made (NotFound otherwise).
func (c *Conn) GetSnapshot(fs FS, group, sub, snap string) (Snapshot, error) {
	j, err := c.journal(fs, group)
	if err != nil {
		return Snapshot{}, err
	}
	defer j.close()
	rec, found, err := j.snapshotRecordOf(sub, snap)
	if err != nil {
		return Snapshot{}, err
	}
	if !found {
		return Snapshot{}, fmt.Errorf("snapshot %s@%s: %w", sub, snap, errdefs.ErrNotFound)
	}
	return Snapshot{SnapshotRef: SnapshotRef{Subvolume: sub, Snap: snap}, SizeBytes: rec.SizeBytes}, nil
}

// DeleteSnapshot removes a snapshot and its journal entries; one that
// clones are still being made from is FailedPrecondition. Removing the
// last snapshot of a volume deleted with its snapshots retained removes
// what was left of that volume. A missing snapshot is deleted already.
func (c *Conn) DeleteSnapshot(ctx context.Context, fs FS, group, sub, snap string) error {
	j, err := c.journal(fs, group)
	if err != nil {
		return err
	}
	defer j.close()
	info, err := c.fsa.SubVolumeSnapshotInfo(fs.Name, group, sub, snap)
	switch {
	case isErrno(err, syscall.ENOENT):
		return j.releaseSnapshot(sub, snap)
	case err == nil && info.HasPendingClones == "yes":
		return fmt.Errorf("snapshot %s@%s has clones in progress: %w", sub, snap, errdefs.ErrFailedPrecondition)
	case err == nil && info.Protected == "yes":
		if err := c.fsa.UnprotectSubVolumeSnapshot(fs.Name, group, sub, snap); err != nil {
			return fmt.Errorf("unprotect snapshot %s@%s: %w", sub, snap, classify(err))
		}
	}
	// (Info can fail on a volume deleted with its snapshots retained:
	// removal is tried all the same.)
	err = c.fsa.ForceRemoveSubVolumeSnapshot(fs.Name, group, sub, snap)
	if isErrno(err, syscall.EAGAIN) {
		return fmt.Errorf("snapshot %s@%s has clones in progress: %w: %w", sub, snap, err, errdefs.ErrFailedPrecondition)
	}
	if err != nil && !isErrno(err, syscall.ENOENT) {
		return fmt.Errorf("remove snapshot %s@%s: %w", sub, snap, classify(err))
	}
	return j.releaseSnapshot(sub, snap)
}
