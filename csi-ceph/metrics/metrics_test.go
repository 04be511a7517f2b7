package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var rbdMappers = []string{"krbd", "rbd-nbd", "rbd-fuse"}

func nodeMetrics(vols []Volume, err error) *Metrics {
	return New(Config{Driver: "rbd.csi.nodeinfra.dev", Type: "rbd", Version: "v1.2.3", Mappers: rbdMappers,
		Volumes: func() ([]Volume, error) { return vols, err }})
}

// scrape serves m's handler and returns the body of GET /metrics.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	return string(b)
}

// call runs a unary call through m's interceptor, answering err.
func call(t *testing.T, m *Metrics, method string, err error) {
	t.Helper()
	h := func(context.Context, any) (any, error) { return nil, err }
	if _, got := m.UnaryServerInterceptor()(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: method}, h); got != err {
		t.Fatalf("the interceptor changed the call's error %v to %v", err, got)
	}
}

func TestFamilies(t *testing.T) {
	m := nodeMetrics(nil, nil)
	m.Operation(OpMap, 2*time.Second, nil)
	call(t, m, "/csi.v1.Node/NodeStageVolume", nil)
	body := scrape(t, m)
	for _, family := range []string{
		"csi_ceph_build_info", "csi_ceph_operation_duration_seconds", "csi_ceph_mapped_volumes", "csi_ceph_volume_condition",
		"grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds",
		"go_goroutines", "process_start_time_seconds",
	} {
		if !strings.Contains(body, "# TYPE "+family+" ") {
			t.Errorf("family %s is not served", family)
		}
	}
	if !strings.Contains(body, `csi_ceph_build_info{type="rbd",version="v1.2.3"} 1`) {
		t.Errorf("no csi_ceph_build_info of v1.2.3, rbd:\n%s", grep(body, "csi_ceph_build_info"))
	}
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "csi_ceph_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestOperation(t *testing.T) {
	m := nodeMetrics(nil, nil)
	m.Operation(OpCreate, 300*time.Millisecond, nil)
	m.Operation(OpCreate, 2*time.Second, nil)
	m.Operation(OpCreate, time.Second, errors.New("pool full"))
	if n := series(t, m, "csi_ceph_operation_duration_seconds"); n != 2 {
		t.Fatalf("%d series, want 2: ok and error", n)
	}
	body := scrape(t, m)
	for _, line := range []string{
		`csi_ceph_operation_duration_seconds_count{driver="rbd.csi.nodeinfra.dev",operation="create",outcome="ok"} 2`,
		`csi_ceph_operation_duration_seconds_sum{driver="rbd.csi.nodeinfra.dev",operation="create",outcome="ok"} 2.3`,
		`csi_ceph_operation_duration_seconds_bucket{driver="rbd.csi.nodeinfra.dev",operation="create",outcome="ok",le="0.5"} 1`,
		`csi_ceph_operation_duration_seconds_count{driver="rbd.csi.nodeinfra.dev",operation="create",outcome="error"} 1`,
	} {
		if !strings.Contains(body, line) {
			t.Errorf("no %s in\n%s", line, grep(body, "csi_ceph_operation"))
		}
	}
}

func TestGRPCCalls(t *testing.T) {
	m := nodeMetrics(nil, nil)
	call(t, m, "/csi.v1.Node/NodeStageVolume", nil)
	call(t, m, "/csi.v1.Node/NodeStageVolume", status.Error(codes.NotFound, "no such volume"))
	call(t, m, "/csi.v1.Node/NodeStageVolume", status.Error(codes.NotFound, "no such volume"))
	call(t, m, "/csi.v1.Controller/CreateVolume", status.Error(codes.InvalidArgument, "no name"))
	body := scrape(t, m)
	for _, line := range []string{
		`grpc_server_started_total{grpc_method="NodeStageVolume",grpc_service="csi.v1.Node",grpc_type="unary"} 3`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="NodeStageVolume",grpc_service="csi.v1.Node",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="NodeStageVolume",grpc_service="csi.v1.Node",grpc_type="unary"} 2`,
		`grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="CreateVolume",grpc_service="csi.v1.Controller",grpc_type="unary"} 1`,
		`grpc_server_handling_seconds_count{grpc_method="NodeStageVolume",grpc_service="csi.v1.Node",grpc_type="unary"} 3`,
	} {
		if !strings.Contains(body, line) {
			t.Errorf("no %s in\n%s", line, grep(body, "grpc_server_"))
		}
	}
}

func TestVolumeGauges(t *testing.T) {
	vols := []Volume{
		{Mapper: "rbd-fuse", Condition: ConditionNormal},
		{Mapper: "rbd-fuse", Condition: ConditionAbnormal},
		{Mapper: "krbd", Condition: ConditionUnknown},
		{Mapper: "from-the-future", Condition: "odd"},
	}
	m := nodeMetrics(vols, nil)
	want := `csi_ceph_mapped_volumes{driver="rbd.csi.nodeinfra.dev",mapper="krbd"} 1
csi_ceph_mapped_volumes{driver="rbd.csi.nodeinfra.dev",mapper="other"} 1
csi_ceph_mapped_volumes{driver="rbd.csi.nodeinfra.dev",mapper="rbd-fuse"} 2
csi_ceph_mapped_volumes{driver="rbd.csi.nodeinfra.dev",mapper="rbd-nbd"} 0
csi_ceph_volume_condition{condition="abnormal",driver="rbd.csi.nodeinfra.dev"} 1
csi_ceph_volume_condition{condition="normal",driver="rbd.csi.nodeinfra.dev"} 1
csi_ceph_volume_condition{condition="unknown",driver="rbd.csi.nodeinfra.dev"} 2
`
	body := scrape(t, m)
	if got := grep(body, "csi_ceph_mapped_volumes{") + "\n" + grep(body, "csi_ceph_volume_condition{"); got != strings.TrimSpace(want) {
		t.Errorf("got\n%s\nwant\n%s", got, strings.TrimSpace(want))
	}

	// No volume: every mapper and condition at 0.
	empty := nodeMetrics(nil, nil)
	if n := series(t, empty, "csi_ceph_mapped_volumes") + series(t, empty, "csi_ceph_volume_condition"); n != len(rbdMappers)+len(Conditions) {
		t.Errorf("%d series without volumes, want %d", n, len(rbdMappers)+len(Conditions))
	}
}

// Staging records that cannot be read leave the volume families out of a
// scrape, and only them.
func TestVolumesUnreadable(t *testing.T) {
	m := nodeMetrics(nil, errors.New("permission denied"))
	m.Operation(OpMount, time.Second, nil)
	body := scrape(t, m)
	if strings.Contains(body, "csi_ceph_mapped_volumes{") || strings.Contains(body, "csi_ceph_volume_condition{") {
		t.Errorf("volume gauges served without records:\n%s", grep(body, "csi_ceph_"))
	}
	for _, family := range []string{"csi_ceph_build_info", "csi_ceph_operation_duration_seconds"} {
		if !strings.Contains(body, "# TYPE "+family+" ") {
			t.Errorf("family %s is not served when the records are unreadable", family)
		}
	}
}

// A controller has no staged volumes to count.
func TestControllerHasNoVolumeGauges(t *testing.T) {
	m := New(Config{Driver: "cephfs.csi.nodeinfra.dev", Type: "cephfs", Version: "dev"})
	body := scrape(t, m)
	if strings.Contains(body, "csi_ceph_mapped_volumes") || strings.Contains(body, "csi_ceph_volume_condition") {
		t.Errorf("a controller serves volume gauges:\n%s", grep(body, "csi_ceph_"))
	}
	if !strings.Contains(body, `csi_ceph_build_info{type="cephfs",version="dev"} 1`) {
		t.Errorf("no build info:\n%s", grep(body, "csi_ceph_"))
	}
}

// Every method a server registers is exported at 0 before its first call.
func TestInitializeMetrics(t *testing.T) {
	m := nodeMetrics(nil, nil)
	g := grpc.NewServer()
	g.RegisterService(&grpc.ServiceDesc{ServiceName: "csi.v1.Identity", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Probe"}}}, struct{}{})
	m.InitializeMetrics(g)
	body := scrape(t, m)
	line := `grpc_server_handled_total{grpc_code="Unavailable",grpc_method="Probe",grpc_service="csi.v1.Identity",grpc_type="unary"} 0`
	if !strings.Contains(body, line) {
		t.Errorf("no %s in\n%s", line, grep(body, "grpc_server_handled_total"))
	}
}

// series counts the series of a family.
func series(t *testing.T, m *Metrics, family string) int {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == family {
			return len(mf.GetMetric())
		}
	}
	return 0
}

// grep returns the lines of body that start with prefix.
func grep(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
