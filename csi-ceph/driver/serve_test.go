package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
)

// logBuffer is a log destination that tests read while the server writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines decodes the JSON log lines.
func (l *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// find returns the first log line with message msg.
func (l *logBuffer) find(t *testing.T, msg string) map[string]any {
	t.Helper()
	for _, m := range l.lines(t) {
		if m["msg"] == msg {
			return m
		}
	}
	return nil
}

func TestCallAttrs(t *testing.T) {
	for _, c := range []struct {
		method string
		req    any
		want   []any
	}{
		{"/csi.v1.Node/NodeStageVolume", &csi.NodeStageVolumeRequest{VolumeId: "v1", Secrets: map[string]string{"userKey": "k"}},
			[]any{"method", "NodeStageVolume", "volumeID", "v1"}},
		{"/csi.v1.Controller/CreateVolume", &csi.CreateVolumeRequest{Name: "pvc-1"}, []any{"method", "CreateVolume", "name", "pvc-1"}},
		{"/csi.v1.Controller/CreateSnapshot", &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: "v1"},
			[]any{"method", "CreateSnapshot", "volumeID", "v1", "name", "snap-1"}},
		{"/csi.v1.Controller/DeleteSnapshot", &csi.DeleteSnapshotRequest{SnapshotId: "s1"}, []any{"method", "DeleteSnapshot", "snapshotID", "s1"}},
		{"/csi.v1.Identity/Probe", &csi.ProbeRequest{}, []any{"method", "Probe"}},
	} {
		got := callAttrs(c.method, c.req)
		if len(got) != len(c.want) {
			t.Errorf("callAttrs(%s) = %v, want %v", c.method, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("callAttrs(%s) = %v, want %v", c.method, got, c.want)
				break
			}
		}
	}
}

// Every line a call logs names its volume; a change is logged at Info
// and a failure at Warn, with the call's seconds.
func TestCallLogs(t *testing.T) {
	var buf logBuffer
	intercept := logCalls(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	info := &grpc.UnaryServerInfo{FullMethod: "/csi.v1.Node/NodeStageVolume"}
	req := &csi.NodeStageVolumeRequest{VolumeId: "vol-1", Secrets: map[string]string{"userKey": "secret-key"}}
	_, err := intercept(context.Background(), req, info, func(ctx context.Context, _ any) (any, error) {
		time.Sleep(5 * time.Millisecond)
		logChange(ctx, "volume staged", "mapper", "rbd-fuse")
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = intercept(context.Background(), req, info, func(ctx context.Context, _ any) (any, error) {
		return nil, status.Error(codes.NotFound, "no such volume")
	})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("the interceptor changed the error to %v", err)
	}
	staged := buf.find(t, "volume staged")
	if staged == nil || staged["level"] != "INFO" || staged["volumeID"] != "vol-1" || staged["method"] != "NodeStageVolume" || staged["mapper"] != "rbd-fuse" {
		t.Errorf("state change logged as %v", staged)
	} else if s, ok := staged["seconds"].(float64); !ok || s < 0.005 || s > 60 {
		t.Errorf("state change's seconds %v", staged["seconds"])
	}
	failed := buf.find(t, "CSI call failed")
	if failed == nil || failed["level"] != "WARN" || failed["volumeID"] != "vol-1" || failed["code"] != "NotFound" {
		t.Errorf("failure logged as %v", failed)
	} else if _, ok := failed["seconds"].(float64); !ok {
		t.Errorf("failure's seconds %v", failed["seconds"])
	}
	if buf.find(t, "CSI call") != nil {
		t.Error("a call that succeeded is logged at Info")
	}
	buf.mu.Lock()
	defer buf.mu.Unlock()
	if strings.Contains(buf.b.String(), "secret-key") {
		t.Error("a secret reached the log")
	}
}

// serveCSI with metrics: the CSI calls, a failed one under its code, and
// the build, served on the metrics address; the volume families of a node.
func TestServeMetrics(t *testing.T) {
	dir := t.TempDir()
	var buf logBuffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	d := &Driver{cfg: Config{Mode: ModeAll, Version: "v9"}, log: log, probes: newProbeLog(), locks: newLocks(),
		node: &node{stateDir: dir}, conds: newConditions()}
	d.cfg.Type, d.cfg.MetricsAddr = TypeRBD, "127.0.0.1:0"
	d.metrics = newMetrics(d.cfg, Name, rbdMapperLabels, d.stagedVolumes)
	d.obs = d.metrics
	sock := filepath.Join(dir, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- serveCSI(ctx, service{endpoint: "unix://" + sock, log: log, metrics: d.metrics, metricsAddr: d.cfg.MetricsAddr,
			register: func(g *grpc.Server) {
				csi.RegisterIdentityServer(g, d)
				csi.RegisterControllerServer(g, d)
				csi.RegisterNodeServer(g, d)
			}, background: func(context.Context) {}, onStop: func() {}})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("serveCSI: %v", err)
		}
	})
	var addr string
	for i := 0; i < 200 && addr == ""; i++ {
		if l := buf.find(t, "serving metrics"); l != nil {
			addr, _ = l["addr"].(string)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if addr == "" {
		t.Fatal("no \"serving metrics\" log line with the address")
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	if _, err := csi.NewIdentityClient(conn).GetPluginInfo(cctx, &csi.GetPluginInfoRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatal(err)
	}
	_, err = csi.NewNodeClient(conn).NodeStageVolume(cctx, &csi.NodeStageVolumeRequest{VolumeId: "not-ours", StagingTargetPath: "/stage",
		VolumeCapability: blockRW})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("NodeStageVolume of a malformed ID = %v, want NotFound", err)
	}
	d.obs.Operation(metrics.OpMap, time.Second, nil)

	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	body := string(b)
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="GetPluginInfo",grpc_service="csi.v1.Identity",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="NodeStageVolume",grpc_service="csi.v1.Node",grpc_type="unary"} 1`,
		// Initialized: a method not called yet is there, at 0.
		`grpc_server_handled_total{grpc_code="Internal",grpc_method="CreateVolume",grpc_service="csi.v1.Controller",grpc_type="unary"} 0`,
		`grpc_server_handling_seconds_count{grpc_method="NodeStageVolume",grpc_service="csi.v1.Node",grpc_type="unary"} 1`,
		`csi_ceph_build_info{type="rbd",version="v9"} 1`,
		`csi_ceph_operation_duration_seconds_count{driver="rbd.csi.nodeinfra.dev",operation="map",outcome="ok"} 1`,
		`csi_ceph_mapped_volumes{driver="rbd.csi.nodeinfra.dev",mapper="rbd-fuse"} 0`,
		`csi_ceph_volume_condition{condition="normal",driver="rbd.csi.nodeinfra.dev"} 0`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("no %s in the scrape", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", body)
	}
	if l := buf.find(t, "CSI call failed"); l == nil || l["volumeID"] != "not-ours" || l["code"] != "NotFound" {
		t.Errorf("the failed call is logged as %v", l)
	}
}

// A metrics address that is taken fails the start, before the socket.
func TestServeMetricsAddrInUse(t *testing.T) {
	dir := t.TempDir()
	m := metrics.New(metrics.Config{Driver: Name, Type: TypeRBD})
	first := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var buf logBuffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	svc := service{endpoint: "unix://" + filepath.Join(dir, "a.sock"), log: log, metrics: m, metricsAddr: "127.0.0.1:0",
		register: func(*grpc.Server) {}, background: func(context.Context) {}, onStop: func() {}}
	go func() { first <- serveCSI(ctx, svc) }()
	var addr string
	for i := 0; i < 200 && addr == ""; i++ {
		if l := buf.find(t, "serving metrics"); l != nil {
			addr, _ = l["addr"].(string)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if addr == "" {
		t.Fatal("the first server does not serve metrics")
	}
	svc.endpoint, svc.metricsAddr = "unix://"+filepath.Join(dir, "b.sock"), addr
	if err := serveCSI(ctx, svc); err == nil || !strings.Contains(err.Error(), "listen for metrics") {
		t.Errorf("a second server on %s: %v", addr, err)
	}
	cancel()
	if err := <-first; err != nil {
		t.Errorf("first server: %v", err)
	}
}
