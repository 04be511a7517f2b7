package rbd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Snapshots are RBD snapshots of the source image, journaled in the same
// omap object as volumes (journal.go). The journal is written before the
// snapshot is taken, so a crash in between leaves a name that the next
// CreateSnapshot completes instead of a second snapshot.
//
// Snapshots are never protected: clones use clone v2 (the cluster must
// have require-min-compat-client mimic or newer), so a snapshot that still
// has clones can be removed; librbd moves it to the trash snapshot
// namespace and removes it itself when its last clone is flattened or
// removed.

// SnapshotSpec is what CreateSnapshot asks for.
type SnapshotSpec struct {
	Name        string // the CSI snapshot name (idempotency key)
	Pool        string
	SourceImage string // the image to snapshot, in Pool
}

// Snapshot is a snapshot that exists.
type Snapshot struct {
	Name        string // the CSI snapshot name ("" when not journaled)
	Pool        string
	SourceImage string
	SnapName    string // the RBD snapshot name on SourceImage
	SizeBytes   uint64 // the image size when the snapshot was taken
	CreatedAt   time.Time
	ReadyToUse  bool // RBD snapshots are usable as soon as they exist
}

// CreateSnapshot takes the snapshot named spec.Name of spec.SourceImage,
// or returns it when it exists (the second result reports whether it was
// taken now). The same name for another source image is ErrAlreadyExists;
// a missing source image or pool is ErrNotFound.
func (c *Conn) CreateSnapshot(ctx context.Context, spec SnapshotSpec) (Snapshot, bool, error) {
	if spec.Name == "" || spec.Pool == "" || spec.SourceImage == "" {
		return Snapshot{}, false, fmt.Errorf("create snapshot: name, pool and source image are required: %w", errdefs.ErrInvalidArgument)
	}
	io, err := c.ioctx(spec.Pool)
	if err != nil {
		return Snapshot{}, false, err
	}
	defer io.Destroy()
	j := journal{io}
	image, snap, found, err := j.lookupSnapshot(spec.Name)
	if err != nil {
		return Snapshot{}, false, err
	}
	if found {
		if image != spec.SourceImage {
			return Snapshot{}, false, fmt.Errorf("snapshot %q exists as a snapshot of %s/%s, not of %s: %w",
				spec.Name, spec.Pool, image, spec.SourceImage, errdefs.ErrAlreadyExists)
		}
		got, err := c.getSnapshot(io, spec.Pool, image, snap)
		if err == nil {
			got.Name = spec.Name
			return got, false, nil
		}
		if !errors.Is(err, errdefs.ErrNotFound) {
			return Snapshot{}, false, err
		}
		// Journaled but never taken: finish the job with the same name
		// (a missing source image fails below with ErrNotFound).
	} else {
		// Check the source before journaling anything.
		img, err := librbd.OpenImageReadOnly(io, spec.SourceImage, librbd.NoSnapshot)
		if errors.Is(err, librbd.ErrNotFound) {
			return Snapshot{}, false, fmt.Errorf("source image %s/%s: %w", spec.Pool, spec.SourceImage, errdefs.ErrNotFound)
		}
		if err != nil {
			return Snapshot{}, false, fmt.Errorf("open %s/%s: %w", spec.Pool, spec.SourceImage, err)
		}
		_ = img.Close()
		snap = newSnapName()
		if err := j.reserveSnapshot(spec.Name, spec.SourceImage, snap); err != nil {
			return Snapshot{}, false, err
		}
	}
	img, err := librbd.OpenImage(io, spec.SourceImage, librbd.NoSnapshot)
	if errors.Is(err, librbd.ErrNotFound) {
		return Snapshot{}, false, fmt.Errorf("source image %s/%s: %w", spec.Pool, spec.SourceImage, errdefs.ErrNotFound)
	}
	if err != nil {
		return Snapshot{}, false, fmt.Errorf("open %s/%s: %w", spec.Pool, spec.SourceImage, err)
	}
	_, err = img.CreateSnapshot(snap)
	_ = img.Close()
	if err != nil && !errors.Is(err, rados.ErrObjectExists) {
		return Snapshot{}, false, fmt.Errorf("snapshot %s/%s@%s: %w", spec.Pool, spec.SourceImage, snap, err)
	}
	got, err := c.getSnapshot(io, spec.Pool, spec.SourceImage, snap)
	if err != nil {
		return Snapshot{}, false, err
	}
	got.Name = spec.Name
	return got, true, nil
}

// getSnapshot describes image@snap; the CSI name is left empty.
func (c *Conn) getSnapshot(io *rados.IOContext, pool, image, snap string) (Snapshot, error) {
	img, err := librbd.OpenImageReadOnly(io, image, snap)
	if errors.Is(err, librbd.ErrNotFound) {
		return Snapshot{}, fmt.Errorf("snapshot %s/%s@%s: %w", pool, image, snap, errdefs.ErrNotFound)
	}
	if err != nil {
		return Snapshot{}, fmt.Errorf("open %s/%s@%s: %w", pool, image, snap, err)
	}
	defer img.Close()
	size, err := img.GetSize()
	if err != nil {
		return Snapshot{}, fmt.Errorf("size of %s@%s: %w", image, snap, err)
	}
	id, err := img.GetSnapID(snap)
	if err != nil {
		return Snapshot{}, fmt.Errorf("id of %s@%s: %w", image, snap, err)
	}
	ts, err := img.GetSnapTimestamp(id)
	if err != nil {
		return Snapshot{}, fmt.Errorf("timestamp of %s@%s: %w", image, snap, err)
	}
	return Snapshot{
		Pool: pool, SourceImage: image, SnapName: snap, SizeBytes: size,
		CreatedAt: time.Unix(ts.Sec, ts.Nsec), ReadyToUse: true,
	}, nil
}

// GetSnapshot returns the snapshot image@snap in pool, with its CSI name
// when it is journaled. A missing pool, image or snapshot is ErrNotFound.
func (c *Conn) GetSnapshot(ctx context.Context, pool, image, snap string) (Snapshot, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return Snapshot{}, err
	}
	defer io.Destroy()
	s, err := c.getSnapshot(io, pool, image, snap)
	if err != nil {
		return Snapshot{}, err
	}
	name, _, err := journal{io}.snapshotName(image, snap)
	if err != nil {
		return Snapshot{}, err
	}
	s.Name = name
	return s, nil
}

// DeleteSnapshot removes image@snap and its journal entries. Deleting a
// snapshot (or image, or pool) that does not exist is not an error. A
// snapshot that has clones is removed too: with clone v2 librbd moves it
// to the trash snapshot namespace, where it stays, invisible, until its
// last clone is flattened or deleted, so the clones keep reading their
// data.
func (c *Conn) DeleteSnapshot(ctx context.Context, pool, image, snap string) error {
	if image == "" || snap == "" {
		return fmt.Errorf("delete snapshot: image and snapshot are required: %w", errdefs.ErrInvalidArgument)
	}
	io, err := c.ioctx(pool)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer io.Destroy()
	img, err := librbd.OpenImage(io, image, librbd.NoSnapshot)
	switch {
	case errors.Is(err, librbd.ErrNotFound):
	case err != nil:
		return fmt.Errorf("open %s/%s: %w", pool, image, err)
	default:
		err := img.GetSnapshot(snap).Remove()
		_ = img.Close()
		if err != nil && !errors.Is(err, librbd.ErrNotFound) {
			return fmt.Errorf("remove snapshot %s/%s@%s: %w", pool, image, snap, err)
		}
	}
	return journal{io}.releaseSnapshot(image, snap)
}

// ListSnapshots returns the journaled snapshots in pool that exist, sorted
// by CSI name. Names journaled whose snapshot was never taken (a crash in
// CreateSnapshot) are left out.
func (c *Conn) ListSnapshots(ctx context.Context, pool string) ([]Snapshot, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return nil, err
	}
	defer io.Destroy()
	entries, err := journal{io}.snapshots()
	if err != nil {
		return nil, err
	}
	var out []Snapshot
	for _, e := range entries {
		s, err := c.getSnapshot(io, pool, e.image, e.snap)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		s.Name = e.name
		out = append(out, s)
	}
	return out, nil
}
