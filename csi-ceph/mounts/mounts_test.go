package mounts

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const sample = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 22 7:3 / /var/lib/k\040space rw,relatime shared:2 - xfs /dev/loop3 rw,nouuid
37 22 0:52 / /var/lib/csi-ceph/maps/ab/fuse rw,nosuid,nodev,relatime - fuse.rbd-fuse rbd-fuse rw,user_id=0,group_id=0
38 22 0:33 /kubepods/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 22 0:34 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 37 7:4 / /var/lib/csi-ceph/maps/ab/fuse/sub rw - ext4 /dev/loop4 rw
`

func TestParse(t *testing.T) {
	all, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 6 {
		t.Fatalf("parsed %d mounts", len(all))
	}
	if m := all[1]; m.Point != "/var/lib/k space" || m.FsType != "xfs" || m.Major != 7 || m.Minor != 3 || m.Source != "/dev/loop3" {
		t.Errorf("line 2: %+v", m)
	}
	if m := all[2]; m.FsType != "fuse.rbd-fuse" || m.Major != 0 || m.Minor != 52 {
		t.Errorf("line 3: %+v", m)
	}
	if m, ok := at(all, "/sys/fs/cgroup/memory/"); !ok || m.Root != "/" {
		t.Errorf("at: the later mount covers the earlier one: %+v %v", m, ok)
	}
	if _, ok := at(all, "/nope"); ok {
		t.Error("at found a mount at /nope")
	}
	if d := all[1].Dev(); unix.Major(d) != 7 || unix.Minor(d) != 3 {
		t.Errorf("Dev = %x", d)
	}
	for _, bad := range []string{"1 2 3", "1 2 x:y / / rw - ext4 a b", "1 2 8:1 / / rw no-separator ext4 a b", "1 2 8:1 / / rw -"} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Fuzz(func(t *testing.T, b []byte) {
		all, err := Parse(b)
		if err != nil {
			return
		}
		for _, m := range all {
			if m.FsType == "" || m.FsType == "-" {
				t.Fatalf("accepted a mount without a type: %+v", m)
			}
		}
	})
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`a\040b`: "a b", `a\134b`: `a\b`, `a\0`: `a\0`, `\011x`: "\tx", "plain": "plain"} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// A real tmpfs mounted twice at one point: At sees the top one, Unmount
// takes both, Cleanup removes the directory, and Probe answers.
func TestUnmountStacked(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it mounts tmpfs")
	}
	dir := filepath.Join(t.TempDir(), "m")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH); _ = unix.Unmount(dir, unix.MNT_DETACH) })
	for i := 0; i < 2; i++ {
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
	}
	m, ok, err := At(dir)
	if err != nil || !ok || m.FsType != "tmpfs" {
		t.Fatalf("At = %+v, %v, %v", m, ok, err)
	}
	if err := Probe(dir, time.Second); err != nil {
		t.Fatalf("Probe of a live tmpfs: %v", err)
	}
	under, err := Under(filepath.Dir(dir))
	if err != nil || len(under) != 1 || under[0] != dir {
		t.Fatalf("Under = %v, %v", under, err)
	}
	// A busy mount (a process has its cwd in it) is detached lazily.
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Cleanup(dir); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := At(dir); ok {
		t.Fatal("still mounted after Cleanup")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("directory left: %v", err)
	}
	if err := Cleanup(dir); err != nil {
		t.Fatalf("second Cleanup: %v", err)
	}
	if err := Probe(filepath.Join(dir, "x"), time.Second); err == nil || IsBroken(err) {
		t.Fatalf("Probe of a missing path = %v, want ENOENT (not broken)", err)
	}
}

func TestIsBroken(t *testing.T) {
	for _, e := range []error{unix.ENOTCONN, unix.EIO, unix.ESTALE, ErrHung} {
		if !IsBroken(&os.PathError{Op: "stat", Path: "/x", Err: e}) && !IsBroken(e) {
			t.Errorf("IsBroken(%v) = false", e)
		}
	}
	if IsBroken(unix.ENOENT) || IsBroken(nil) || IsBroken(errors.New(strings.Repeat("x", 3))) {
		t.Error("IsBroken of a plain error")
	}
}
