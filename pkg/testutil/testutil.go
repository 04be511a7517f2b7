// Package testutil has fixtures for tests that need root and real kernel
// objects: network namespaces that clean up after themselves, and the Ceph
// environment (a test cluster, csi-ceph in front of it) that the storage
// tests, benchmark and demo share.
package testutil

import (
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// RequiresRoot skips t with a reason when the test does not run as root.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it creates network namespaces and links")
	}
}

// NewNS creates a network namespace with a unique name, bind-mounted under
// /run/netns, and removes it when the test ends.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	RequiresRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

// Do runs f inside n on a locked thread and fails t on error.
func Do(t testing.TB, n ns.NetNS, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}
