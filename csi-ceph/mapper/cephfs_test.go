package mapper

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func fakeCephFSHost(t *testing.T, kernel, fuseBin, devFuse bool) CephFS {
	t.Helper()
	dir := t.TempDir()
	fs := "nodev\tsysfs\nnodev\tproc\n\text4\n"
	if kernel {
		fs += "nodev\tceph\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "filesystems"), []byte(fs), 0o644); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	if devFuse {
		mustMkfile(t, filepath.Join(dev, "fuse"))
	}
	look := func(name string) (string, error) {
		if fuseBin && name == "ceph-fuse" {
			return "/usr/bin/ceph-fuse", nil
		}
		return "", errors.New("not found")
	}
	return CephFS{FuseBin: "ceph-fuse", Filesystems: filepath.Join(dir, "filesystems"), DevRoot: dev, LookPath: look}
}

func TestCephFSChoose(t *testing.T) {
	both := fakeCephFSHost(t, true, true, true)
	if got := both.Available(); !slices.Equal(got, []string{CephFSKernel, CephFSFuse}) {
		t.Fatalf("Available = %v", got)
	}
	if m, err := both.Choose(""); err != nil || m != CephFSKernel {
		t.Fatalf("Choose() = %v, %v; want the kernel client first", m, err)
	}
	if m, err := both.Choose(CephFSFuse); err != nil || m != CephFSFuse {
		t.Fatalf("Choose(fuse) = %v, %v", m, err)
	}
	// This machine's kind: no kernel client.
	fuseOnly := fakeCephFSHost(t, false, true, true)
	if m, err := fuseOnly.Choose(""); err != nil || m != CephFSFuse {
		t.Fatalf("Choose() on a fuse-only host = %v, %v", m, err)
	}
	if _, err := fuseOnly.Choose(CephFSKernel); err == nil || !strings.Contains(err.Error(), "not available") {
		t.Fatalf("Choose(kernel) on a fuse-only host = %v", err)
	}
	if _, err := fuseOnly.Choose("krbd"); err == nil {
		t.Fatal("unknown mounter accepted")
	}
	if _, err := fakeCephFSHost(t, false, true, false).Choose(""); err == nil {
		t.Fatal("a host without /dev/fuse or the kernel client chose a mounter")
	}
}

func TestParseFSMountOptions(t *testing.T) {
	got, err := ParseFSMountOptions(" ms_mode=prefer-crc, recover_session=clean ")
	if err != nil || !slices.Equal(got, []string{"ms_mode=prefer-crc", "recover_session=clean"}) {
		t.Fatalf("ParseFSMountOptions = %v, %v", got, err)
	}
	if got, err := ParseFSMountOptions(""); err != nil || got != nil {
		t.Fatalf("empty: %v, %v", got, err)
	}
	for _, bad := range []string{"a,,b", "-o", "name=admin", "secretfile=/etc/x", "mds_namespace=x", "a b", `a"b`, "fs=x"} {
		if _, err := ParseFSMountOptions(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseFSMountOptions(f *testing.F) {
	for _, s := range []string{"", "a=b,c", "name=x", "-d", "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		opts, err := ParseFSMountOptions(s)
		if err != nil {
			return
		}
		for _, o := range opts {
			if o == "" || strings.HasPrefix(o, "-") || strings.ContainsAny(o, " \t\n'\"\\,") {
				t.Fatalf("%q gave option %q", s, o)
			}
		}
	})
}
