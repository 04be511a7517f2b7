package monitoring_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// freeAddr is a loopback address with a port nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scrapeCSI runs csi-ceph (RBD, mode all) on the run's Ceph cluster,
// creates, stages and publishes a volume, makes a call that fails, and
// scrapes it.
func scrapeCSI(t *testing.T) scrape {
	t.Helper()
	cl := testutil.Ceph(t)
	addr := freeAddr(t)
	dir := t.TempDir()
	d, err := testutil.StartCSICeph(binDir, dir, &cl, "--metrics-addr", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	capab := testutil.CSIExt4
	vol, err := d.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "mon-" + randHex(4), VolumeCapabilities: []*csi.VolumeCapability{capab},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, Parameters: cl.Params("rbd"), Secrets: cl.Secrets()})
	if err != nil {
		t.Fatal(err)
	}
	id := vol.GetVolume().GetVolumeId()
	t.Cleanup(func() {
		_, _ = d.Controller.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id, Secrets: cl.Secrets()})
	})
	stage, target := filepath.Join(dir, "stage"), filepath.Join(dir, "target")
	if _, err := d.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: stage, VolumeCapability: capab,
		VolumeContext: vol.GetVolume().GetVolumeContext(), Secrets: cl.Secrets()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = d.Node.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: stage})
	})
	if _, err := d.Node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: stage, TargetPath: target,
		VolumeCapability: capab}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = d.Node.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	})
	// The volume's condition is known once the kubelet asks for its stats.
	if _, err := d.Node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "not-a-volume-id", StagingTargetPath: stage + "x",
		VolumeCapability: capab, Secrets: cl.Secrets()}); err == nil {
		t.Fatal("NodeStageVolume of a malformed ID succeeded")
	}
	s, err := get(nil, "http://"+addr+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if v := s.sum("grpc_server_handled_total", `grpc_method="NodeStageVolume"`, `grpc_code="OK"`); v != 1 {
		t.Errorf("NodeStageVolume OK = %v, want 1", v)
	}
	if v := s.sum("grpc_server_handled_total", `grpc_method="NodeStageVolume"`) - s.sum("grpc_server_handled_total", `grpc_method="NodeStageVolume"`, `grpc_code="OK"`); v != 1 {
		t.Errorf("failed NodeStageVolume calls = %v, want 1", v)
	}
	for _, op := range []string{"create", "map", "mount"} {
		if v := s.sum("csi_ceph_operation_duration_seconds_count", `operation="`+op+`"`, `outcome="ok"`); v < 1 {
			t.Errorf("csi_ceph_operation_duration_seconds_count{operation=%q} = %v", op, v)
		}
	}
	if v := s.sum("csi_ceph_mapped_volumes", `mapper="rbd-fuse"`); v != 1 {
		t.Errorf("csi_ceph_mapped_volumes{mapper=\"rbd-fuse\"} = %v, want 1", v)
	}
	if v := s.sum("csi_ceph_volume_condition", `condition="normal"`); v != 1 {
		t.Errorf("csi_ceph_volume_condition{condition=\"normal\"} = %v, want 1", v)
	}
	if s.sum("csi_ceph_build_info", `type="rbd"`) != 1 {
		t.Error("no csi_ceph_build_info{type=\"rbd\"}")
	}
	return s
}
