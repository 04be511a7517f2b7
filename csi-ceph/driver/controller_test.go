package driver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

type client struct {
	csi.IdentityClient
	csi.ControllerClient
	secrets map[string]string
	cluster testutil.CephCluster
}

// serve runs a controller-mode driver on a unix socket against the test
// cluster and returns a client for it.
func serve(t *testing.T, clusters string) client {
	t.Helper()
	cl := testutil.Ceph(t)
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.json")
	if clusters == "" {
		clusters = fmt.Sprintf(`[{"clusterID": %q, "monitors": [%q]}]`, cl.ClusterID, cl.Monitors[0])
	}
	if err := os.WriteFile(cfgPath, []byte(clusters), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	d, err := New(Config{Endpoint: "unix://" + sock, Type: "rbd", Mode: ModeController, ClusterConfig: cfgPath, Version: "test"},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return client{IdentityClient: csi.NewIdentityClient(conn), ControllerClient: csi.NewControllerClient(conn),
		secrets: map[string]string{"userID": "admin", "userKey": cl.AdminKey}, cluster: cl}
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode) []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}}
}

func blockCap(mode csi.VolumeCapability_AccessMode_Mode) []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}}
}

func name(t *testing.T) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "pvc-" + hex.EncodeToString(b)
}

func TestIdentity(t *testing.T) {
	c := serve(t, "")
	ctx := context.Background()
	info, err := c.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != Name || info.GetVendorVersion() != "test" {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	if p, err := c.Probe(ctx, &csi.ProbeRequest{}); err != nil || !p.GetReady().GetValue() {
		t.Fatalf("Probe = %v, %v", p, err)
	}
	// A cluster whose monitor does not answer: not ready.
	bad := serve(t, `[{"clusterID": "gone", "monitors": ["127.0.0.1:1"]}]`)
	if p, err := bad.Probe(ctx, &csi.ProbeRequest{}); err != nil || p.GetReady().GetValue() {
		t.Fatalf("Probe of an unreachable cluster = %v, %v", p, err)
	}
	// One unreachable cluster among reachable ones: ready (it serves the
	// others), and the unreachable one is named.
	mixed := serve(t, fmt.Sprintf(`[{"clusterID": %q, "monitors": [%q]}, {"clusterID": "gone", "monitors": ["127.0.0.1:1"]}]`,
		c.cluster.ClusterID, c.cluster.Monitors[0]))
	if p, err := mixed.Probe(ctx, &csi.ProbeRequest{}); err != nil || !p.GetReady().GetValue() {
		t.Fatalf("Probe with one unreachable cluster of two = %v, %v", p, err)
	}
	if info, err := mixed.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{}); err != nil || info.GetManifest()["unreachableClusters"] != "gone" {
		t.Fatalf("GetPluginInfo after the probe = %v, %v", info, err)
	}
}

func TestCreateDeleteVolume(t *testing.T) {
	c := serve(t, "")
	ctx := context.Background()
	req := &csi.CreateVolumeRequest{
		Name: name(t), CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20},
		VolumeCapabilities: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
		Parameters:         map[string]string{"clusterID": c.cluster.ClusterID, "pool": "rbd", "csi.storage.k8s.io/pv/name": "pv-1"},
		Secrets:            c.secrets,
	}
	resp, err := c.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	v := resp.GetVolume()
	t.Cleanup(func() {
		_, _ = c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: c.secrets})
	})
	if v.GetCapacityBytes() != 32<<20 || v.GetVolumeContext()["pool"] != "rbd" {
		t.Fatalf("volume %+v", v)
	}
	if _, err := ParseVolumeID(v.GetVolumeId()); err != nil {
		t.Fatalf("volume ID %q: %v", v.GetVolumeId(), err)
	}
	again, err := c.CreateVolume(ctx, req)
	if err != nil || again.GetVolume().GetVolumeId() != v.GetVolumeId() {
		t.Fatalf("second CreateVolume = %v, %v", again, err)
	}
	bigger := proto.Clone(req).(*csi.CreateVolumeRequest)
	bigger.CapacityRange = &csi.CapacityRange{RequiredBytes: 64 << 20}
	if _, err := c.CreateVolume(ctx, bigger); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("same name, other size: %v", err)
	}
	vv, err := c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.GetVolumeId(), VolumeCapabilities: req.VolumeCapabilities, Secrets: c.secrets})
	if err != nil || vv.GetConfirmed() == nil {
		t.Fatalf("ValidateVolumeCapabilities = %v, %v", vv, err)
	}
	vv, err = c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.GetVolumeId(),
		VolumeCapabilities: mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), Secrets: c.secrets})
	if err != nil || vv.GetConfirmed() != nil || vv.GetMessage() == "" {
		t.Fatalf("ValidateVolumeCapabilities of a shared filesystem = %v, %v", vv, err)
	}
	for i := 0; i < 2; i++ {
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: c.secrets}); err != nil {
			t.Fatalf("DeleteVolume #%d: %v", i+1, err)
		}
	}
	if _, err := c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: v.GetVolumeId(), VolumeCapabilities: req.VolumeCapabilities, Secrets: c.secrets}); status.Code(err) != codes.NotFound {
		t.Fatalf("ValidateVolumeCapabilities after delete: %v", err)
	}
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "not-an-id", Secrets: c.secrets}); err != nil {
		t.Fatalf("DeleteVolume of a foreign ID: %v", err)
	}
}

func TestCreateVolumeBadInput(t *testing.T) {
	c := serve(t, "")
	ctx := context.Background()
	base := func() *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{
			Name: name(t), CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
			VolumeCapabilities: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
			Parameters:         map[string]string{"clusterID": c.cluster.ClusterID, "pool": "rbd"},
			Secrets:            c.secrets,
		}
	}
	for _, tc := range []struct {
		name string
		mut  func(*csi.CreateVolumeRequest)
		code codes.Code
	}{
		{"no name", func(r *csi.CreateVolumeRequest) { r.Name = "" }, codes.InvalidArgument},
		{"no capabilities", func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = nil }, codes.InvalidArgument},
		{"shared filesystem", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities = mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
		}, codes.InvalidArgument},
		{"btrfs", func(r *csi.CreateVolumeRequest) {
			r.VolumeCapabilities[0].GetMount().FsType = "btrfs"
		}, codes.InvalidArgument},
		{"no secrets", func(r *csi.CreateVolumeRequest) { r.Secrets = nil }, codes.InvalidArgument},
		{"unknown cluster", func(r *csi.CreateVolumeRequest) { r.Parameters["clusterID"] = "nope" }, codes.InvalidArgument},
		{"unknown pool", func(r *csi.CreateVolumeRequest) { r.Parameters["pool"] = "nope" }, codes.InvalidArgument},
		{"no pool", func(r *csi.CreateVolumeRequest) { delete(r.Parameters, "pool") }, codes.InvalidArgument},
		{"unknown parameter", func(r *csi.CreateVolumeRequest) { r.Parameters["poool"] = "rbd" }, codes.InvalidArgument},
		{"bad mounter", func(r *csi.CreateVolumeRequest) { r.Parameters["mounter"] = "nfs" }, codes.InvalidArgument},
		{"bad features", func(r *csi.CreateVolumeRequest) { r.Parameters["imageFeatures"] = "journaling" }, codes.InvalidArgument},
		{"limit below required", func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 10 << 20, LimitBytes: 5 << 20}
		}, codes.OutOfRange},
		{"too big", func(r *csi.CreateVolumeRequest) { r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1 << 60} }, codes.OutOfRange},
	} {
		r := base()
		tc.mut(r)
		if _, err := c.CreateVolume(ctx, r); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.code)
		}
	}
	// A multi-node writer block volume is fine.
	r := base()
	r.VolumeCapabilities = blockCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	resp, err := c.CreateVolume(ctx, r)
	if err != nil {
		t.Fatalf("shared block volume: %v", err)
	}
	_, _ = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId(), Secrets: c.secrets})
}

// Concurrent calls for one volume name: exactly one runs, the others are
// told to retry (Aborted) or, once it is done, get the same volume.
func TestConcurrentCreateIsAbortedOrIdempotent(t *testing.T) {
	c := serve(t, "")
	ctx := context.Background()
	req := &csi.CreateVolumeRequest{
		Name: name(t), CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
		VolumeCapabilities: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
		Parameters:         map[string]string{"clusterID": c.cluster.ClusterID, "pool": "rbd"},
		Secrets:            c.secrets,
	}
	var wg sync.WaitGroup
	ids := make([]string, 8)
	codesSeen := make([]codes.Code, 8)
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			resp, err := c.CreateVolume(ctx, req)
			codesSeen[i] = status.Code(err)
			ids[i] = resp.GetVolume().GetVolumeId()
		}(i)
	}
	wg.Wait()
	var id string
	for i, code := range codesSeen {
		switch code {
		case codes.OK:
			if id != "" && ids[i] != id {
				t.Fatalf("two volumes for one name: %s and %s", id, ids[i])
			}
			id = ids[i]
		case codes.Aborted:
		default:
			t.Fatalf("call %d: %v", i, code)
		}
	}
	if id == "" {
		t.Fatal("no call succeeded")
	}
	_, _ = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: c.secrets})
}
