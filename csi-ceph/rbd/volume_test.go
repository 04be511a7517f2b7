package rbd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func uniqueName(t *testing.T) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "pvc-" + hex.EncodeToString(b)
}

func TestCreateVolumeIsIdempotent(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	spec := VolumeSpec{Name: uniqueName(t), Pool: "rbd", SizeBytes: 64 << 20}
	v, created, err := c.CreateVolume(ctx, spec)
	if err != nil || !created {
		t.Fatalf("CreateVolume = %+v, %v, %v", v, created, err)
	}
	t.Cleanup(func() { _ = c.DeleteVolume(ctx, v.Pool, v.Image) })
	again, created, err := c.CreateVolume(ctx, spec)
	if err != nil || created || again != v {
		t.Fatalf("second CreateVolume = %+v, %v, %v; want %+v, not created", again, created, err, v)
	}
	// A controller restart is a new connection: the journal in Ceph still
	// maps the name to the same image.
	c2, _ := connect(t)
	if v2, created, err := c2.CreateVolume(ctx, spec); err != nil || created || v2 != v {
		t.Fatalf("CreateVolume on a new connection = %+v, %v, %v", v2, created, err)
	}
	// Same name, other size or features: refused.
	for _, other := range []VolumeSpec{
		{Name: spec.Name, Pool: "rbd", SizeBytes: 128 << 20},
		{Name: spec.Name, Pool: "rbd", SizeBytes: 64 << 20, Features: "layering,exclusive-lock"},
	} {
		if _, _, err := c.CreateVolume(ctx, other); !errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Errorf("CreateVolume(%+v) = %v, want errdefs.ErrAlreadyExists", other, err)
		}
	}
	got, err := c.GetVolume(ctx, "rbd", v.Image)
	if err != nil || got.Name != spec.Name || got.SizeBytes != spec.SizeBytes {
		t.Fatalf("GetVolume = %+v, %v", got, err)
	}
	if err := c.DeleteVolume(ctx, v.Pool, v.Image); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, v.Pool, v.Image); err != nil {
		t.Fatalf("second DeleteVolume: %v", err)
	}
	if _, err := c.GetVolume(ctx, "rbd", v.Image); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GetVolume after delete = %v", err)
	}
	// The name is free again and gets a new image.
	v3, created, err := c.CreateVolume(ctx, spec)
	if err != nil || !created || v3.Image == v.Image {
		t.Fatalf("CreateVolume after delete = %+v, %v, %v", v3, created, err)
	}
	_ = c.DeleteVolume(ctx, v3.Pool, v3.Image)
}

func TestCreateVolumeBadInput(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	for _, tc := range []struct {
		spec VolumeSpec
		want error
	}{
		{VolumeSpec{Name: "x", Pool: "no-such-pool", SizeBytes: 1 << 20}, errdefs.ErrNotFound},
		{VolumeSpec{Name: "", Pool: "rbd", SizeBytes: 1 << 20}, errdefs.ErrInvalidArgument},
		{VolumeSpec{Name: "x", Pool: "rbd"}, errdefs.ErrInvalidArgument},
		{VolumeSpec{Name: "x", Pool: "rbd", SizeBytes: 1 << 20, Features: "journaling"}, errdefs.ErrInvalidArgument},
		{VolumeSpec{Name: "x", Pool: "rbd", SizeBytes: 1 << 20, Features: "layering,object-map"}, errdefs.ErrInvalidArgument},
	} {
		if _, _, err := c.CreateVolume(ctx, tc.spec); !errors.Is(err, tc.want) {
			t.Errorf("CreateVolume(%+v) = %v, want %v", tc.spec, err, tc.want)
		}
	}
	if err := c.DeleteVolume(ctx, "no-such-pool", "csi-vol-x"); err != nil {
		t.Errorf("DeleteVolume in a missing pool: %v", err)
	}
}

func TestParseFeatures(t *testing.T) {
	for s, ok := range map[string]bool{
		"": true, "layering": true, "layering,exclusive-lock,object-map,fast-diff": true,
		"layering, deep-flatten": true, "bogus": false, "fast-diff": false, "striping": false,
	} {
		if _, err := ParseFeatures(s); (err == nil) != ok {
			t.Errorf("ParseFeatures(%q) = %v", s, err)
		}
	}
}

// A volume with a snapshot cannot be deleted until the snapshot is gone
// (the CSI spec lets a plugin answer FailedPrecondition for that).
func TestDeleteVolumeWithSnapshotIsBusy(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	v, _, err := c.CreateVolume(ctx, VolumeSpec{Name: uniqueName(t), Pool: "rbd", SizeBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.DeleteVolume(context.Background(), v.Pool, v.Image) })
	s, _, err := c.CreateSnapshot(ctx, SnapshotSpec{Name: uniqueName(t), Pool: v.Pool, SourceImage: v.Image})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, v.Pool, v.Image); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("DeleteVolume with a snapshot = %v, want errdefs.ErrFailedPrecondition", err)
	}
	if _, err := c.GetVolume(ctx, v.Pool, v.Image); err != nil {
		t.Fatalf("the volume must survive a refused delete: %v", err)
	}
	if err := c.DeleteSnapshot(ctx, s.Pool, s.SourceImage, s.SnapName); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, v.Pool, v.Image); err != nil {
		t.Fatalf("DeleteVolume after its snapshot went: %v", err)
	}
}
