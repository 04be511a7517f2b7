// Package csi_test runs csi-sanity (kubernetes-csi/csi-test, pinned by the
// Makefile) against csi-ceph on the run's Ceph cluster, for RBD in mount
// and in block mode.
package csi_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

func binaries(t *testing.T) (driver, sanity string) {
	t.Helper()
	bin := os.Getenv("NODEINFRA_BIN")
	sanity = os.Getenv("NODEINFRA_CSI_SANITY")
	if bin == "" || sanity == "" {
		t.Skip("needs NODEINFRA_BIN and NODEINFRA_CSI_SANITY: run `make test`")
	}
	return filepath.Join(bin, "csi-ceph"), sanity
}

func TestCSISanity(t *testing.T) {
	testutil.RequiresRoot(t)
	driverBin, sanityBin := binaries(t)
	cl := testutil.Ceph(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	config := write("config.json", fmt.Sprintf(`[{"clusterID": %q, "monitors": [%q]}]`, cl.ClusterID, cl.Monitors[0]))
	var secrets strings.Builder
	for _, k := range []string{"CreateVolumeSecret", "DeleteVolumeSecret", "ControllerValidateVolumeCapabilitiesSecret", "NodeStageVolumeSecret", "ControllerExpandVolumeSecret",
		"CreateSnapshotSecret", "DeleteSnapshotSecret", "ListSnapshotsSecret"} {
		fmt.Fprintf(&secrets, "%s:\n  userID: admin\n  userKey: %s\n", k, cl.AdminKey)
	}
	secretsFile := write("secrets.yaml", secrets.String())
	params := write("params.yaml", fmt.Sprintf("clusterID: %s\npool: rbd\n", cl.ClusterID))
	// ListVolumes and GetCapacity carry no secrets: the driver reads the
	// credentials of each cluster from --credentials-dir.
	credDir := filepath.Join(dir, "creds", cl.ClusterID)
	if err := os.MkdirAll(credDir, 0o700); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join("creds", cl.ClusterID, "userID"), "admin")
	write(filepath.Join("creds", cl.ClusterID, "userKey"), cl.AdminKey)
	sock := filepath.Join(dir, "csi.sock")
	var driverLog bytes.Buffer
	mappers := newCgroup(t, "sanity-mappers", true) // removed after the driver
	// With metrics, as it runs in a cluster.
	metricsAddr := freeAddr(t)
	drv := exec.Command(driverBin, "--endpoint", "unix://"+sock, "--nodeid", "sanity-node", "--mode", "all",
		"--cluster-config", config, "--state-dir", filepath.Join(dir, "state"), "--log-level", "info",
		"--credentials-dir", filepath.Join(dir, "creds"), "--mapper-cgroup", mappers.path, "--metrics-addr", metricsAddr)
	drv.Stdout, drv.Stderr = &driverLog, &driverLog
	if err := drv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = drv.Process.Kill()
		_ = drv.Wait()
		if t.Failed() {
			t.Logf("driver log:\n%s", driverLog.String())
		}
	})
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	summary := regexp.MustCompile(`Ran (\d+) of (\d+) Specs.*\n.*?(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`)
	for _, mode := range []string{"mount", "block"} {
		t.Run(mode, func(t *testing.T) {
			if err := os.MkdirAll(filepath.Join(dir, mode), 0o755); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(sanityBin, "--csi.endpoint", sock,
				"--csi.mountdir", filepath.Join(dir, mode, "mnt"), "--csi.stagingdir", filepath.Join(dir, mode, "stage"),
				"--csi.secrets", secretsFile, "--csi.testvolumeparameters", params,
				"--csi.testvolumesize", fmt.Sprint(32<<20), "--csi.testvolumeaccesstype", mode,
				"-ginkgo.no-color").CombinedOutput()
			m := summary.FindStringSubmatch(string(out))
			if err != nil || m == nil || m[4] != "0" {
				t.Fatalf("csi-sanity (%s): %v\n%s", mode, err, tail(string(out), 80))
			}
			t.Logf("csi-sanity %s mode: ran %s of %s specs: %s passed, %s failed, %s pending, %s skipped (capabilities not advertised)",
				mode, m[1], m[2], m[3], m[4], m[5], m[6])
		})
	}
	// Nothing is left mapped: no loop device on an rbd-fuse file, no FUSE mount.
	if left := leftovers(dir); len(left) > 0 {
		t.Errorf("left under %s: %v", dir, left)
	}
	// The metrics saw every call, the failed ones under their codes, and
	// no volume is staged any more.
	s := scrapeMetrics(t, metricsAddr)
	s.expect(t, []check{
		{"grpc_server_handled_total", map[string]string{"grpc_method": "NodeStageVolume", "grpc_code": "OK"}, 1, false},
		{"grpc_server_handled_total", map[string]string{"grpc_code": "InvalidArgument"}, 1, false},
		{"grpc_server_handled_total", map[string]string{"grpc_code": "NotFound"}, 1, false},
		{"csi_ceph_mapped_volumes", nil, 0, true},
	})
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
