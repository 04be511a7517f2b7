package rbd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Clone chains: every clone reads through its parents for the data it has
// not written, so long chains are slow and pin their ancestors. A new
// clone whose depth (its number of ancestors) would exceed SoftCloneDepth
// is flattened right away (synchronously: CreateVolumeFrom* then copies
// the whole parent data), so volumes made here are never deeper than
// SoftCloneDepth. A source that is already MaxCloneDepth deep (made
// outside this package) is refused: flatten it first.
const (
	SoftCloneDepth = 4
	MaxCloneDepth  = 8
)

// Image metadata that a clone carries, written right after the clone is
// created:
//
//   - imageNameMeta is its CSI name (plain volumes have only the
//     journal's reverse key, which a clone has too);
//   - cloneSourceMeta is what it was made from and at which size:
//     "<size> <pool>/<image>@<snap>" for a volume from a snapshot,
//     "<size> <pool>/<image>" for a volume from a volume, so that a retry
//     can tell a half-finished clone of the same request from another
//     volume.
const (
	imageNameMeta   = "nodeinfra.csi.name"
	cloneSourceMeta = "nodeinfra.csi.source"
)

// CreateVolumeFromSnapshot creates the volume spec.Name as a clone of the
// snapshot image@snap in pool, or returns it when it exists (the second
// result reports whether it was created now). spec.SizeBytes 0 means the
// snapshot's size; a smaller size than the snapshot's is
// ErrInvalidArgument; a larger one grows the clone. The same name for
// another source or size is ErrAlreadyExists; a missing snapshot is
// ErrNotFound.
func (c *Conn) CreateVolumeFromSnapshot(ctx context.Context, spec VolumeSpec, pool, image, snap string) (Volume, bool, error) {
	if image == "" || snap == "" {
		return Volume{}, false, fmt.Errorf("create volume from snapshot: image and snapshot are required: %w", errdefs.ErrInvalidArgument)
	}
	return c.createClone(ctx, spec, pool, image, snap)
}

// CreateVolumeFromVolume creates the volume spec.Name as a copy of the
// image srcImage in srcPool, or returns it when it exists, like
// CreateVolumeFromSnapshot: it snapshots the source, clones the snapshot
// and removes the snapshot (which, with clone v2, waits in the trash
// snapshot namespace until the clone no longer needs it).
func (c *Conn) CreateVolumeFromVolume(ctx context.Context, spec VolumeSpec, srcPool, srcImage string) (Volume, bool, error) {
	if srcImage == "" {
		return Volume{}, false, fmt.Errorf("create volume from volume: source image is required: %w", errdefs.ErrInvalidArgument)
	}
	return c.createClone(ctx, spec, srcPool, srcImage, "")
}

// createClone clones srcImage@srcSnap, or, when srcSnap is "", a temporary
// snapshot of srcImage.
func (c *Conn) createClone(ctx context.Context, spec VolumeSpec, srcPool, srcImage, srcSnap string) (Volume, bool, error) {
	if spec.Name == "" || spec.Pool == "" || srcPool == "" {
		return Volume{}, false, fmt.Errorf("create volume: name, pool and source pool are required: %w", errdefs.ErrInvalidArgument)
	}
	fs, err := ParseFeatures(spec.Features)
	if err != nil {
		return Volume{}, false, err
	}
	fs |= librbd.FeatureSet(librbd.FeatureLayering) // clones need it
	io, err := c.ioctx(spec.Pool)
	if err != nil {
		return Volume{}, false, err
	}
	defer io.Destroy()
	srcIO := io
	if srcPool != spec.Pool {
		if srcIO, err = c.ioctx(srcPool); err != nil {
			return Volume{}, false, fmt.Errorf("source: %w", err)
		}
		defer srcIO.Destroy()
	}
	source := srcPool + "/" + srcImage
	if srcSnap != "" {
		source += "@" + srcSnap
	}

	j := journal{io}
	image, found, err := j.lookupVolume(spec.Name)
	if err != nil {
		return Volume{}, false, err
	}
	if found {
		img, err := librbd.OpenImage(io, image, librbd.NoSnapshot)
		if err == nil {
			v, err := c.finishClone(ctx, io, srcIO, img, spec, fs, source, srcImage, srcSnap)
			_ = img.Close()
			return v, false, err
		}
		if !errors.Is(err, librbd.ErrNotFound) {
			return Volume{}, false, fmt.Errorf("open %s: %w", image, err)
		}
		// Journaled but never created: finish the job with the same name.
	}

	// The source: its size, and its depth against the hard limit.
	srcSize, err := sourceSize(srcIO, srcPool, srcImage, srcSnap)
	if err != nil {
		return Volume{}, false, err
	}
	size := spec.SizeBytes
	if size == 0 {
		size = srcSize
	}
	if size < srcSize {
		return Volume{}, false, fmt.Errorf("volume %q: %d bytes is smaller than its source %s (%d bytes): %w",
			spec.Name, size, source, srcSize, errdefs.ErrInvalidArgument)
	}
	depth, err := c.CloneDepth(ctx, srcPool, srcImage)
	if err != nil {
		return Volume{}, false, fmt.Errorf("source: %w", err)
	}
	if depth >= MaxCloneDepth {
		return Volume{}, false, fmt.Errorf("source %s is a clone %d deep (the limit is %d): flatten it first: %w",
			source, depth, MaxCloneDepth, errdefs.ErrInvalidArgument)
	}

	if !found {
		image = newImageName()
		if err := j.reserveVolume(spec.Name, image); err != nil {
			return Volume{}, false, err
		}
	}
	snap := srcSnap
	if snap == "" {
		snap = tmpSnapName(image)
		if err := ensureSnapshot(srcIO, srcImage, snap); err != nil {
			return Volume{}, false, fmt.Errorf("snapshot source %s: %w", source, err)
		}
	}
	opts, err := imageOptions(fs, spec.DataPool)
	if err != nil {
		return Volume{}, false, err
	}
	defer opts.Destroy()
	if err := opts.SetUint64(librbd.ImageOptionCloneFormat, 2); err != nil {
		return Volume{}, false, fmt.Errorf("image options: %w", err)
	}
	if err := librbd.CloneImage(srcIO, srcImage, snap, io, image, opts); err != nil {
		if errors.Is(err, librbd.ErrNotFound) {
			err = fmt.Errorf("%w (%v)", errdefs.ErrNotFound, err)
		}
		return Volume{}, false, fmt.Errorf("clone %s/%s@%s to %s/%s: %w", srcPool, srcImage, snap, spec.Pool, image, err)
	}
	img, err := librbd.OpenImage(io, image, librbd.NoSnapshot)
	if err != nil {
		return Volume{}, false, fmt.Errorf("open new image %s: %w", image, err)
	}
	defer img.Close()
	if err := img.SetMetadata(imageNameMeta, spec.Name); err != nil {
		return Volume{}, false, fmt.Errorf("tag image %s: %w", image, err)
	}
	if err := img.SetMetadata(cloneSourceMeta, fmt.Sprintf("%d %s", size, source)); err != nil {
		return Volume{}, false, fmt.Errorf("tag image %s: %w", image, err)
	}
	spec.SizeBytes = size
	v, err := c.finishClone(ctx, io, srcIO, img, spec, fs, source, srcImage, srcSnap)
	return v, true, err
}

// finishClone checks that the existing image img was cloned for the same
// request, and completes what a crash may have left undone: the size, the
// flattening, and the removal of the temporary snapshot.
func (c *Conn) finishClone(ctx context.Context, io, srcIO *rados.IOContext, img *librbd.Image, spec VolumeSpec,
	fs librbd.FeatureSet, source, srcImage, srcSnap string) (Volume, error) {
	image := img.GetName()
	pool := spec.Pool
	size := spec.SizeBytes
	meta, err := img.GetMetadata(cloneSourceMeta)
	switch {
	case err == nil:
		s, src, _ := strings.Cut(meta, " ")
		n, _ := strconv.ParseUint(s, 10, 64)
		if src != source || (size != 0 && n != size) {
			return Volume{}, fmt.Errorf("volume %q exists as %s/%s, a copy of %s with %d bytes: %w",
				spec.Name, pool, image, src, n, errdefs.ErrAlreadyExists)
		}
		size = n
	case errors.Is(err, librbd.ErrNotFound):
		// Cloned, then a crash before tagging: adopt it if its parent is
		// the source.
		p, perr := img.GetParent()
		if perr != nil || !sameParent(p, source, srcImage, srcSnap, image) {
			return Volume{}, fmt.Errorf("volume %q exists as %s/%s, not a copy of %s: %w",
				spec.Name, pool, image, source, errdefs.ErrAlreadyExists)
		}
		if size == 0 {
			if size, err = img.GetSize(); err != nil {
				return Volume{}, fmt.Errorf("size of %s: %w", image, err)
			}
		}
		if err := img.SetMetadata(imageNameMeta, spec.Name); err != nil {
			return Volume{}, fmt.Errorf("tag image %s: %w", image, err)
		}
		if err := img.SetMetadata(cloneSourceMeta, fmt.Sprintf("%d %s", size, source)); err != nil {
			return Volume{}, fmt.Errorf("tag image %s: %w", image, err)
		}
	default:
		return Volume{}, fmt.Errorf("metadata of %s: %w", image, err)
	}
	have, err := img.GetFeatures()
	if err != nil {
		return Volume{}, fmt.Errorf("features of %s: %w", image, err)
	}
	if have&uint64(fs) != uint64(fs) {
		return Volume{}, fmt.Errorf("volume %q exists as %s/%s with features %v: %w",
			spec.Name, pool, image, featureNames(have), errdefs.ErrAlreadyExists)
	}
	if err := c.checkDataPool(img, spec); err != nil {
		return Volume{}, err
	}
	cur, err := img.GetSize()
	if err != nil {
		return Volume{}, fmt.Errorf("size of %s: %w", image, err)
	}
	if cur < size {
		if err := img.Resize(size); err != nil {
			return Volume{}, fmt.Errorf("resize %s/%s to %d: %w", pool, image, size, err)
		}
		cur = size
	}
	if cur != size {
		return Volume{}, fmt.Errorf("volume %q exists as %s/%s with %d bytes: %w", spec.Name, pool, image, cur, errdefs.ErrAlreadyExists)
	}
	depth, err := c.CloneDepth(ctx, pool, image)
	if err != nil {
		return Volume{}, err
	}
	if depth > SoftCloneDepth {
		if err := img.Flatten(); err != nil {
			return Volume{}, fmt.Errorf("flatten %s/%s (a clone %d deep): %w", pool, image, depth, err)
		}
	}
	if srcSnap == "" {
		if err := removeSnapshot(srcIO, srcImage, tmpSnapName(image)); err != nil {
			return Volume{}, fmt.Errorf("remove temporary snapshot of %s: %w", source, err)
		}
	}
	return Volume{Name: spec.Name, Pool: pool, Image: image, SizeBytes: cur}, nil
}

// sameParent reports whether p is the clone source: pool/image@snap, or
// pool/image@csi-tmp-<clone> for a volume from a volume.
func sameParent(p *librbd.ParentInfo, source, srcImage, srcSnap, clone string) bool {
	if srcSnap == "" {
		return p.Image.PoolName+"/"+p.Image.ImageName == source && p.Image.ImageName == srcImage &&
			p.Snap.SnapName == tmpSnapName(clone)
	}
	return p.Image.PoolName+"/"+p.Image.ImageName+"@"+p.Snap.SnapName == source
}

// sourceSize is the size of image@snap, or of image when snap is "".
func sourceSize(io *rados.IOContext, pool, image, snap string) (uint64, error) {
	what := pool + "/" + image
	if snap != "" {
		what += "@" + snap
	} else {
		snap = librbd.NoSnapshot
	}
	img, err := librbd.OpenImageReadOnly(io, image, snap)
	if errors.Is(err, librbd.ErrNotFound) {
		return 0, fmt.Errorf("source %s: %w", what, errdefs.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("open source %s: %w", what, err)
	}
	defer img.Close()
	size, err := img.GetSize()
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", what, err)
	}
	return size, nil
}

// ensureSnapshot takes image@snap unless it exists.
func ensureSnapshot(io *rados.IOContext, image, snap string) error {
	img, err := librbd.OpenImage(io, image, librbd.NoSnapshot)
	if errors.Is(err, librbd.ErrNotFound) {
		return fmt.Errorf("image %s: %w", image, errdefs.ErrNotFound)
	}
	if err != nil {
		return err
	}
	defer img.Close()
	if _, err := img.GetSnapID(snap); err == nil {
		return nil
	}
	if _, err := img.CreateSnapshot(snap); err != nil && !errors.Is(err, rados.ErrObjectExists) {
		return err
	}
	return nil
}

// removeSnapshot removes image@snap; missing is not an error.
func removeSnapshot(io *rados.IOContext, image, snap string) error {
	img, err := librbd.OpenImage(io, image, librbd.NoSnapshot)
	if errors.Is(err, librbd.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer img.Close()
	if err := img.GetSnapshot(snap).Remove(); err != nil && !errors.Is(err, librbd.ErrNotFound) {
		return err
	}
	return nil
}

// CloneDepth returns how many ancestors image has: 0 for an image that is
// not a clone (or has been flattened), 1 for a clone of such an image, and
// so on. Parents in other pools and parents in the trash count too.
func (c *Conn) CloneDepth(ctx context.Context, pool, image string) (int, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return 0, err
	}
	img, err := librbd.OpenImageReadOnly(io, image, librbd.NoSnapshot)
	if err != nil {
		io.Destroy()
		if errors.Is(err, librbd.ErrNotFound) {
			return 0, fmt.Errorf("image %s/%s: %w", pool, image, errdefs.ErrNotFound)
		}
		return 0, fmt.Errorf("open %s/%s: %w", pool, image, err)
	}
	depth := 0
	for {
		p, err := img.GetParent()
		_ = img.Close()
		io.Destroy()
		if errors.Is(err, librbd.ErrNotFound) {
			return depth, nil
		}
		if err != nil {
			return 0, fmt.Errorf("parent of %s/%s: %w", pool, image, err)
		}
		depth++
		if depth > 2*MaxCloneDepth {
			return depth, nil // enough to know it is too deep
		}
		pool, image = p.Image.PoolName, p.Image.ImageName
		if io, err = c.ioctx(pool); err != nil {
			return 0, fmt.Errorf("parent of depth %d: %w", depth, err)
		}
		io.SetNamespace(p.Image.PoolNamespace)
		if img, err = librbd.OpenImageByIdReadOnly(io, p.Image.ImageID, librbd.NoSnapshot); err != nil {
			io.Destroy()
			return 0, fmt.Errorf("open parent %s/%s (id %s): %w", pool, image, p.Image.ImageID, err)
		}
	}
}
