package rbd

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// errno returns the (negative) errno of a go-ceph error, or 0.
func errno(err error) int {
	var coded interface{ ErrorCode() int }
	if errors.As(err, &coded) {
		return coded.ErrorCode()
	}
	return 0
}

// DefaultFeatures are the image features when a StorageClass sets none:
// what krbd, rbd-nbd and rbd-fuse all support.
const DefaultFeatures = "layering"

// VolumeSpec is what CreateVolume asks for.
type VolumeSpec struct {
	Name      string // the CSI volume name (idempotency key)
	Pool      string
	SizeBytes uint64
	Features  string // comma-separated image features; "" means DefaultFeatures
	// DataPool is where the image's data objects go (an erasure-coded
	// pool, say); "" keeps them in Pool with the image's metadata.
	DataPool string
}

// Volume is a volume that exists.
type Volume struct {
	Name      string
	Pool      string
	Image     string
	SizeBytes uint64
}

// ParseFeatures validates a comma-separated list of image features.
func ParseFeatures(s string) (librbd.FeatureSet, error) {
	if s == "" {
		s = DefaultFeatures
	}
	allowed := map[string]bool{
		librbd.FeatureNameLayering: true, librbd.FeatureNameExclusiveLock: true,
		librbd.FeatureNameObjectMap: true, librbd.FeatureNameFastDiff: true, librbd.FeatureNameDeepFlatten: true,
	}
	var names []string
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		if !allowed[n] {
			return 0, fmt.Errorf("image feature %q is not supported (layering, exclusive-lock, object-map, fast-diff, deep-flatten): %w", n, errdefs.ErrInvalidArgument)
		}
		names = append(names, n)
	}
	fs := librbd.FeatureSetFromNames(names)
	has := func(b uint64) bool { return uint64(fs)&b != 0 }
	if has(librbd.FeatureObjectMap) && !has(librbd.FeatureExclusiveLock) {
		return 0, fmt.Errorf("image feature object-map needs exclusive-lock: %w", errdefs.ErrInvalidArgument)
	}
	if has(librbd.FeatureFastDiff) && !has(librbd.FeatureObjectMap) {
		return 0, fmt.Errorf("image feature fast-diff needs object-map: %w", errdefs.ErrInvalidArgument)
	}
	return fs, nil
}

// CreateVolume creates the volume named spec.Name, or returns it when it
// exists with a compatible size and features (the second result reports
// whether it was created now). The name is journaled before the image is
// created, so a crash in between leaves a name that the next call
// completes instead of a second image.
func (c *Conn) CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, bool, error) {
	if spec.Name == "" || spec.Pool == "" || spec.SizeBytes == 0 {
		return Volume{}, false, fmt.Errorf("create volume: name, pool and size are required: %w", errdefs.ErrInvalidArgument)
	}
	fs, err := ParseFeatures(spec.Features)
	if err != nil {
		return Volume{}, false, err
	}
	io, err := c.ioctx(spec.Pool)
	if err != nil {
		return Volume{}, false, err
	}
	defer io.Destroy()
	j := journal{io}
	image, found, err := j.lookupVolume(spec.Name)
	if err != nil {
		return Volume{}, false, err
	}
	if found {
		img, err := librbd.OpenImageReadOnly(io, image, librbd.NoSnapshot)
		if err == nil {
			defer img.Close()
			size, err := img.GetSize()
			if err != nil {
				return Volume{}, false, fmt.Errorf("size of %s: %w", image, err)
			}
			have, err := img.GetFeatures()
			if err != nil {
				return Volume{}, false, fmt.Errorf("features of %s: %w", image, err)
			}
			if src, err := img.GetMetadata(cloneSourceMeta); err == nil && src != "" {
				return Volume{}, false, fmt.Errorf("volume %q exists as a clone (%s) of %s: %w", spec.Name, image, src, errdefs.ErrAlreadyExists)
			}
			if size != spec.SizeBytes || have&uint64(fs) != uint64(fs) {
				return Volume{}, false, fmt.Errorf("volume %q exists as %s/%s with %d bytes and features %v: %w",
					spec.Name, spec.Pool, image, size, featureNames(have), errdefs.ErrAlreadyExists)
			}
			if err := c.checkDataPool(img, spec); err != nil {
				return Volume{}, false, err
			}
			return Volume{Name: spec.Name, Pool: spec.Pool, Image: image, SizeBytes: size}, false, nil
		}
		if !errors.Is(err, librbd.ErrNotFound) {
			return Volume{}, false, fmt.Errorf("open %s: %w", image, err)
		}
		// Journaled but never created: finish the job with the same name.
	} else {
		image = newImageName()
		if err := j.reserveVolume(spec.Name, image); err != nil {
			return Volume{}, false, err
		}
	}
	opts, err := imageOptions(fs, spec.DataPool)
	if err != nil {
		return Volume{}, false, err
	}
	defer opts.Destroy()
	if err := librbd.CreateImage(io, image, spec.SizeBytes, opts); err != nil {
		return Volume{}, false, fmt.Errorf("create image %s/%s: %w", spec.Pool, image, err)
	}
	// The journal maps the image back to its name: no image metadata to
	// write, which would cost an image open (header reads and a watch).
	return Volume{Name: spec.Name, Pool: spec.Pool, Image: image, SizeBytes: spec.SizeBytes}, true, nil
}

// DeleteVolume removes the image and its journal entries. Deleting a
// volume that does not exist is not an error; an image that has
// snapshots, or clones that still depend on it, or that is open elsewhere,
// is ErrFailedPrecondition.
func (c *Conn) DeleteVolume(ctx context.Context, pool, image string) error {
	io, err := c.ioctx(pool)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer io.Destroy()
	if err := librbd.RemoveImage(io, image); err != nil && !errors.Is(err, librbd.ErrNotFound) {
		if e := errno(err); e == -39 || e == -16 { // ENOTEMPTY, EBUSY
			return fmt.Errorf("image %s/%s has snapshots or users (delete its snapshots first): %v: %w", pool, image, err, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("remove image %s/%s: %w", pool, image, err)
	}
	return journal{io}.releaseVolume(image)
}

// GetVolume returns the volume of an image.
func (c *Conn) GetVolume(ctx context.Context, pool, image string) (Volume, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return Volume{}, err
	}
	defer io.Destroy()
	img, err := librbd.OpenImageReadOnly(io, image, librbd.NoSnapshot)
	if errors.Is(err, librbd.ErrNotFound) {
		return Volume{}, fmt.Errorf("image %s/%s: %w", pool, image, errdefs.ErrNotFound)
	}
	if err != nil {
		return Volume{}, fmt.Errorf("open %s/%s: %w", pool, image, err)
	}
	defer img.Close()
	size, err := img.GetSize()
	if err != nil {
		return Volume{}, fmt.Errorf("size of %s: %w", image, err)
	}
	name, found, err := journal{io}.volumeName(image)
	if err != nil {
		return Volume{}, err
	}
	if !found {
		name, _ = img.GetMetadata(imageNameMeta)
	}
	return Volume{Name: name, Pool: pool, Image: image, SizeBytes: size}, nil
}

// imageOptions are the options of a new image: its features and, when
// dataPool is set, its data pool. The caller destroys them.
func imageOptions(fs librbd.FeatureSet, dataPool string) (*librbd.ImageOptions, error) {
	opts := librbd.NewRbdImageOptions()
	if err := opts.SetUint64(librbd.ImageOptionFeatures, uint64(fs)); err != nil {
		opts.Destroy()
		return nil, fmt.Errorf("set image features: %w", err)
	}
	if dataPool != "" {
		if err := opts.SetString(librbd.ImageOptionDataPool, dataPool); err != nil {
			opts.Destroy()
			return nil, fmt.Errorf("set data pool: %w", err)
		}
	}
	return opts, nil
}

// checkDataPool refuses an existing image whose data pool is not the one
// spec names (the same name asked for with another data pool). A spec
// without a data pool takes the image as it is.
func (c *Conn) checkDataPool(img *librbd.Image, spec VolumeSpec) error {
	if spec.DataPool == "" {
		return nil
	}
	have, err := img.GetDataPoolID()
	if err != nil {
		return fmt.Errorf("data pool of %s: %w", img.GetName(), err)
	}
	want := spec.DataPool
	wantID, err := c.PoolID(want)
	if err != nil {
		return err
	}
	if have != wantID {
		return fmt.Errorf("volume %q exists as %s/%s with another data pool than %s: %w",
			spec.Name, spec.Pool, img.GetName(), want, errdefs.ErrAlreadyExists)
	}
	return nil
}

func featureNames(f uint64) []string {
	fs := librbd.FeatureSet(f)
	n := fs.Names()
	sort.Strings(n)
	return n
}
