package rbd

import (
	"context"
	"errors"
	"fmt"

	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// ExpandVolume grows image in pool to newSize bytes and returns its size.
// It never shrinks: a newSize at or below the current size changes
// nothing and returns the current size. A missing pool or image is
// ErrNotFound. The filesystem on the image is the node's business.
func (c *Conn) ExpandVolume(ctx context.Context, pool, image string, newSize uint64) (uint64, error) {
	if image == "" || newSize == 0 {
		return 0, fmt.Errorf("expand volume: image and size are required: %w", errdefs.ErrInvalidArgument)
	}
	io, err := c.ioctx(pool)
	if err != nil {
		return 0, err
	}
	defer io.Destroy()
	img, err := librbd.OpenImage(io, image, librbd.NoSnapshot)
	if errors.Is(err, librbd.ErrNotFound) {
		return 0, fmt.Errorf("image %s/%s: %w", pool, image, errdefs.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("open %s/%s: %w", pool, image, err)
	}
	defer img.Close()
	size, err := img.GetSize()
	if err != nil {
		return 0, fmt.Errorf("size of %s/%s: %w", pool, image, err)
	}
	if newSize <= size {
		return size, nil
	}
	if err := img.Resize(newSize); err != nil {
		return 0, fmt.Errorf("resize %s/%s to %d: %w", pool, image, newSize, err)
	}
	return newSize, nil
}
