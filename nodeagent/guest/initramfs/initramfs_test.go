package initramfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

// readNewc is an independent reader of the format, for the tests.
func readNewc(t *testing.T, b []byte) []Entry {
	t.Helper()
	var out []Entry
	off := 0
	for {
		if off+newcHeaderSize > len(b) {
			t.Fatalf("truncated header at %d", off)
		}
		h := b[off : off+newcHeaderSize]
		if string(h[:6]) != newcMagic {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(h[6+8*i:6+8*i+8]), 16, 32)
			if err != nil {
				t.Fatalf("field %d at %d: %v", i, off, err)
			}
			return int(v)
		}
		mode, size, rmaj, rmin, namesize := field(1), field(6), field(9), field(10), field(11)
		nameStart := off + newcHeaderSize
		name := string(b[nameStart : nameStart+namesize-1])
		if b[nameStart+namesize-1] != 0 {
			t.Fatalf("%s: name not NUL-terminated", name)
		}
		if (nameStart+namesize)%4 != 0 && b[nameStart+namesize] != 0 {
			t.Fatalf("%s: header padding not zero", name)
		}
		dataStart := pad4(nameStart + namesize)
		if off%4 != 0 || dataStart%4 != 0 {
			t.Fatalf("%s: misaligned", name)
		}
		if name == Trailer {
			if pad4(dataStart) != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-dataStart)
			}
			return out
		}
		e := Entry{Name: name, Mode: uint32(mode), Major: uint32(rmaj), Minor: uint32(rmin)}
		if size > 0 {
			e.Data = b[dataStart : dataStart+size]
		}
		out = append(out, e)
		off = pad4(dataStart + size)
	}
}

func TestWriteNewcRoundTrip(t *testing.T) {
	entries := []Entry{
		Dir("dev", 0o755),
		CharDev("dev/console", 0o600, 5, 1),
		Dir("bin", 0o755),
		File("bin/a", 0o755, []byte("x")),
		File("bin/ab", 0o644, []byte("xy")),
		File("bin/abc", 0o644, []byte("xyz")),
		File("bin/abcd", 0o644, []byte("wxyz")),
		File("empty", 0o600, nil),
		Symlink("bin/sh", "busybox"),
	}
	var buf bytes.Buffer
	if err := WriteNewc(&buf, entries); err != nil {
		t.Fatal(err)
	}
	got := readNewc(t, buf.Bytes())
	if !reflect.DeepEqual(got, entries) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, entries)
	}
}

func TestWriteNewcRejects(t *testing.T) {
	for _, e := range []Entry{
		{Name: "", Mode: TypeDir | 0o755},
		{Name: "/abs", Mode: TypeDir | 0o755},
		{Name: "a/../b", Mode: TypeDir | 0o755},
		{Name: "../up", Mode: TypeReg | 0o644},
		{Name: Trailer, Mode: TypeReg | 0o644},
		{Name: "fifo", Mode: 0o010644},
		{Name: "dir", Mode: TypeDir | 0o755, Data: []byte("x")},
	} {
		if err := WriteNewc(io.Discard, []Entry{e}); !errors.Is(err, ErrBadEntry) {
			t.Errorf("%+v: %v, want ErrBadEntry", e, err)
		}
	}
}

// busybox's cpio, an independent implementation, unpacks what we write.
func TestBusyboxUnpacks(t *testing.T) {
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		t.Skip("needs /bin/busybox (busybox-static)")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "initramfs.cpio")
	// busybox is static: it stands in for the agent as /init.
	if err := WriteFile(context.Background(), out, Spec{Init: bb, Busybox: bb}); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bb, "cpio", "-i", "-d")
	cmd.Dir, cmd.Stdin = root, f
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox cpio -i: %v\n%s", err, b)
	}
	for _, name := range []string{"init", "bin/busybox", "etc/passwd"} {
		if st, err := os.Stat(filepath.Join(root, name)); err != nil || !st.Mode().IsRegular() {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, name := range []string{"sh", "ip", "ping", "cat", "dd", "ls", "mount", "sync"} {
		if target, err := os.Readlink(filepath.Join(root, "bin", name)); err != nil || target != "busybox" {
			t.Errorf("bin/%s: %q, %v", name, target, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "bin/init")); err == nil {
		t.Error("bin/init is linked to busybox")
	}
	if os.Geteuid() == 0 {
		st, err := os.Stat(filepath.Join(root, "dev/console"))
		if err != nil || st.Mode()&os.ModeCharDevice == 0 {
			t.Errorf("dev/console: %v, %v", st, err)
		}
	}
	sh := exec.Command(filepath.Join(root, "bin/sh"), "-c", "echo ok")
	if b, err := sh.Output(); err != nil || string(b) != "ok\n" {
		t.Errorf("bin/sh: %q, %v", b, err)
	}
	entries, err := os.ReadDir(filepath.Join(root, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d entries in /bin", len(entries))
}

func TestEntriesRejectsDynamic(t *testing.T) {
	dynamic, err := exec.LookPath("ls")
	if err != nil {
		t.Skip("no ls")
	}
	bb := "/bin/busybox"
	_, err = Entries(context.Background(), Spec{Init: dynamic, Busybox: bb, Applets: []string{"sh"}})
	if !errors.Is(err, ErrNotStatic) {
		t.Fatalf("dynamic init: %v, want ErrNotStatic", err)
	}
	_, err = Entries(context.Background(), Spec{Init: "/nonexistent", Busybox: bb})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing init: %v", err)
	}
}

func TestEntriesOrder(t *testing.T) {
	bb := "/bin/busybox"
	if _, err := os.Stat(bb); err != nil {
		t.Skip("needs /bin/busybox (busybox-static)")
	}
	entries, err := Entries(context.Background(), Spec{Init: bb, Busybox: bb, Applets: []string{"sh", "sh", "init", "ls"},
		Extra: []Entry{File("sbin/extra", 0o755, []byte("x"))}})
	if err != nil {
		t.Fatal(err)
	}
	dirs := map[string]bool{".": true}
	var links []string
	for _, e := range entries {
		if parent := filepath.Dir(e.Name); !dirs[parent] {
			t.Errorf("%s comes before its directory", e.Name)
		}
		if e.Mode&TypeMask == TypeDir {
			dirs[e.Name] = true
		}
		if e.Mode&TypeMask == TypeSymlink {
			links = append(links, e.Name)
		}
	}
	if fmt.Sprint(links) != "[bin/sh bin/ls]" {
		t.Errorf("links %v", links)
	}
	if last := entries[len(entries)-1]; last.Name != "sbin/extra" || entries[len(entries)-2].Name != "init" {
		t.Errorf("the extra entry is not last, after /init: %q", last.Name)
	}
}
