package sandbox

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/vmtemplate"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// No sandbox ID can name a pool VM: the API never finds, lists or
// creates one.
func TestPoolIDsAreNotSandboxIDs(t *testing.T) {
	id := poolPrefix + "1x128-abcd"
	if !isPoolID(id) {
		t.Fatalf("isPoolID(%q) = false", id)
	}
	if err := ValidateID(id); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("ValidateID(%q) = %v, want InvalidArgument", id, err)
	}
	for _, ok := range []string{"pool-1x128-abcd", "web-1"} {
		if isPoolID(ok) {
			t.Errorf("isPoolID(%q) = true", ok)
		}
	}
}

// A pool serves only its classes, only under the agent's own cgroup
// parent (its VMs' cgroups are renamed, not moved), oldest first, and only
// VMs booted from the guest files in place now.
func TestTakePooled(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{}
	for _, f := range []string{"qemu", "vmlinux", "initrd"} {
		files[f] = filepath.Join(dir, f)
		if err := os.WriteFile(files[f], []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := vmtemplate.Class{VCPUs: 1, MemoryMiB: 128}
	m := &Manager{log: slog.Default(), accel: "tcg", cfg: Config{QEMU: files["qemu"], Kernel: files["vmlinux"], Initrd: files["initrd"]}}
	key, err := m.poolKey(c)
	if err != nil {
		t.Fatal(err)
	}
	a, b, d := &box{}, &box{}, &box{}
	// closed: the test's takes start no refill.
	m.pool = &pool{size: 2, classes: []vmtemplate.Class{c}, closed: true,
		idle: map[vmtemplate.Class][]*box{c: {a, b, d}}, keys: map[*box]string{a: key, b: key, d: key},
		booting: map[vmtemplate.Class]int{}, failed: map[vmtemplate.Class]string{}}
	if got := m.takePooledLocked(Spec{VCPUs: 2, MemoryMiB: 128}); got != nil {
		t.Error("took a VM of another class")
	}
	if got := m.takePooledLocked(Spec{VCPUs: 1, MemoryMiB: 128, CgroupParent: "/kubepods/pod1"}); got != nil {
		t.Error("took a VM for a sandbox under another cgroup parent")
	}
	if got := m.takePooledLocked(Spec{VCPUs: 1, MemoryMiB: 128}); got != a {
		t.Error("did not take the oldest idle VM")
	}
	if info := m.Pool(); len(info) != 1 || info[0].Ready != 2 {
		t.Errorf("Pool() = %+v, want one class with 2 ready", info)
	}
	// A new initramfs: the idle VMs are stale, the create boots cold.
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(files["initrd"], later, later); err != nil {
		t.Fatal(err)
	}
	if got := m.takePooledLocked(Spec{VCPUs: 1, MemoryMiB: 128}); got != nil {
		t.Error("took a VM booted from the old initramfs")
	}
	if info := m.Pool(); info[0].Ready != 0 {
		t.Errorf("stale VMs still idle: %+v", info)
	}
	if (&Manager{}).takePooledLocked(Spec{VCPUs: 1, MemoryMiB: 128}) != nil {
		t.Error("took from no pool")
	}
}

func TestPoolRetryBacksOff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: 5 * time.Second, 2: 10 * time.Second, 4: 40 * time.Second, 7: 5 * time.Minute, 100: 5 * time.Minute} {
		if got := poolRetry(n); got != want {
			t.Errorf("poolRetry(%d) = %v, want %v", n, got, want)
		}
	}
}

// What an old or tampered record names is used only if the agent could
// have made it: a recorded QEMU name is a marker re-adoption matches (and
// kills by), a held tap a link it deletes.
func TestRecordedPoolNamesAreChecked(t *testing.T) {
	r := record{Sandbox: Sandbox{Spec: Spec{ID: "web-1"}}}
	for name, want := range map[string]string{
		"sandbox-_pool-1x128-0a1b2c3d": "sandbox-_pool-1x128-0a1b2c3d",
		"":                             "sandbox-web-1",
		"-S":                           "sandbox-web-1",
		"sandbox-other":                "sandbox-web-1",
		"sandbox-_pool-1x128-0A1B2C3D": "sandbox-web-1",
		"sandbox-_pool-big-0a1b2c3d":   "sandbox-web-1",
	} {
		r.QEMUName = name
		if got := r.qemuName(); got != want {
			t.Errorf("qemuName with %q recorded = %q, want %q", name, got, want)
		}
	}
	for tap, want := range map[string]string{"np0a1b2c3d": "np0a1b2c3d", "eth0": "", "np0a1b": "", "tap0": "", "np0a1b2c3z": ""} {
		r.PoolTap = tap
		if got := r.poolTap(); got != want {
			t.Errorf("poolTap with %q recorded = %q, want %q", tap, got, want)
		}
	}
}
