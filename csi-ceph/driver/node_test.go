package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper/fakekrbd"
	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// krbdNode is a driver in mode all on the test cluster whose node maps
// with krbd against a fake sysfs tree (this host has no krbd): the
// cluster is real, the kernel is fakekrbd.
type krbdNode struct {
	d       *Driver
	k       *fakekrbd.Kernel
	dir     string
	secrets map[string]string
	params  map[string]string
}

func newKrbdNode(t *testing.T) *krbdNode {
	t.Helper()
	testutil.RequiresRoot(t)
	cl := testutil.Ceph(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.json")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[{"clusterID": %q, "monitors": [%q]}]`, cl.ClusterID, cl.Monitors[0])), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Endpoint: "unix://" + filepath.Join(dir, "csi.sock"), NodeID: "n", Type: "rbd", Mode: ModeAll,
		ClusterConfig: cfg, StateDir: filepath.Join(dir, "state")}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.conns.closeAll)
	ctx := context.Background()
	conn, err := rbd.Connect(ctx, cl.Monitors, rbd.Credentials{ID: "admin", Key: cl.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	k := fakekrbd.Start(t, func(pool, name string) (fakekrbd.Image, bool) {
		id, err1 := conn.ImageID(ctx, pool, name)
		poolID, err2 := conn.PoolID(pool)
		return fakekrbd.Image{Pool: pool, PoolID: poolID, Name: name, ID: id}, err1 == nil && err2 == nil
	})
	d.node.host = mapper.Host{SysRoot: k.SysRoot, DevRoot: k.DevRoot, LookPath: func(string) (string, error) { return "", exec.ErrNotFound }}
	d.node.mappers[mapper.KRBD] = mapper.Krbd{SysRoot: k.SysRoot, DevRoot: k.DevRoot}
	return &krbdNode{d: d, k: k, dir: dir, secrets: cl.Secrets(), params: cl.Params("rbd")}
}

var blockRW = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}

// volume is a block volume on the krbd node, staged and published.
type volume struct {
	id, image, stage, target string
}

func (kn *krbdNode) create(t *testing.T, tag string) volume {
	t.Helper()
	ctx := context.Background()
	resp, err := kn.d.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name(t), CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{blockRW}, Parameters: kn.params, Secrets: kn.secrets})
	if err != nil {
		t.Fatal(err)
	}
	v := volume{id: resp.GetVolume().GetVolumeId(), image: resp.GetVolume().GetVolumeContext()["imageName"],
		stage: filepath.Join(kn.dir, "stage-"+tag), target: filepath.Join(kn.dir, "pods", tag, "dev")}
	t.Cleanup(func() {
		_, _ = kn.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target})
		_, _ = kn.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.stage})
		_, _ = kn.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id, Secrets: kn.secrets})
	})
	return v
}

func (kn *krbdNode) stage(v volume) error {
	_, err := kn.d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.stage,
		VolumeCapability: blockRW, Secrets: kn.secrets, VolumeContext: map[string]string{"mounter": mapper.KRBD}})
	return err
}

func (kn *krbdNode) publish(v volume) error {
	_, err := kn.d.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.stage,
		TargetPath: v.target, VolumeCapability: blockRW})
	return err
}

// sees returns what the pod of v sees at its target: the fake device's
// content, which names the image.
func sees(t *testing.T, v volume) string {
	t.Helper()
	b, err := os.ReadFile(v.target)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (kn *krbdNode) record(t *testing.T, v volume) map[string]any {
	t.Helper()
	b, err := os.ReadFile(kn.d.node.recordPath(v.id))
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func (kn *krbdNode) writeRecord(t *testing.T, v volume, r map[string]any) {
	t.Helper()
	b, _ := json.Marshal(r)
	if err := os.WriteFile(kn.d.node.recordPath(v.id), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func content(image string) string { return fakekrbd.Image{Pool: "rbd", Name: image}.Content() }

// Reboot simulation with krbd: volumes A and B staged and published; then
// A's record looks like an earlier boot (or an earlier driver, or merely
// no longer matches) and its device name now holds B. Publishing from
// the stale record is refused; restaging maps A again; A's pod sees A, B
// is never touched, and nothing is left at the end.
func TestKrbdRebootSimulation(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(r map[string]any)
	}{
		{"earlier boot", func(r map[string]any) { r["bootID"] = "00000000-0000-0000-0000-000000000000" }},
		{"same boot, record no longer matches", func(r map[string]any) {}},
		{"record of an earlier driver version", func(r map[string]any) {
			delete(r, "version")
			delete(r, "bootID")
			m := r["mapping"].(map[string]any)
			for _, k := range []string{"pool", "poolID", "image", "imageID"} {
				delete(m, k)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kn := newKrbdNode(t)
			a, b := kn.create(t, "a"), kn.create(t, "b")
			for _, v := range []volume{a, b} {
				if err := kn.stage(v); err != nil {
					t.Fatal(err)
				}
				if err := kn.publish(v); err != nil {
					t.Fatal(err)
				}
				if got := sees(t, v); got != content(v.image) {
					t.Fatalf("the pod of %s sees %q", v.image, got)
				}
			}
			idB := kn.record(t, b)["mapping"].(map[string]any)["krbdID"].(string)
			idA := kn.record(t, a)["mapping"].(map[string]any)["krbdID"].(string)

			// The reboot: A's pod and A's mapping are gone; A's record
			// stays, now naming B's device.
			if _, err := kn.d.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: a.id, TargetPath: a.target}); err != nil {
				t.Fatal(err)
			}
			kn.k.Remove(idA)
			r := kn.record(t, a)
			m := r["mapping"].(map[string]any)
			m["krbdID"], m["device"] = idB, filepath.Join(kn.k.DevRoot, "rbd"+idB)
			tc.edit(r)
			kn.writeRecord(t, a, r)

			if err := kn.publish(a); status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("publish from the stale record = %v, want FailedPrecondition", err)
			}
			if _, mounted, _ := mounts.At(a.target); mounted {
				t.Fatalf("A's target is mounted after a refused publish")
			}
			if err := kn.stage(a); err != nil {
				t.Fatalf("restage: %v", err)
			}
			if err := kn.publish(a); err != nil {
				t.Fatal(err)
			}
			if got := sees(t, a); got != content(a.image) {
				t.Fatalf("A's pod sees %q, want A", got)
			}
			if got := sees(t, b); got != content(b.image) {
				t.Fatalf("B's pod sees %q", got)
			}
			if n, ok := kn.k.Holds(idB); !ok || n != b.image {
				t.Fatalf("B's device %s touched: %s", idB, kn.k)
			}
			for _, req := range kn.k.Removed() {
				if req == idB || req == idB+" force" {
					t.Fatalf("B's device %s was unmapped (requests %v)", idB, kn.k.Removed())
				}
			}
			stats, err := kn.d.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: b.id, VolumePath: b.target})
			if err != nil {
				t.Fatal(err)
			}
			if abnormal, msg := conditionOf(t, stats); abnormal {
				t.Fatalf("B is abnormal: %s", msg)
			}

			// Nothing leaks: unpublish and unstage both, no device and no
			// mount is left.
			ctx := context.Background()
			for _, v := range []volume{a, b} {
				if _, err := kn.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target}); err != nil {
					t.Fatal(err)
				}
				if _, err := kn.d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.stage}); err != nil {
					t.Fatal(err)
				}
			}
			waitDevices(t, kn.k, nil)
			if under, _ := mounts.Under(kn.dir); len(under) != 0 {
				t.Fatalf("mounts left: %v", under)
			}
		})
	}
}

// Unstaging by a stale record releases only what maps the volume's image.
func TestKrbdUnstageStaleRecord(t *testing.T) {
	kn := newKrbdNode(t)
	a, b := kn.create(t, "a"), kn.create(t, "b")
	for _, v := range []volume{a, b} {
		if err := kn.stage(v); err != nil {
			t.Fatal(err)
		}
	}
	idA := kn.record(t, a)["mapping"].(map[string]any)["krbdID"].(string)
	idB := kn.record(t, b)["mapping"].(map[string]any)["krbdID"].(string)
	r := kn.record(t, a)
	m := r["mapping"].(map[string]any)
	m["krbdID"], m["device"] = idB, filepath.Join(kn.k.DevRoot, "rbd"+idB)
	kn.writeRecord(t, a, r)
	if _, err := kn.d.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: a.id, StagingTargetPath: a.stage}); err != nil {
		t.Fatal(err)
	}
	// A's own device (found by what it maps) went; B's stayed.
	waitDevices(t, kn.k, []string{idB})
	if slices.Contains(kn.k.Removed(), idB) || !slices.Contains(kn.k.Removed(), idA) {
		t.Fatalf("remove requests %v: want A's %s, not B's %s", kn.k.Removed(), idA, idB)
	}
	if _, err := os.Stat(kn.d.node.recordPath(a.id)); !os.IsNotExist(err) {
		t.Fatalf("A's record left: %v", err)
	}
}

func waitDevices(t *testing.T, k *fakekrbd.Kernel, want []string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !slices.Equal(k.Devices(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("devices %s, want %v", k, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
