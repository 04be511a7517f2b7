package driver

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestIsBlank(t *testing.T) {
	dir := t.TempDir()
	blank := filepath.Join(dir, "blank")
	if err := os.WriteFile(blank, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := isBlank(blank); err != nil || !ok {
		t.Fatalf("zeros: %v %v", ok, err)
	}
	// An ext4 superblock sits at 1024; xfs's at 0: any byte in the first
	// 64 KiB means "not blank".
	b := make([]byte, 1<<20)
	b[1024+56] = 0x53
	used := filepath.Join(dir, "used")
	if err := os.WriteFile(used, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := isBlank(used); err != nil || ok {
		t.Fatalf("superblock: %v %v", ok, err)
	}
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, make([]byte, 100), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := isBlank(small); err != nil || !ok {
		t.Fatalf("short device: %v %v", ok, err)
	}
	if _, err := isBlank(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing device accepted")
	}
}

func TestMkfsAndMountOptions(t *testing.T) {
	if got := mkfsOptions("ext4", nil); !slices.Equal(got, []string{"-b", "4096", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"}) {
		t.Errorf("ext4 defaults: %v", got)
	}
	if got := mkfsOptions("xfs", nil); !slices.Equal(got, []string{"-K"}) {
		t.Errorf("xfs defaults: %v", got)
	}
	// A StorageClass's mkfsOptions replace the defaults.
	if got := mkfsOptions("ext4", []string{"-m0", "-Enodiscard"}); !slices.Equal(got, []string{"-m0", "-Enodiscard"}) {
		t.Errorf("custom: %v", got)
	}
	// xfs is mounted nouuid, so that a clone mounts beside its source.
	if got := mountOptions("xfs", []string{"noatime"}, true); !slices.Equal(got, []string{"noatime", "ro", "nouuid"}) {
		t.Errorf("xfs: %v", got)
	}
	if got := mountOptions("xfs", []string{"nouuid"}, false); !slices.Equal(got, []string{"nouuid"}) {
		t.Errorf("xfs with nouuid given: %v", got)
	}
	if got := mountOptions("ext4", nil, false); len(got) != 0 {
		t.Errorf("ext4: %v", got)
	}
}
