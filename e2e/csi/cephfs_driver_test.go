package csi_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// fsDriver is the csi-ceph binary with --type cephfs in mode all against
// the run's cluster, with a subvolume group, state, socket and ceph-fuse
// cgroup of its own; the group is removed when the test ends.
type fsDriver struct {
	csi.ControllerClient
	csi.NodeClient
	cl      testutil.CephCluster
	secrets map[string]string
	params  map[string]string
	group   string
	dir     string
	config  string
	mappers *cgroup
	cmd     *exec.Cmd
	conn    *grpc.ClientConn
	log     bytes.Buffer
}

func uniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// cephCmd runs the ceph CLI against the test cluster and returns its
// stdout; an error carries stderr.
func cephCmd(cl testutil.CephCluster, args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command("ceph", append([]string{"-c", cl.Conf}, args...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ceph %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// startFSDriver starts the CephFS driver; extra are more flags.
func startFSDriver(t *testing.T, extra ...string) *fsDriver {
	t.Helper()
	testutil.RequiresRoot(t)
	bin := os.Getenv("NODEINFRA_BIN")
	if bin == "" {
		t.Skip("needs NODEINFRA_BIN: run `make test`")
	}
	cl := testutil.Ceph(t)
	dir := t.TempDir()
	d := &fsDriver{cl: cl, secrets: cl.Secrets(), group: uniqueName("e2e"), dir: dir, config: filepath.Join(dir, "config.json")}
	d.params = map[string]string{"clusterID": cl.ClusterID, "fsName": "cephfs"}
	cfg := fmt.Sprintf(`[{"clusterID": %q, "monitors": [%q], "cephFS": {"subvolumeGroup": %q}}]`, cl.ClusterID, cl.Monitors[0], d.group)
	if err := os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered first, so run last: after the volumes and the driver.
	t.Cleanup(func() {
		out, err := cephCmd(cl, "fs", "subvolume", "ls", "cephfs", "--group_name", d.group)
		if err == nil && strings.TrimSpace(out) != "[]" && !t.Failed() {
			t.Errorf("subvolumes left in group %s: %s", d.group, out)
		}
		if err := removeGroup(cl, d.group); err != nil {
			t.Errorf("remove subvolume group %s: %v", d.group, err)
		}
	})
	d.mappers = newCgroup(t, "fuse", true)
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("driver log:\n%s", d.log.String())
		}
	})
	sock := filepath.Join(dir, "csi.sock")
	args := append([]string{"--type", "cephfs", "--endpoint", "unix://" + sock, "--nodeid", "fs-node", "--mode", "all",
		"--cluster-config", d.config, "--state-dir", filepath.Join(dir, "state"), "--mapper-cgroup", d.mappers.path}, extra...)
	d.cmd = exec.Command(filepath.Join(bin, "csi-ceph"), args...)
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.conn = conn
	d.ControllerClient, d.NodeClient = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	return d
}

func (d *fsDriver) stop() {
	if d.conn != nil {
		d.conn.Close()
	}
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
	}
}

// removeGroup removes a test's subvolume group with whatever a failed
// test left in it: clones are cancelled, snapshots and subvolumes
// removed.
func removeGroup(cl testutil.CephCluster, group string) error {
	out, err := cephCmd(cl, "fs", "subvolume", "ls", "cephfs", "--group_name", group)
	if err != nil {
		return err
	}
	var subs []struct{ Name string }
	if err := json.Unmarshal([]byte(out), &subs); err != nil {
		return fmt.Errorf("subvolume ls: %w: %s", err, out)
	}
	for _, s := range subs {
		_, _ = cephCmd(cl, "fs", "clone", "cancel", "cephfs", s.Name, "--group_name", group)
		if out, err := cephCmd(cl, "fs", "subvolume", "snapshot", "ls", "cephfs", s.Name, "--group_name", group); err == nil {
			var snaps []struct{ Name string }
			_ = json.Unmarshal([]byte(out), &snaps)
			for _, sn := range snaps {
				_, _ = cephCmd(cl, "fs", "subvolume", "snapshot", "rm", "cephfs", s.Name, sn.Name, "--group_name", group, "--force")
			}
		}
		if _, err := cephCmd(cl, "fs", "subvolume", "rm", "cephfs", s.Name, "--group_name", group, "--force"); err != nil {
			return err
		}
	}
	_, err = cephCmd(cl, "fs", "subvolumegroup", "rm", "cephfs", group, "--force")
	return err
}
