package driver

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
)

func TestStagingRecord(t *testing.T) {
	n := &node{stateDir: t.TempDir()}
	id := VolumeID{ClusterID: "ceph-1", PoolID: 2, UUID: uuidA}.String()
	if _, found, err := n.load(id); err != nil || found {
		t.Fatalf("load before save = %v, %v", found, err)
	}
	s := staged{Version: recordVersion, VolumeID: id, StagingPath: "/var/lib/kubelet/staging/x", Block: true,
		ClusterID: "ceph-1", BootID: "b0b1", FsType: "xfs", MountFlags: []string{"noatime"},
		Mapping: mapper.Mapping{Mapper: mapper.Fuse, Device: "/dev/loop7", Dir: "/var/lib/csi-ceph/maps/x",
			Pool: "rbd", PoolID: 2, Image: "csi-vol-" + uuidA, ImageID: "10af3c9d", User: "kube"}}
	if err := n.save(s); err != nil {
		t.Fatal(err)
	}
	if got, found, err := n.load(id); err != nil || !found || !reflect.DeepEqual(got, s) {
		t.Fatalf("load = %+v, %v, %v; want %+v", got, found, err, s)
	}
	// Saved again (a restage): replaced, and no temporary file is left.
	s.StagingPath = "/other"
	if err := n.save(s); err != nil {
		t.Fatal(err)
	}
	if got, _, err := n.load(id); err != nil || !reflect.DeepEqual(got, s) {
		t.Fatalf("load after a second save = %+v, %v", got, err)
	}
	entries, err := os.ReadDir(filepath.Dir(n.recordPath(id)))
	if err != nil || len(entries) != 1 {
		t.Fatalf("staged dir holds %v, %v; want the one record", entries, err)
	}
	if fi, err := os.Stat(n.recordPath(id)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v, %v", fi, err)
	}
	for i := 0; i < 2; i++ { // removing twice is fine
		if err := n.remove(id); err != nil {
			t.Fatalf("remove #%d: %v", i+1, err)
		}
	}
	if _, found, err := n.load(id); err != nil || found {
		t.Fatalf("load after remove = %v, %v", found, err)
	}
	// A corrupt record is an error, not "not staged".
	if err := os.WriteFile(n.recordPath(id), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.load(id); err == nil {
		t.Fatal("a corrupt record loaded")
	}
}

// Record and work dir paths are a hash of the volume ID: stable across
// versions (records written before an upgrade are found after it) and
// safe for any ID.
func TestStatePaths(t *testing.T) {
	n := &node{stateDir: "/var/lib/csi-ceph"}
	id := "1-06-ceph-1-0000000000000002-" + uuidA
	const hash = "69650c7945362b2c13f7a60ef88e7e3c" // sha256(id), first 16 bytes
	if got, want := n.recordPath(id), "/var/lib/csi-ceph/staged/"+hash+".json"; got != want {
		t.Errorf("recordPath = %q, want %q", got, want)
	}
	if got, want := n.workDir(id), "/var/lib/csi-ceph/maps/"+hash; got != want {
		t.Errorf("workDir = %q, want %q", got, want)
	}
	if p := n.recordPath("../../etc/passwd"); !strings.HasPrefix(p, "/var/lib/csi-ceph/staged/") {
		t.Errorf("recordPath escapes the state dir: %q", p)
	}
}

// A record written before records named their image and boot loads with
// what its volume ID tells (pool ID, image name; the fuse work dir), so
// that the mapper can find the volume's mapping; it is stale.
func TestStagingRecordOfAnEarlierVersion(t *testing.T) {
	n := &node{stateDir: t.TempDir(), bootID: "now"}
	id := VolumeID{ClusterID: "ceph-1", PoolID: 2, UUID: uuidA}.String()
	if err := os.MkdirAll(filepath.Dir(n.recordPath(id)), 0o700); err != nil {
		t.Fatal(err)
	}
	old := `{"volumeID":"` + id + `","stagingPath":"/s","block":false,"mapping":{"mapper":"fuse","device":"/dev/loop3"}}`
	if err := os.WriteFile(n.recordPath(id), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	s, found, err := n.load(id)
	if err != nil || !found {
		t.Fatalf("load = %v, %v", found, err)
	}
	if s.Version != 0 || s.Mapping.PoolID != 2 || s.Mapping.Image != "csi-vol-"+uuidA || s.Mapping.Dir != n.workDir(id) || s.Mapping.Device != "/dev/loop3" {
		t.Fatalf("old record loaded as %+v", s)
	}
	h, err := n.inspect(t.Context(), s)
	if err != nil || h.state != stale {
		t.Fatalf("inspect of an old record = %+v, %v; want stale", h, err)
	}
	// From an earlier boot: stale too, whatever its device holds.
	s.Version, s.BootID = recordVersion, "earlier"
	if h, err := n.inspect(t.Context(), s); err != nil || h.state != stale || !strings.Contains(h.reason, "before the node restarted") {
		t.Fatalf("inspect of a record of an earlier boot = %+v, %v", h, err)
	}
}
