package mapper

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
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

// fusePIDs returns the PIDs of the rbd-fuse processes that serve mnt.
func fusePIDs(t *testing.T, mnt string) []int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if filepath.Base(args[0]) == "rbd-fuse" && slices.Contains(args, mnt) {
			out = append(out, pid)
		}
	}
	return out
}

// Two images on real rbd-fuse and loop devices: a record whose device now
// reads the other image is stale and unmapping it leaves that image's
// loop device alone; killing rbd-fuse makes a mapping broken (ENOTCONN,
// told without hanging), and Heal brings it back with the data.
func TestFuseLoopStaleAndBroken(t *testing.T) {
	testutil.RequiresRoot(t)
	cl := testutil.Ceph(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := rbd.Connect(ctx, cl.Monitors, rbd.Credentials{ID: "admin", Key: cl.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	f := FuseLoop{Bin: "rbd-fuse", Losetup: "losetup", ProbeTimeout: 2 * time.Second}
	dir := t.TempDir()
	mapImage := func(tag string) (Target, Mapping) {
		b := make([]byte, 6)
		_, _ = rand.Read(b)
		vol, _, err := conn.CreateVolume(ctx, rbd.VolumeSpec{Name: "fuse-" + tag + "-" + hex.EncodeToString(b), Pool: "rbd", SizeBytes: 16 << 20})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.DeleteVolume(context.Background(), vol.Pool, vol.Image) })
		id, err := conn.ImageID(ctx, vol.Pool, vol.Image)
		if err != nil {
			t.Fatal(err)
		}
		tg := Target{Monitors: cl.Monitors, User: "admin", Key: cl.AdminKey, Pool: vol.Pool, Image: vol.Image, ImageID: id}
		m, err := f.Map(ctx, tg, filepath.Join(dir, tag))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = f.Unmap(context.Background(), m) })
		return tg, m
	}
	tgA, a := mapImage("a")
	_, b := mapImage("b")
	if err := f.Check(ctx, a); err != nil {
		t.Fatalf("Check(A): %v", err)
	}
	stale := a
	stale.Device = b.Device
	if err := f.Check(ctx, stale); !errors.Is(err, ErrStale) {
		t.Fatalf("Check of A's record naming B's loop device = %v, want ErrStale", err)
	}
	if err := f.Unmap(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if backing, ok := loopBacking("/sys", b.Device); !ok || backing != filepath.Join(b.Dir, "fuse", b.Image) {
		t.Fatalf("B's loop device %s now reads %q (%v)", b.Device, backing, ok)
	}
	if _, ok := loopBacking("/sys", a.Device); ok {
		if backing, _ := loopBacking("/sys", a.Device); strings.Contains(backing, a.Dir) {
			t.Fatalf("A's loop device %s still bound", a.Device)
		}
	}
	if err := f.Check(ctx, b); err != nil {
		t.Fatalf("Check(B) after A's stale unmap: %v", err)
	}
	// A file system still mounted from B's live mapping: Unmap leaves it
	// (mapping again would make it two), until it is unmounted.
	if out, err := exec.Command("mkfs.ext4", "-q", b.Device).CombinedOutput(); err != nil {
		t.Fatalf("mkfs: %v %s", err, out)
	}
	mnt := t.TempDir()
	if err := unix.Mount(b.Device, mnt, "ext4", 0, ""); err != nil {
		t.Fatal(err)
	}
	if err := f.Unmap(ctx, b); !errors.Is(err, ErrInUse) {
		_ = unix.Unmount(mnt, 0)
		t.Fatalf("Unmap of a mounted mapping = %v, want ErrInUse", err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Check(ctx, b); err != nil {
		t.Fatalf("Check(B) after a refused Unmap: %v", err)
	}

	// Kill A's daemon: its FUSE mount answers ENOTCONN.
	a, err = f.Map(ctx, tgA, a.Dir)
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("data written before rbd-fuse died\n")
	dev, err := os.OpenFile(a.Device, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if err := dev.Sync(); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	pids := fusePIDs(t, filepath.Join(a.Dir, "fuse"))
	if len(pids) != 1 {
		t.Fatalf("rbd-fuse processes of A: %v", pids)
	}
	if err := unix.Kill(pids[0], unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for len(fusePIDs(t, filepath.Join(a.Dir, "fuse"))) > 0 && time.Since(start) < 5*time.Second {
		time.Sleep(20 * time.Millisecond)
	}
	start = time.Now()
	if err := f.Check(ctx, a); !errors.Is(err, ErrBroken) {
		t.Fatalf("Check with rbd-fuse killed = %v, want ErrBroken", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Check took %v", d)
	}
	healed, err := f.Heal(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Check(ctx, healed); err != nil {
		t.Fatalf("Check after Heal: %v", err)
	}
	dev, err = os.Open(healed.Device)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	_, err = dev.ReadAt(got, 4096)
	dev.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %q, %v", got, err)
	}
	for _, m := range []Mapping{healed, b} {
		if err := f.Unmap(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if under, _ := mounts.Under(dir); len(under) != 0 {
		t.Fatalf("mounts left: %v", under)
	}
	all, _ := loops("/sys", "/dev")
	for d, backing := range all {
		if strings.HasPrefix(backing, dir) {
			t.Errorf("loop device %s left on %s", d, backing)
		}
	}
}
