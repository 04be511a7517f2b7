package driver

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestParseClusters(t *testing.T) {
	cs, err := ParseClusters([]byte(`[
	 {"clusterID": "ceph-1", "monitors": ["10.0.0.1:3300", "v1:10.0.0.2:6789", "[fd00::1]:3300"],
	  "rbd": {"radosNamespace": "x"}, "cephFS": {"subvolumeGroup": "csi"}},
	 {"clusterID": "b9127830-b0cc-4e34-aa47-9d1a2e9949a8", "monitors": ["mon.example:6789"]}]`))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cs.Get("ceph-1")
	if err != nil || len(c.Monitors) != 3 || c.CephFS.SubvolumeGroup != "csi" {
		t.Fatalf("Get = %+v, %v", c, err)
	}
	if _, err := cs.Get("nope"); !errors.Is(err, ErrUnknownCluster) {
		t.Fatalf("Get(nope) = %v", err)
	}
	for name, bad := range map[string]string{
		"not json":      `{`,
		"object":        `{"clusterID":"a"}`,
		"no id":         `[{"monitors":["a:1"]}]`,
		"long id":       `[{"clusterID":"0123456789012345678901234567890123456789","monitors":["a:1"]}]`,
		"bad id chars":  `[{"clusterID":"a/b","monitors":["a:1"]}]`,
		"no monitors":   `[{"clusterID":"a","monitors":[]}]`,
		"no port":       `[{"clusterID":"a","monitors":["10.0.0.1"]}]`,
		"bad port":      `[{"clusterID":"a","monitors":["10.0.0.1:99999"]}]`,
		"comma list":    `[{"clusterID":"a","monitors":["10.0.0.1:1,10.0.0.2:1"]}]`,
		"duplicate":     `[{"clusterID":"a","monitors":["a:1"]},{"clusterID":"a","monitors":["b:1"]}]`,
		"monitors type": `[{"clusterID":"a","monitors":"a:1"}]`,
		"empty host":    `[{"clusterID":"a","monitors":[":1"]}]`,
	} {
		if _, err := ParseClusters([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestLoadClusters(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(`[{"clusterID":"test","monitors":["127.0.0.1:3300"]}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	if cs, err := LoadClusters(p); err != nil || len(cs) != 1 {
		t.Fatalf("LoadClusters = %v, %v", cs, err)
	}
	if _, err := LoadClusters(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func FuzzParseClusters(f *testing.F) {
	f.Add([]byte(`[{"clusterID":"a","monitors":["10.0.0.1:3300"]}]`))
	f.Add([]byte(`[{"clusterID":"a","monitors":["v2:[::1]:3300"]}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cs, err := ParseClusters(b)
		if err != nil {
			return
		}
		for id, c := range cs {
			if id != c.ClusterID || c.validate() != nil {
				t.Fatalf("accepted invalid %+v", c)
			}
		}
	})
}
