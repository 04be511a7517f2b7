package vmtemplate

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseClasses(t *testing.T) {
	got, err := ParseClasses(" 1x128, 2x512,1x128 ,")
	if err != nil {
		t.Fatal(err)
	}
	want := []Class{{1, 128}, {2, 512}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("ParseClasses = %v, want %v", got, want)
	}
	if got[1].String() != "2x512" {
		t.Errorf("String = %q", got[1].String())
	}
	if c, err := ParseClasses(""); err != nil || len(c) != 0 {
		t.Errorf("empty list: %v, %v", c, err)
	}
	for _, bad := range []string{"128", "1x", "x128", "0x128", "65x128", "1x63", "1x-1", "1x128x2", "ax128", "1x99999999999"} {
		if _, err := ParseClass(bad); err == nil {
			t.Errorf("ParseClass(%q) accepted", bad)
		}
	}
}

// The fingerprint changes with what a template is made of, so that a new
// kernel, initramfs or QEMU makes the old template stale.
func TestFingerprint(t *testing.T) {
	dir := t.TempDir()
	files := []string{filepath.Join(dir, "qemu"), filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")}
	for _, f := range files {
		if err := os.WriteFile(f, []byte("v1"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := Class{1, 128}
	base, err := fingerprint(c, "tcg", nil, files...)
	if err != nil {
		t.Fatal(err)
	}
	same, _ := fingerprint(c, "tcg", nil, files...)
	if same != base {
		t.Fatalf("fingerprint not stable: %s, %s", base, same)
	}
	for name, key := range map[string]func() (string, error){
		"class":       func() (string, error) { return fingerprint(Class{2, 128}, "tcg", nil, files...) },
		"accel":       func() (string, error) { return fingerprint(c, "kvm", nil, files...) },
		"kernel args": func() (string, error) { return fingerprint(c, "tcg", []string{"debug"}, files...) },
	} {
		if k, err := key(); err != nil || k == base {
			t.Errorf("%s: fingerprint %s (%v), unchanged", name, k, err)
		}
	}
	// A new initramfs in place (same size, later mtime).
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(files[2], later, later); err != nil {
		t.Fatal(err)
	}
	if k, _ := fingerprint(c, "tcg", nil, files...); k == base {
		t.Error("a changed initramfs left the fingerprint unchanged")
	}
	os.Remove(files[1])
	if _, err := fingerprint(c, "tcg", nil, files...); err == nil {
		t.Error("a missing kernel gave a fingerprint")
	}
}

// A sealed template memory refuses every writer, a clone's QEMU taken over
// by its guest included, yet maps privately: a clone's writes stay its own.
func TestSealedMemory(t *testing.T) {
	f, err := newMemory(Class{1, 64})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("template"), 0); err != nil {
		t.Fatal(err)
	}
	if err := seal(f); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("tampered"), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("write to sealed memory: %v, want EPERM", err)
	}
	// Reopened read-write (as QEMU opens /proc/self/fd/N): still no write.
	rw, err := os.OpenFile("/proc/self/fd/"+itoa(int(f.Fd())), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rw.Close()
	if _, err := rw.WriteAt([]byte("tampered"), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("write through a reopened descriptor: %v, want EPERM", err)
	}
	if err := rw.Truncate(1 << 20); !errors.Is(err, unix.EPERM) {
		t.Errorf("shrink: %v, want EPERM", err)
	}
	if _, err := unix.Mmap(int(rw.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); !errors.Is(err, unix.EPERM) {
		t.Errorf("shared writable mapping: %v, want EPERM", err)
	}
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, 0); err == nil {
		// F_SEAL_SEAL: no further seals (or unseals) either.
		t.Error("seals still changeable")
	}
	p, err := unix.Mmap(int(rw.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("private mapping: %v", err)
	}
	defer unix.Munmap(p)
	if string(p[:8]) != "template" {
		t.Fatalf("clone reads %q", p[:8])
	}
	copy(p, "clone's!")
	b := make([]byte, 8)
	if _, err := f.ReadAt(b, 0); err != nil || string(b) != "template" {
		t.Errorf("template after a clone's write: %q, %v", b, err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestFactoryWithoutTemplate(t *testing.T) {
	f := New(Config{Dir: t.TempDir(), Classes: []Class{{1, 128}}})
	defer f.Close()
	if _, err := f.Get(Class{2, 256}); !errors.Is(err, ErrNoClass) {
		t.Errorf("unknown class: %v", err)
	}
	if _, err := f.Get(Class{1, 128}); !errors.Is(err, ErrBuilding) {
		t.Errorf("class not built yet: %v", err)
	}
	infos := f.Info()
	if len(infos) != 1 || infos[0].Class != (Class{1, 128}) || infos[0].State != StateBuilding {
		t.Errorf("Info = %+v", infos)
	}
}
