package testutil

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/cephkey"
)

// CephCluster is a test cluster that e2e/setup/ceph-up.sh started: the
// run's shared one (Ceph) or a program's own (StartCeph).
type CephCluster struct {
	Dir       string
	Conf      string // ceph.conf
	Keyring   string // client.admin keyring
	ClusterID string
	Monitors  []string
	// AdminKey is client.admin's cephx key.
	AdminKey string
}

// Scripts that start and stop a cluster, relative to the repository root.
const (
	cephUpScript   = "e2e/setup/ceph-up.sh"
	cephDownScript = "e2e/setup/ceph-down.sh"
)

// EnvCephDir names the variable through which `make test` shares one
// cluster with every package: it holds DIR/cluster (the cluster), and
// DIR/ready or DIR/failed once ceph-up.sh has finished.
const EnvCephDir = "NODEINFRA_CEPH_DIR"

// Ceph waits for the run's shared cluster and returns it. Without
// NODEINFRA_CEPH_DIR (a bare `go test`), it skips with the way to get one.
func Ceph(t testing.TB) CephCluster {
	t.Helper()
	dir := os.Getenv(EnvCephDir)
	if dir == "" {
		t.Skip("needs a Ceph cluster: run `make test`, or " + cephUpScript + " DIR/cluster && touch DIR/ready and set NODEINFRA_CEPH_DIR=DIR")
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if _, err := os.Stat(filepath.Join(dir, "ready")); err == nil {
			break
		}
		if _, err := os.Stat(filepath.Join(dir, "failed")); err == nil {
			b, _ := os.ReadFile(filepath.Join(dir, "up.log"))
			t.Fatalf("the test Ceph cluster failed to start:\n%s", b)
		}
		if time.Now().After(deadline) {
			t.Fatal("the test Ceph cluster was not up after 5 minutes")
		}
		time.Sleep(200 * time.Millisecond)
	}
	c, err := LoadCeph(filepath.Join(dir, "cluster"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// LoadCeph describes the cluster that ceph-up.sh started in dir, from
// dir/cluster.json (ceph-csi's config.json shape, one cluster) and
// client.admin's keyring.
func LoadCeph(dir string) (CephCluster, error) {
	c := CephCluster{Dir: dir, Conf: filepath.Join(dir, "ceph.conf"), Keyring: filepath.Join(dir, "ceph.client.admin.keyring")}
	b, err := os.ReadFile(filepath.Join(dir, "cluster.json"))
	if err != nil {
		return c, err
	}
	var clusters []struct {
		ClusterID string   `json:"clusterID"`
		Monitors  []string `json:"monitors"`
	}
	if err := json.Unmarshal(b, &clusters); err != nil || len(clusters) != 1 {
		return c, fmt.Errorf("cluster.json: %v (want one cluster)", err)
	}
	c.ClusterID, c.Monitors = clusters[0].ClusterID, clusters[0].Monitors
	if c.AdminKey, err = cephkey.Read(c.Keyring, "admin"); err != nil {
		return c, err
	}
	return c, nil
}

// StartCeph starts a cluster of its own in dir with ceph-up.sh (the working
// directory must be the repository root), for a program that runs outside
// `make test`. Stop stops it.
func StartCeph(dir string) (*CephCluster, error) {
	if out, err := exec.Command(cephUpScript, dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ceph up: %v: %s", err, out)
	}
	c, err := LoadCeph(dir)
	if err != nil {
		c.Stop()
		return nil, err
	}
	return &c, nil
}

// Stop stops a cluster that StartCeph started and removes its directory.
func (c *CephCluster) Stop() { _ = exec.Command(cephDownScript, c.Dir).Run() }

// Secrets are the CSI secrets of client.admin.
func (c *CephCluster) Secrets() map[string]string {
	return map[string]string{"userID": "admin", "userKey": c.AdminKey}
}

// Params are StorageClass parameters for pool of c.
func (c *CephCluster) Params(pool string) map[string]string {
	return map[string]string{"clusterID": c.ClusterID, "pool": pool}
}
