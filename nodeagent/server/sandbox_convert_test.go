package server

import (
	"testing"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
)

// An RBD disk's cephx key goes in, never out.
func TestRBDKeyIsWriteOnly(t *testing.T) {
	in := &apiv1.Disk{Id: "d", Source: &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: "p", Image: "i", User: "tenant-a", Key: "QUFBQQ=="}}}
	d := DiskFromProto(in)
	if d.RBD == nil || d.RBD.User != "tenant-a" || d.RBD.Key != "QUFBQQ==" {
		t.Fatalf("DiskFromProto = %+v", d.RBD)
	}
	out := DiskToProto(d)
	if out.GetRbd().GetUser() != "tenant-a" || out.GetRbd().GetKey() != "" {
		t.Errorf("DiskToProto returns user %q key %q; want the user, no key", out.GetRbd().GetUser(), out.GetRbd().GetKey())
	}
	sb := SandboxToProto(sandbox.Sandbox{Spec: sandbox.Spec{ID: "x", Disks: []sandbox.Disk{d}}, Disks: []sandbox.Disk{d}})
	if sb.GetSpec().GetDisks()[0].GetRbd().GetKey() != "" || sb.GetDisks()[0].GetRbd().GetKey() != "" {
		t.Error("SandboxToProto returns a key")
	}
}
