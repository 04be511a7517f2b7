package sandbox_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// An RBD disk is opened as its own least-privilege cephx user, given with
// the disk: the agent has no default user (no admin key), the key is used
// by QEMU only and is neither stored in the record nor returned.
func TestSandboxRBDLeastPrivilegeUser(t *testing.T) {
	cluster := testutil.Ceph(t)
	e := newEnvIn(t, false, "--ceph-conf", cluster.Conf)
	ceph := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], append([]string{"-c", cluster.Conf, "-k", cluster.Keyring}, args[1:]...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	user := "sbx-" + randHex(4)
	key := ceph("ceph", "auth", "get-or-create-key", "client."+user, "mon", "profile rbd", "osd", "profile rbd pool=rbd")
	t.Cleanup(func() {
		exec.Command("ceph", "-c", cluster.Conf, "-k", cluster.Keyring, "auth", "del", "client."+user).Run()
	})
	image := "sbx-lp-" + randHex(4)
	ceph("rbd", "create", "--size", "64", "rbd/"+image)
	t.Cleanup(func() { exec.Command("rbd", "-c", cluster.Conf, "-k", cluster.Keyring, "rm", "rbd/"+image).Run() })

	e.create(&apiv1.SandboxSpec{Id: "vm-lp"})
	noUser := &apiv1.Disk{Id: "data", Source: &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: "rbd", Image: image}}}
	if _, err := e.cl.AttachDisk(e.ctx, &apiv1.AttachDiskRequest{SandboxId: "vm-lp", Disk: noUser}); code(err) != codes.FailedPrecondition ||
		!strings.Contains(fmt.Sprint(err), "no cephx user") {
		t.Errorf("RBD disk without a user on an agent without --ceph-user: %v, want FailedPrecondition", err)
	}
	vol := &apiv1.Disk{Id: "data", Source: &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: "rbd", Image: image, User: user, Key: key}}}
	s, err := e.cl.AttachDisk(e.ctx, &apiv1.AttachDiskRequest{SandboxId: "vm-lp", Disk: vol})
	if err != nil || len(s.Disks) != 1 {
		t.Fatalf("hot-plug RBD as %s: %v, %v", user, s, err)
	}
	if r := s.Disks[0].GetRbd(); r.GetUser() != user || r.GetKey() != "" {
		t.Errorf("returned disk: user %q, key %q; want the user and no key", r.GetUser(), r.GetKey())
	}
	msg := "least-privilege-" + randHex(6)
	e.sh("vm-lp", findDisk+fmt.Sprintf("dev=$(find_disk data) || exit 1; echo %s | dd of=$dev bs=512 count=1 conv=sync,fsync 2>/dev/null", msg))
	if got := e.sh("vm-lp", findDisk+"dev=$(find_disk data) || exit 1; dd if=$dev bs=512 count=1 2>/dev/null | head -n 1"); strings.TrimSpace(got) != msg {
		t.Errorf("read back %q, want %q", got, msg)
	}
	rec, err := os.ReadFile(filepath.Join(e.Agent.StateDir, "sandboxes", "vm-lp", "sandbox.json"))
	if err != nil || strings.Contains(string(rec), key) || !strings.Contains(string(rec), user) {
		t.Errorf("the record names the user and holds no key: %v\n%s", err, rec)
	}
	// Attaching again with the same disk (the key is not kept) is a no-op.
	if _, err := e.cl.AttachDisk(e.ctx, &apiv1.AttachDiskRequest{SandboxId: "vm-lp", Disk: vol}); err != nil {
		t.Errorf("attach again (idempotent): %v", err)
	}
}
