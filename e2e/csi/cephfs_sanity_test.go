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

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// TestCSISanityCephFS runs csi-sanity against csi-ceph --type cephfs
// (mount access: a CephFS volume is a filesystem).
func TestCSISanityCephFS(t *testing.T) {
	testutil.RequiresRoot(t)
	_, sanityBin := binaries(t)
	// csi-sanity does not retry an Aborted CreateVolume: wait for clones
	// (about 13 s each on the test cluster) in the call.
	metricsAddr := freeAddr(t)
	d := startFSDriver(t, "--clone-wait=90s", "--metrics-addr", metricsAddr)
	var secrets strings.Builder
	for _, k := range []string{"CreateVolumeSecret", "DeleteVolumeSecret", "ControllerValidateVolumeCapabilitiesSecret", "NodeStageVolumeSecret",
		"ControllerExpandVolumeSecret", "CreateSnapshotSecret", "DeleteSnapshotSecret", "ListSnapshotsSecret"} {
		fmt.Fprintf(&secrets, "%s:\n  userID: admin\n  userKey: %s\n", k, d.cl.AdminKey)
	}
	secretsFile := filepath.Join(d.dir, "secrets.yaml")
	params := filepath.Join(d.dir, "params.yaml")
	if err := os.WriteFile(secretsFile, []byte(secrets.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(params, []byte(fmt.Sprintf("clusterID: %s\nfsName: cephfs\n", d.cl.ClusterID)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d.dir, "sanity"), 0o755); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(sanityBin, "--csi.endpoint", filepath.Join(d.dir, "csi.sock"),
		"--csi.mountdir", filepath.Join(d.dir, "sanity", "mnt"), "--csi.stagingdir", filepath.Join(d.dir, "sanity", "stage"),
		"--csi.secrets", secretsFile, "--csi.testvolumeparameters", params,
		"--csi.testvolumesize", fmt.Sprint(32<<20), "--csi.testvolumeaccesstype", "mount",
		"-ginkgo.no-color")
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	summary := regexp.MustCompile(`Ran (\d+) of (\d+) Specs.*\n.*?(\d+) Passed \| (\d+) Failed \| (\d+) Pending \| (\d+) Skipped`)
	m := summary.FindStringSubmatch(out.String())
	if err != nil || m == nil || m[4] != "0" {
		t.Fatalf("csi-sanity (cephfs): %v\n%s", err, tail(out.String(), 5000))
	}
	t.Logf("csi-sanity cephfs: ran %s of %s specs: %s passed, %s failed, %s pending, %s skipped (capabilities not advertised)",
		m[1], m[2], m[3], m[4], m[5], m[6])
	if pids := d.mappers.pids(); len(pids) > 0 {
		var cmds []string
		for _, p := range pids {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
			cmds = append(cmds, strings.ReplaceAll(string(b), "\x00", " "))
		}
		t.Errorf("ceph-fuse daemons left after csi-sanity: %v\n%s", cmds, d.log.String())
	}
	if left := leftovers(d.dir); len(left) > 0 {
		t.Errorf("left under %s: %v", d.dir, left)
	}
	s := scrapeMetrics(t, metricsAddr)
	s.expect(t, []check{
		{"grpc_server_handled_total", map[string]string{"grpc_method": "NodeStageVolume", "grpc_code": "OK"}, 1, false},
		{"grpc_server_handled_total", map[string]string{"grpc_code": "InvalidArgument"}, 1, false},
		{"csi_ceph_operation_duration_seconds_count", map[string]string{"operation": "clone", "outcome": "ok"}, 1, false},
		{"csi_ceph_mapped_volumes", nil, 0, true},
	})
}
