package rbd

import (
	"context"
	"errors"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestExpandVolume(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	v := newVolume(t, c, 32<<20)
	data := pattern(v.Image)
	writeAt(t, c, "rbd", v.Image, data, 0)
	for _, tc := range []struct{ ask, want uint64 }{
		{64 << 20, 64 << 20},
		{64 << 20, 64 << 20}, // again: no-op
		{16 << 20, 64 << 20}, // never shrinks
		{96 << 20, 96 << 20},
	} {
		got, err := c.ExpandVolume(ctx, "rbd", v.Image, tc.ask)
		if err != nil || got != tc.want {
			t.Fatalf("ExpandVolume(%d) = %d, %v; want %d", tc.ask, got, err, tc.want)
		}
		if g, err := c.GetVolume(ctx, "rbd", v.Image); err != nil || g.SizeBytes != tc.want {
			t.Fatalf("GetVolume after ExpandVolume(%d) = %+v, %v", tc.ask, g, err)
		}
	}
	if got := readAt(t, c, "rbd", v.Image, len(data), 0); string(got) != string(data) {
		t.Fatal("data lost by expansion")
	}
	// The end of the grown image is writable.
	writeAt(t, c, "rbd", v.Image, data, 96<<20-int64(len(data)))
	if _, err := c.ExpandVolume(ctx, "rbd", "csi-vol-missing", 1<<30); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("ExpandVolume of a missing image = %v", err)
	}
	if _, err := c.ExpandVolume(ctx, "no-such-pool", v.Image, 1<<30); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("ExpandVolume in a missing pool = %v", err)
	}
	if _, err := c.ExpandVolume(ctx, "rbd", v.Image, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("ExpandVolume to 0 = %v", err)
	}
}
