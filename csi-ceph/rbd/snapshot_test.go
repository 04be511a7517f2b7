package rbd

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// newVolume creates a volume with a unique name in pool "rbd" and deletes
// it when the test ends.
func newVolume(t *testing.T, c *Conn, size uint64) Volume {
	t.Helper()
	ctx := context.Background()
	v, _, err := c.CreateVolume(ctx, VolumeSpec{Name: uniqueName(t), Pool: "rbd", SizeBytes: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteVolumeAndSnaps(t, c, v.Pool, v.Image) })
	return v
}

// deleteVolumeAndSnaps removes image's user snapshots, then the volume.
func deleteVolumeAndSnaps(t *testing.T, c *Conn, pool, image string) {
	ctx := context.Background()
	for _, s := range userSnaps(t, c, pool, image) {
		if err := c.DeleteSnapshot(ctx, pool, image, s); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	if err := c.DeleteVolume(ctx, pool, image); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

// userSnaps lists the user-namespace snapshots of image (nil when missing).
func userSnaps(t *testing.T, c *Conn, pool, image string) []string {
	t.Helper()
	io, err := c.ioctx(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer io.Destroy()
	img, err := librbd.OpenImageReadOnly(io, image, librbd.NoSnapshot)
	if errors.Is(err, librbd.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range snaps {
		if ns, err := img.GetSnapNamespaceType(s.Id); err == nil && ns == librbd.SnapNamespaceTypeUser {
			out = append(out, s.Name)
		}
	}
	return out
}

func writeAt(t *testing.T, c *Conn, pool, image string, data []byte, off int64) {
	t.Helper()
	io, err := c.ioctx(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer io.Destroy()
	img, err := librbd.OpenImage(io, image, librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if n, err := img.WriteAt(data, off); err != nil || n != len(data) {
		t.Fatalf("write %s: %d, %v", image, n, err)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
}

func readAt(t *testing.T, c *Conn, pool, image string, n int, off int64) []byte {
	t.Helper()
	io, err := c.ioctx(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer io.Destroy()
	img, err := librbd.OpenImageReadOnly(io, image, librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	b := make([]byte, n)
	if got, err := img.ReadAt(b, off); err != nil || got != n {
		t.Fatalf("read %s: %d, %v", image, got, err)
	}
	return b
}

// pattern is recognizable data for name.
func pattern(name string) []byte {
	return bytes.Repeat([]byte("nodeinfra:"+name+";"), 4096/(len(name)+11)+1)[:4096]
}

func TestCreateSnapshotIsIdempotent(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	a, b := newVolume(t, c, 16<<20), newVolume(t, c, 16<<20)
	spec := SnapshotSpec{Name: "snap-" + uniqueName(t), Pool: "rbd", SourceImage: a.Image}
	start := time.Now().Add(-time.Minute)
	s, created, err := c.CreateSnapshot(ctx, spec)
	if err != nil || !created {
		t.Fatalf("CreateSnapshot = %+v, %v, %v", s, created, err)
	}
	t.Cleanup(func() { _ = c.DeleteSnapshot(ctx, s.Pool, s.SourceImage, s.SnapName) })
	if s.Name != spec.Name || s.SourceImage != a.Image || s.SizeBytes != 16<<20 || !s.ReadyToUse ||
		!strings.HasPrefix(s.SnapName, "csi-snap-") || s.CreatedAt.Before(start) || s.CreatedAt.After(time.Now().Add(time.Minute)) {
		t.Fatalf("CreateSnapshot = %+v", s)
	}
	again, created, err := c.CreateSnapshot(ctx, spec)
	if err != nil || created || again != s {
		t.Fatalf("second CreateSnapshot = %+v, %v, %v; want %+v", again, created, err, s)
	}
	c2, _ := connect(t)
	if s2, created, err := c2.CreateSnapshot(ctx, spec); err != nil || created || s2 != s {
		t.Fatalf("CreateSnapshot on a new connection = %+v, %v, %v", s2, created, err)
	}
	if _, _, err := c.CreateSnapshot(ctx, SnapshotSpec{Name: spec.Name, Pool: "rbd", SourceImage: b.Image}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("CreateSnapshot of another image with the same name = %v, want errdefs.ErrAlreadyExists", err)
	}
	if got, err := c.GetSnapshot(ctx, "rbd", a.Image, s.SnapName); err != nil || got != s {
		t.Errorf("GetSnapshot = %+v, %v; want %+v", got, err, s)
	}
	list, err := c.ListSnapshots(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	if !containsSnap(list, s) {
		t.Errorf("ListSnapshots = %+v, misses %+v", list, s)
	}
	if err := c.DeleteSnapshot(ctx, "rbd", a.Image, s.SnapName); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSnapshot(ctx, "rbd", a.Image, s.SnapName); err != nil {
		t.Fatalf("second DeleteSnapshot: %v", err)
	}
	if _, err := c.GetSnapshot(ctx, "rbd", a.Image, s.SnapName); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("GetSnapshot after delete = %v", err)
	}
	if list, err := c.ListSnapshots(ctx, "rbd"); err != nil || containsSnap(list, s) {
		t.Errorf("ListSnapshots after delete = %+v, %v", list, err)
	}
	// The name is free again, also for the other image.
	s3, created, err := c.CreateSnapshot(ctx, SnapshotSpec{Name: spec.Name, Pool: "rbd", SourceImage: b.Image})
	if err != nil || !created || s3.SourceImage != b.Image {
		t.Fatalf("CreateSnapshot after delete = %+v, %v, %v", s3, created, err)
	}
	if err := c.DeleteSnapshot(ctx, "rbd", b.Image, s3.SnapName); err != nil {
		t.Fatal(err)
	}
}

func containsSnap(list []Snapshot, s Snapshot) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestCreateSnapshotAfterCrash(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	a := newVolume(t, c, 8<<20)
	// A crash after journaling, before snapshotting.
	name, snap := "snap-"+uniqueName(t), newSnapName()
	io, err := c.ioctx("rbd")
	if err != nil {
		t.Fatal(err)
	}
	defer io.Destroy()
	if err := (journal{io}).reserveSnapshot(name, a.Image, snap); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.DeleteSnapshot(ctx, "rbd", a.Image, snap) })
	if list, err := c.ListSnapshots(ctx, "rbd"); err != nil {
		t.Fatal(err)
	} else {
		for _, s := range list {
			if s.Name == name {
				t.Errorf("ListSnapshots lists the snapshot that was never taken: %+v", s)
			}
		}
	}
	s, created, err := c.CreateSnapshot(ctx, SnapshotSpec{Name: name, Pool: "rbd", SourceImage: a.Image})
	if err != nil || !created || s.SnapName != snap {
		t.Fatalf("CreateSnapshot after a crash = %+v, %v, %v; want snapshot %s", s, created, err, snap)
	}
}

func TestSnapshotBadInput(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	for _, tc := range []struct {
		spec SnapshotSpec
		want error
	}{
		{SnapshotSpec{Name: "s-" + uniqueName(t), Pool: "rbd", SourceImage: "csi-vol-missing"}, errdefs.ErrNotFound},
		{SnapshotSpec{Name: "s", Pool: "no-such-pool", SourceImage: "csi-vol-x"}, errdefs.ErrNotFound},
		{SnapshotSpec{Name: "", Pool: "rbd", SourceImage: "csi-vol-x"}, errdefs.ErrInvalidArgument},
		{SnapshotSpec{Name: "s", Pool: "rbd"}, errdefs.ErrInvalidArgument},
	} {
		if _, _, err := c.CreateSnapshot(ctx, tc.spec); !errors.Is(err, tc.want) {
			t.Errorf("CreateSnapshot(%+v) = %v, want %v", tc.spec, err, tc.want)
		}
	}
	// A refused source leaves no journal entry behind.
	io, err := c.ioctx("rbd")
	if err != nil {
		t.Fatal(err)
	}
	defer io.Destroy()
	if refs, err := (journal{io}).list(snapKey + "csi-vol-missing@"); err != nil || len(refs) != 0 {
		t.Errorf("journal after a refused snapshot: %v, %v", refs, err)
	}
	if _, err := c.GetSnapshot(ctx, "rbd", "csi-vol-missing", "csi-snap-x"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("GetSnapshot of a missing image = %v", err)
	}
	for _, pool := range []string{"rbd", "no-such-pool"} {
		if err := c.DeleteSnapshot(ctx, pool, "csi-vol-missing", "csi-snap-x"); err != nil {
			t.Errorf("DeleteSnapshot of a missing snapshot in %s: %v", pool, err)
		}
	}
}
