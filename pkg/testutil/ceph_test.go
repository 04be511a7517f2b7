package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// LoadCeph reads what ceph-up.sh writes: cluster.json and client.admin's
// keyring (as ceph-authtool writes it, with caps after the key).
func TestLoadCeph(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("cluster.json", `[{"clusterID": "test", "monitors": ["127.0.0.1:20000"]}]`+"\n")
	write("ceph.client.admin.keyring", "[client.admin]\n\tkey = AQBzaW1wbGUga2V5IGZvciB0ZXN0cw==\n\tcaps mon = \"allow *\"\n")
	c, err := LoadCeph(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterID != "test" || len(c.Monitors) != 1 || c.Monitors[0] != "127.0.0.1:20000" ||
		c.AdminKey != "AQBzaW1wbGUga2V5IGZvciB0ZXN0cw==" || c.Conf != filepath.Join(dir, "ceph.conf") {
		t.Errorf("LoadCeph: %+v", c)
	}
	if s := c.Secrets(); s["userID"] != "admin" || s["userKey"] != c.AdminKey {
		t.Errorf("Secrets: %v", s)
	}
	if p := c.Params("rbd"); p["clusterID"] != "test" || p["pool"] != "rbd" {
		t.Errorf("Params: %v", p)
	}

	write("cluster.json", `[]`)
	if _, err := LoadCeph(dir); err == nil {
		t.Error("LoadCeph accepted a cluster.json without a cluster")
	}
}
