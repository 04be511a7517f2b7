package cephfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os/exec"
	"testing"

	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// connect opens a session with the run's cluster and a subvolume group of
// the test's own, removed when the test ends.
func connect(t *testing.T) (*Conn, FS, string) {
	t.Helper()
	cl := testutil.Ceph(t)
	c, err := Connect(context.Background(), cl.Monitors, rbd.Credentials{ID: "admin", Key: cl.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	group := "unit-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		if out, err := exec.Command("ceph", "-c", cl.Conf, "fs", "subvolumegroup", "rm", "cephfs", group, "--force").CombinedOutput(); err != nil {
			t.Errorf("remove group %s: %v: %s", group, err, out)
		}
		c.Close()
	})
	fs, err := c.FSByName("cephfs")
	if err != nil {
		t.Fatal(err)
	}
	if byID, err := c.FSByID(fs.ID); err != nil || byID.Name != "cephfs" || fs.MetadataPool == "" {
		t.Fatalf("FSByID(%d) = %+v, %v (by name %+v)", fs.ID, byID, err, fs)
	}
	if _, err := c.FSByName("nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("FSByName(nope): %v", err)
	}
	return c, fs, group
}

// Create by request name is idempotent, a different request with the same
// name is AlreadyExists, expansion only grows, delete is idempotent and
// releases the name.
func TestVolumeLifecycle(t *testing.T) {
	c, fs, group := connect(t)
	ctx := context.Background()
	spec := VolumeSpec{FS: fs, Group: group, Name: "pvc-unit", SizeBytes: 8 << 20}
	v, created, err := c.CreateVolume(ctx, spec)
	if err != nil || !created || v.SizeBytes != 8<<20 || v.Path == "" {
		t.Fatalf("CreateVolume = %+v, %v, %v", v, created, err)
	}
	// The path came from a listing of the subvolume dir through the session's
	// libcephfs client, not from the mgr, and is the mgr's answer.
	if p, err := c.SubvolumePath(fs.Name, group, v.Subvolume); err != nil || p != v.Path {
		t.Fatalf("getpath = %q, %v; CreateVolume said %q", p, err, v.Path)
	}
	if p, ok := c.pathFromListing(fs.Name, group, v.Subvolume); !ok || p != v.Path {
		t.Fatalf("pathFromListing = %q, %v; want %q (the mgr would be asked twice per create)", p, ok, v.Path)
	}
	if _, ok := c.pathFromListing(fs.Name, group, "csi-vol-missing"); ok {
		t.Fatal("pathFromListing of a missing subvolume succeeded")
	}
	again, created, err := c.CreateVolume(ctx, spec)
	if err != nil || created || again.Subvolume != v.Subvolume {
		t.Fatalf("repeated CreateVolume = %+v, %v, %v; want %s", again, created, err, v.Subvolume)
	}
	other := spec
	other.SizeBytes = 16 << 20
	if _, _, err := c.CreateVolume(ctx, other); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("same name, other size: %v", err)
	}
	if got, err := c.ExpandVolume(ctx, fs.Name, group, v.Subvolume, 16<<20); err != nil || got != 16<<20 {
		t.Fatalf("ExpandVolume = %d, %v", got, err)
	}
	if got, err := c.ExpandVolume(ctx, fs.Name, group, v.Subvolume, 4<<20); err != nil || got != 16<<20 {
		t.Fatalf("ExpandVolume to less = %d, %v; want the quota kept", got, err)
	}
	s, created, err := c.CreateSnapshot(ctx, fs, group, "snap-unit", v.Subvolume)
	if err != nil || !created || s.SizeBytes != 16<<20 {
		t.Fatalf("CreateSnapshot = %+v, %v, %v", s, created, err)
	}
	if s2, created, err := c.CreateSnapshot(ctx, fs, group, "snap-unit", v.Subvolume); err != nil || created || s2.Snap != s.Snap {
		t.Fatalf("repeated CreateSnapshot = %+v, %v, %v", s2, created, err)
	}
	if err := c.DeleteSnapshot(ctx, fs, group, v.Subvolume, s.Snap); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSnapshot(ctx, fs, group, v.Subvolume, s.Snap); err != nil {
		t.Fatalf("second DeleteSnapshot: %v", err)
	}
	if err := c.DeleteVolume(ctx, fs, group, v.Subvolume); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, fs, group, v.Subvolume); err != nil {
		t.Fatalf("second DeleteVolume: %v", err)
	}
	if _, err := c.GetVolume(fs.Name, group, v.Subvolume); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GetVolume after delete: %v", err)
	}
	fresh, created, err := c.CreateVolume(ctx, spec)
	if err != nil || !created || fresh.Subvolume == v.Subvolume {
		t.Fatalf("CreateVolume after delete = %+v, %v, %v; want a new subvolume", fresh, created, err)
	}
	if err := c.DeleteVolume(ctx, fs, group, fresh.Subvolume); err != nil {
		t.Fatal(err)
	}
}
