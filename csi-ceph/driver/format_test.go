package driver

import (
	"os"
	"path/filepath"
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
