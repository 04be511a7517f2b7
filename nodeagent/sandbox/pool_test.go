package sandbox

import (
	"errors"
	"log/slog"
	"testing"

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
// parent (its VMs' cgroups are renamed, not moved), oldest first.
func TestTakePooled(t *testing.T) {
	c := vmtemplate.Class{VCPUs: 1, MemoryMiB: 128}
	a, b := &box{}, &box{}
	m := &Manager{log: slog.Default(), pool: &pool{size: 2, classes: []vmtemplate.Class{c},
		idle: map[vmtemplate.Class][]*box{c: {a, b}}, booting: map[vmtemplate.Class]int{}, failed: map[vmtemplate.Class]string{}}}
	if got := m.takePooledLocked(Spec{VCPUs: 2, MemoryMiB: 128}); got != nil {
		t.Error("took a VM of another class")
	}
	if got := m.takePooledLocked(Spec{VCPUs: 1, MemoryMiB: 128, CgroupParent: "/kubepods/pod1"}); got != nil {
		t.Error("took a VM for a sandbox under another cgroup parent")
	}
	if got := m.takePooledLocked(Spec{VCPUs: 1, MemoryMiB: 128}); got != a {
		t.Error("did not take the oldest idle VM")
	}
	if info := m.Pool(); len(info) != 1 || info[0].Ready != 1 {
		t.Errorf("Pool() = %+v, want one class with 1 ready", info)
	}
	m.takePooledLocked(Spec{VCPUs: 1, MemoryMiB: 128})
	if got := m.takePooledLocked(Spec{VCPUs: 1, MemoryMiB: 128}); got != nil {
		t.Error("took from an empty pool")
	}
	if (&Manager{}).takePooledLocked(Spec{VCPUs: 1, MemoryMiB: 128}) != nil {
		t.Error("took from no pool")
	}
}
