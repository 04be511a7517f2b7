package testutil

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// CephCluster is the test cluster that e2e/ceph/up.sh started.
type CephCluster struct {
	Dir       string
	Conf      string // ceph.conf
	Keyring   string // client.admin keyring
	ClusterID string
	Monitors  []string
	// AdminKey is client.admin's cephx key.
	AdminKey string
}

// EnvCephDir names the variable through which `make test` shares one
// cluster with every package: it holds DIR/cluster (the cluster), and
// DIR/ready or DIR/failed once up.sh has finished.
const EnvCephDir = "NODEINFRA_CEPH_DIR"

// Ceph waits for the run's shared cluster and returns it. Without
// NODEINFRA_CEPH_DIR (a bare `go test`), it skips with the way to get one.
func Ceph(t testing.TB) CephCluster {
	t.Helper()
	dir := os.Getenv(EnvCephDir)
	if dir == "" {
		t.Skip("needs a Ceph cluster: run `make test`, or e2e/ceph/up.sh DIR/cluster && touch DIR/ready and set NODEINFRA_CEPH_DIR=DIR")
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
	c := CephCluster{Dir: filepath.Join(dir, "cluster")}
	c.Conf = filepath.Join(c.Dir, "ceph.conf")
	c.Keyring = filepath.Join(c.Dir, "ceph.client.admin.keyring")
	b, err := os.ReadFile(filepath.Join(c.Dir, "cluster.json"))
	if err != nil {
		t.Fatal(err)
	}
	var clusters []struct {
		ClusterID string   `json:"clusterID"`
		Monitors  []string `json:"monitors"`
	}
	if err := json.Unmarshal(b, &clusters); err != nil || len(clusters) != 1 {
		t.Fatalf("cluster.json: %v", err)
	}
	c.ClusterID, c.Monitors = clusters[0].ClusterID, clusters[0].Monitors
	key, err := readKey(c.Keyring)
	if err != nil {
		t.Fatal(err)
	}
	c.AdminKey = key
	return c
}

// readKey returns the "key = ..." value of a keyring file.
func readKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && strings.TrimSpace(k) == "key" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no key in %s", path)
}
