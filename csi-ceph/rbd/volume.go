package rbd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"
)

// Sentinels for the driver to map to CSI codes.
var (
	ErrInvalid       = errors.New("invalid")
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	// ErrBusy means the image cannot go yet: it has snapshots, or clones
	// still depend on it, or it is open elsewhere.
	ErrBusy = errors.New("in use")
)

// errno returns the (negative) errno of a go-ceph error, or 0.
func errno(err error) int {
	var coded interface{ ErrorCode() int }
	if errors.As(err, &coded) {
		return coded.ErrorCode()
	}
	return 0
}

// journalObject is the object in each pool whose omap maps CSI volume
// names to images ("name/<csi name>" -> image) and back ("image/<image>"
// -> csi name).
const journalObject = "nodeinfra.csi.volumes"

// imageNameMeta is the image metadata key that also records the CSI name
// of a clone (plain volumes have only the journal's reverse key).
const imageNameMeta = "nodeinfra.csi.name"

// DefaultFeatures are the image features when a StorageClass sets none:
// what krbd, rbd-nbd and rbd-fuse all support.
const DefaultFeatures = "layering"

// VolumeSpec is what CreateVolume asks for.
type VolumeSpec struct {
	Name      string // the CSI volume name (idempotency key)
	Pool      string
	SizeBytes uint64
	Features  string // comma-separated image features; "" means DefaultFeatures
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
			return 0, fmt.Errorf("image feature %q is not supported (layering, exclusive-lock, object-map, fast-diff, deep-flatten): %w", n, ErrInvalid)
		}
		names = append(names, n)
	}
	fs := librbd.FeatureSetFromNames(names)
	has := func(b uint64) bool { return uint64(fs)&b != 0 }
	if has(librbd.FeatureObjectMap) && !has(librbd.FeatureExclusiveLock) {
		return 0, fmt.Errorf("image feature object-map needs exclusive-lock: %w", ErrInvalid)
	}
	if has(librbd.FeatureFastDiff) && !has(librbd.FeatureObjectMap) {
		return 0, fmt.Errorf("image feature fast-diff needs object-map: %w", ErrInvalid)
	}
	return fs, nil
}

func (c *Conn) ioctx(pool string) (*rados.IOContext, error) {
	if c.closed.Load() {
		return nil, errClosed
	}
	io, err := c.rados.OpenIOContext(pool)
	if errors.Is(err, rados.ErrNotFound) {
		return nil, fmt.Errorf("pool %q: %w", pool, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open pool %q: %w", pool, err)
	}
	return io, nil
}

func omapGet(io *rados.IOContext, key string) (string, bool, error) {
	vals, err := io.GetOmapValues(journalObject, "", key, 2)
	if errors.Is(err, rados.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read volume journal: %w", err)
	}
	v, ok := vals[key]
	return string(v), ok, nil
}

func newImageName() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "csi-vol-" + hex.EncodeToString(b)
}

// CreateVolume creates the volume named spec.Name, or returns it when it
// exists with a compatible size and features (the second result reports
// whether it was created now). The name is journaled before the image is
// created, so a crash in between leaves a name that the next call
// completes instead of a second image.
func (c *Conn) CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, bool, error) {
	if spec.Name == "" || spec.Pool == "" || spec.SizeBytes == 0 {
		return Volume{}, false, fmt.Errorf("create volume: name, pool and size are required: %w", ErrInvalid)
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
	image, found, err := omapGet(io, "name/"+spec.Name)
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
				return Volume{}, false, fmt.Errorf("volume %q exists as a clone (%s) of %s: %w", spec.Name, image, src, ErrAlreadyExists)
			}
			if size != spec.SizeBytes || have&uint64(fs) != uint64(fs) {
				return Volume{}, false, fmt.Errorf("volume %q exists as %s/%s with %d bytes and features %v: %w",
					spec.Name, spec.Pool, image, size, featureNames(have), ErrAlreadyExists)
			}
			return Volume{Name: spec.Name, Pool: spec.Pool, Image: image, SizeBytes: size}, false, nil
		}
		if !errors.Is(err, librbd.ErrNotFound) {
			return Volume{}, false, fmt.Errorf("open %s: %w", image, err)
		}
		// Journaled but never created: finish the job with the same name.
	} else {
		image = newImageName()
		if err := io.SetOmap(journalObject, map[string][]byte{
			"name/" + spec.Name: []byte(image), "image/" + image: []byte(spec.Name),
		}); err != nil {
			return Volume{}, false, fmt.Errorf("write volume journal: %w", err)
		}
	}
	opts := librbd.NewRbdImageOptions()
	defer opts.Destroy()
	if err := opts.SetUint64(librbd.ImageOptionFeatures, uint64(fs)); err != nil {
		return Volume{}, false, fmt.Errorf("image options: %w", err)
	}
	if err := librbd.CreateImage(io, image, spec.SizeBytes, opts); err != nil {
		return Volume{}, false, fmt.Errorf("create image %s/%s: %w", spec.Pool, image, err)
	}
	// The journal maps the image back to its name: no image metadata to
	// write, which would cost an image open (header reads and a watch).
	return Volume{Name: spec.Name, Pool: spec.Pool, Image: image, SizeBytes: spec.SizeBytes}, true, nil
}

// DeleteVolume removes the image and its journal entries. Deleting a
// volume that does not exist is not an error.
func (c *Conn) DeleteVolume(ctx context.Context, pool, image string) error {
	io, err := c.ioctx(pool)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer io.Destroy()
	if err := librbd.RemoveImage(io, image); err != nil && !errors.Is(err, librbd.ErrNotFound) {
		if e := errno(err); e == -39 || e == -16 { // ENOTEMPTY, EBUSY
			return fmt.Errorf("image %s/%s has snapshots or users (delete its snapshots first): %v: %w", pool, image, err, ErrBusy)
		}
		return fmt.Errorf("remove image %s/%s: %w", pool, image, err)
	}
	name, found, err := omapGet(io, "image/"+image)
	if err != nil {
		return err
	}
	keys := []string{"image/" + image}
	if found {
		keys = append(keys, "name/"+name)
	}
	if err := io.RmOmapKeys(journalObject, keys); err != nil && !errors.Is(err, rados.ErrNotFound) {
		return fmt.Errorf("clear volume journal: %w", err)
	}
	return nil
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
		return Volume{}, fmt.Errorf("image %s/%s: %w", pool, image, ErrNotFound)
	}
	if err != nil {
		return Volume{}, fmt.Errorf("open %s/%s: %w", pool, image, err)
	}
	defer img.Close()
	size, err := img.GetSize()
	if err != nil {
		return Volume{}, fmt.Errorf("size of %s: %w", image, err)
	}
	name, found, err := omapGet(io, "image/"+image)
	if err != nil {
		return Volume{}, err
	}
	if !found {
		name, _ = img.GetMetadata(imageNameMeta)
	}
	return Volume{Name: name, Pool: pool, Image: image, SizeBytes: size}, nil
}

func featureNames(f uint64) []string {
	fs := librbd.FeatureSet(f)
	n := fs.Names()
	sort.Strings(n)
	return n
}
