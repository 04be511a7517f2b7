// Package ceph_test checks the test cluster that e2e/setup/ceph-up.sh
// starts: what csi-ceph's tests rely on.
package ceph_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

func ceph(t *testing.T, c testutil.CephCluster, args ...string) []byte {
	t.Helper()
	out, err := exec.Command("ceph", append([]string{"-c", c.Conf, "--format", "json"}, args...)...).Output()
	if err != nil {
		t.Fatalf("ceph %v: %v", args, err)
	}
	return out
}

func TestClusterIsReady(t *testing.T) {
	c := testutil.Ceph(t)
	var st struct {
		Health struct {
			Status string `json:"status"`
		} `json:"health"`
		PGMap struct {
			NumPGs     int `json:"num_pgs"`
			PGsByState []struct {
				State string `json:"state_name"`
				Count int    `json:"count"`
			} `json:"pgs_by_state"`
		} `json:"pgmap"`
	}
	if err := json.Unmarshal(ceph(t, c, "status"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Health.Status != "HEALTH_OK" {
		t.Errorf("health %s", st.Health.Status)
	}
	clean := 0
	for _, s := range st.PGMap.PGsByState {
		if s.State == "active+clean" {
			clean = s.Count
		}
	}
	if st.PGMap.NumPGs == 0 || clean != st.PGMap.NumPGs {
		t.Errorf("%d of %d PGs active+clean", clean, st.PGMap.NumPGs)
	}
	var pools []struct {
		Name string `json:"poolname"`
	}
	if err := json.Unmarshal(ceph(t, c, "osd", "lspools"), &pools); err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for _, p := range pools {
		names = append(names, p.Name)
	}
	if !strings.Contains(strings.Join(names, ","), "rbd") {
		t.Errorf("pools %v lack rbd", names)
	}
	var fss []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(ceph(t, c, "fs", "ls"), &fss); err != nil {
		t.Fatal(err)
	}
	if len(fss) != 1 || fss[0].Name != "cephfs" {
		t.Errorf("filesystems %+v, want cephfs", fss)
	}
	if len(c.Monitors) != 1 || !strings.HasPrefix(c.Monitors[0], "127.0.0.1:") || c.AdminKey == "" {
		t.Errorf("cluster.json / keyring: %+v", c)
	}
	// The cluster listens on loopback only.
	out, err := exec.Command("ss", "-Htlnp").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "ceph-") && !strings.Contains(line, "127.0.0.1:") {
			t.Errorf("a Ceph daemon listens beyond loopback: %s", line)
		}
	}
}
