package mapper

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// rbd-fuse + loop on the real cluster: map, make a filesystem, write,
// unmap; map again and read it back; nothing is left behind.
func TestFuseLoopRoundTrip(t *testing.T) {
	testutil.RequiresRoot(t)
	cl := testutil.Ceph(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := rbd.Connect(ctx, cl.Monitors, rbd.Credentials{ID: "admin", Key: cl.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close) // runs after the cleanups registered below
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	vol, _, err := conn.CreateVolume(ctx, rbd.VolumeSpec{Name: "fuse-test-" + hex.EncodeToString(b), Pool: "rbd", SizeBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.DeleteVolume(context.Background(), vol.Pool, vol.Image) })

	f := FuseLoop{Bin: "rbd-fuse", Losetup: "losetup"}
	tg := Target{Monitors: cl.Monitors, User: "admin", Key: cl.AdminKey, Pool: vol.Pool, Image: vol.Image}
	work := filepath.Join(t.TempDir(), "map")
	m, err := f.Map(ctx, tg, work)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Unmap(context.Background(), m) })
	if !strings.HasPrefix(m.Device, "/dev/loop") {
		t.Fatalf("device %q", m.Device)
	}
	if st, err := os.Stat(filepath.Join(work, "keyring")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring: %v %v", st, err)
	}
	// A retried map returns the same device.
	if m2, err := f.Map(ctx, tg, work); err != nil || m2.Device != m.Device {
		t.Fatalf("second Map = %+v, %v", m2, err)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mkfs.ext4", "-q", m.Device).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	if err := unix.Mount(m.Device, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	data := []byte("written through rbd-fuse and a loop device\n")
	if err := os.WriteFile(filepath.Join(mnt, "data"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Unmap(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(work); !os.IsNotExist(err) {
		t.Fatalf("work dir left behind: %v", err)
	}
	if out, _ := exec.Command("losetup", "--associated", filepath.Join(work, "fuse", vol.Image)).Output(); len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("loop device left: %s", out)
	}
	if err := f.Unmap(ctx, m); err != nil {
		t.Fatalf("second Unmap: %v", err)
	}

	m, err = f.Map(ctx, tg, work)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(m.Device, mnt, "ext4", unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "data"))
	_ = unix.Unmount(mnt, 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %q, %v", got, err)
	}
	if err := f.Unmap(ctx, m); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("pgrep", "-f", "rbd-fuse.*"+vol.Image).Output(); len(bytes.TrimSpace(out)) != 0 {
		// The daemon exits on unmount; give it a moment.
		time.Sleep(500 * time.Millisecond)
		if out, _ := exec.Command("pgrep", "-f", "rbd-fuse.*"+vol.Image).Output(); len(bytes.TrimSpace(out)) != 0 {
			if st, _ := os.ReadFile("/proc/" + strings.Fields(string(out))[0] + "/stat"); !bytes.Contains(st, []byte(") Z ")) {
				t.Fatalf("rbd-fuse still running: %s", out)
			}
		}
	}
}
