package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	in := "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"40 36 0:50 / /tmp/soak\\040dir/s rw shared:2 - fuse.rbd-fuse rbd-fuse rw\n" +
		"41 36 0:51 / /x rw - tmpfs tmpfs rw\n\n"
	got := parseMountinfo([]byte(in))
	want := []mount{{"/mnt2", "ext3"}, {"/tmp/soak dir/s", "fuse.rbd-fuse"}, {"/x", "tmpfs"}}
	if len(got) != len(want) {
		t.Fatalf("parseMountinfo = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %v, want %v", i, got[i], want[i])
		}
	}
}

func TestUnder(t *testing.T) {
	for _, tc := range []struct {
		dir, p string
		want   bool
	}{
		{"/tmp/a", "/tmp/a", true},
		{"/tmp/a", "/tmp/a/b", true},
		{"/tmp/a/", "/tmp/a/b", true},
		{"/tmp/a", "/tmp/ab", false},
		{"/tmp/a", "/tmp", false},
	} {
		if got := under(tc.dir, tc.p); got != tc.want {
			t.Errorf("under(%q, %q) = %v", tc.dir, tc.p, got)
		}
	}
}

func TestMetricValue(t *testing.T) {
	body := []byte("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" +
		"# HELP go_goroutines Number of goroutines that currently exist.\n# TYPE go_goroutines gauge\n" +
		"go_goroutines_other 3\ngo_goroutines 42\n")
	if v, err := metricValue(body, "go_goroutines"); err != nil || v != 42 {
		t.Errorf("metricValue = %v, %v; want 42", v, err)
	}
	if _, err := metricValue(body, "go_threads"); err == nil {
		t.Error("a missing metric is not an error")
	}
}

func TestCountCgroupsAndFiles(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"p/a", "p/b/c"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "p", "cgroup.procs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := countCgroups(filepath.Join(dir, "p")); err != nil || n != 3 {
		t.Errorf("countCgroups = %d, %v; want 3 (a, b, b/c)", n, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "p", "b", "rec.json"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, size, err := countFiles(filepath.Join(dir, "p")); err != nil || n != 5 || size != 3 {
		t.Errorf("countFiles = %d, %d bytes, %v; want 5, 3 bytes", n, size, err)
	}
	if n, err := countCgroups(filepath.Join(dir, "absent")); err != nil || n != 0 {
		t.Errorf("countCgroups of an absent dir = %d, %v; want 0, nil", n, err)
	}
}
