package cgroup

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Kernel files read whole whatever their size, and their errors are
// the os package's (a missing file is fs.ErrNotExist, the path named).
func TestKernelFileReadWrite(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int{0, 1, 511, 512, 513, 4096, 100_000} {
		want := bytes.Repeat([]byte("0123456789\n"), size/11+1)[:size]
		f := filepath.Join(dir, "f")
		if err := os.WriteFile(f, want, 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := readKernelFile(f)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("size %d: read %d bytes, %v", size, len(got), err)
		}
	}
	f := filepath.Join(dir, "new")
	if err := writeKernelFile(f, "12345"); err != nil {
		t.Fatal(err)
	}
	if err := writeKernelFile(f, "7"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f); string(b) != "7" {
		t.Errorf("after two writes: %q, want the last one alone", b)
	}
	_, err := readKernelFile(filepath.Join(dir, "missing"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
	if err := writeKernelFile(filepath.Join(dir, "no", "such"), "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("write into a missing dir: %v", err)
	}
	if _, err := readKernelFile(dir); err == nil {
		t.Error("reading a directory succeeded")
	}
}

// On the host's cgroup files (pollable, generated at each read) the
// reads match os.ReadFile's.
func TestKernelFileCgroupfs(t *testing.T) {
	f := "/sys/fs/cgroup/memory/memory.stat"
	if _, err := os.Stat(f); err != nil {
		f = "/sys/fs/cgroup/cgroup.controllers"
		if _, err := os.Stat(f); err != nil {
			t.Skip("no cgroup v1 memory or v2 hierarchy mounted at /sys/fs/cgroup")
		}
	}
	got, err := readKernelFile(f)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(f)
	// Counters move between the reads: compare the keys.
	if k := keys(got); k != keys(want) || k == "" {
		t.Errorf("%s: keys %q, os.ReadFile's %q", f, k, keys(want))
	}
}

func keys(b []byte) string {
	var ks []string
	for _, l := range strings.Split(string(b), "\n") {
		if k, _, _ := strings.Cut(l, " "); k != "" {
			ks = append(ks, k)
		}
	}
	return strings.Join(ks, ",")
}

// The v1 accounting parsers, on the kernel's formats.
func TestV1Parsers(t *testing.T) {
	cpu := "nr_periods 40\nnr_throttled 12\nthrottled_time 900000\nnr_bursts 0\n"
	if keyed(cpu, "nr_throttled") != 12 || keyed(cpu, "throttled_time") != 900000 || keyed(cpu, "nr_period") != 0 || keyed("", "x") != 0 {
		t.Error("keyed misread cpu.stat")
	}
	if v, err := parseUint("max\n"); v != 0 || err != nil {
		t.Errorf("max: %d, %v", v, err)
	}
	if _, err := parseUint("12x\n"); err == nil {
		t.Error("a malformed number parsed")
	}
	blkio := "8:0 Read 1024\n8:0 Write 2048\n8:0 Sync 3072\n8:0 Total 3072\n253:1 Read 5\n253:1 Write 0\nbad line\n9:x Read 7\nTotal 3077\n"
	rows := parseBlkio(blkio)
	want := []blkioRow{{major: 8, minor: 0, read: 1024, write: 2048}, {major: 253, minor: 1, read: 5}}
	if len(rows) != len(want) || rows[0] != want[0] || rows[1] != want[1] {
		t.Errorf("parseBlkio = %+v, want %+v", rows, want)
	}
}
