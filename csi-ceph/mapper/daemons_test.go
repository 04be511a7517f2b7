package mapper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
)

func TestCgroupRoots(t *testing.T) {
	parse := func(s string) []mounts.Mount {
		all, err := mounts.Parse([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return all
	}
	// v1 with the hybrid unified hierarchy; a container runtime's own
	// mount of a part of one hierarchy, covered by the host's.
	v1 := parse(`25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:24 /kubepods/pod1/c1 /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
29 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
30 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
`)
	got, err := cgroupRoots(v1)
	if err != nil || strings.Join(got, " ") != "/sys/fs/cgroup/unified /sys/fs/cgroup/memory /sys/fs/cgroup/devices /sys/fs/cgroup/systemd" {
		t.Fatalf("cgroupRoots(v1) = %v, %v", got, err)
	}
	v2 := parse("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
	if got, err := cgroupRoots(v2); err != nil || len(got) != 1 || got[0] != "/sys/fs/cgroup" {
		t.Fatalf("cgroupRoots(v2) = %v, %v", got, err)
	}
	// A container that sees only its own part: a group made there would
	// be inside the container's cgroup.
	inside := parse("25 1 0:22 /kubepods/pod1/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
	if _, err := cgroupRoots(inside); err == nil || !strings.Contains(err.Error(), "mount the host's /sys/fs/cgroup") {
		t.Fatalf("cgroupRoots of a container's view = %v", err)
	}
	if _, err := cgroupRoots(parse("25 1 0:22 / / rw - ext4 /dev/sda rw\n")); err == nil {
		t.Fatal("no cgroup hierarchy accepted")
	}
}

func TestNewDaemonsRefusesBadParents(t *testing.T) {
	for _, p := range []string{"/", "relative", "/a/../b", "/a/", "/a b"} {
		if _, err := NewDaemons(p); err == nil {
			t.Errorf("NewDaemons(%q) succeeded", p)
		}
	}
	d, err := NewDaemons("")
	if err != nil || len(d.Dirs()) != 0 {
		t.Fatalf("NewDaemons(\"\") = %+v, %v", d, err)
	}
}

// On the real hierarchies: a daemon started through Daemons is in the
// group in every hierarchy before it runs a single instruction of its own.
func TestDaemonsMoveBeforeExec(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates cgroups")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	parent := "/csi-ceph-test-" + hex.EncodeToString(b) + "/mappers"
	d, err := NewDaemons(parent)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, dir := range d.Dirs() {
			_ = os.Remove(dir)
			_ = os.Remove(strings.TrimSuffix(dir, "/mappers"))
		}
	})
	if len(d.Dirs()) == 0 {
		t.Fatal("no hierarchy")
	}
	// Twice: an existing group is reused.
	if _, err := NewDaemons(parent); err != nil {
		t.Fatal(err)
	}
	out, err := run(context.Background(), "cat", d.command(context.Background(), "cat", "/proc/self/cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < len(d.Dirs()) {
		t.Fatalf("/proc/self/cgroup:\n%s", out)
	}
	for _, l := range lines {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 || f[2] != parent {
			t.Errorf("the daemon is not in %s in every hierarchy:\n%s", parent, out)
			break
		}
	}
	// Without a group, a daemon stays where its caller is.
	self, _ := os.ReadFile("/proc/self/cgroup")
	out, err = run(context.Background(), "cat", (*Daemons)(nil).command(context.Background(), "cat", "/proc/self/cgroup"))
	if err != nil || out != string(self) {
		t.Errorf("nil Daemons: %q, %v; want the caller's %q", out, err, self)
	}
}
