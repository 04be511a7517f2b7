package csi_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
)

// freeAddr is a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// sample is one line of a scrape: a family (or _bucket, _count ...),
// its labels and value.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)`)
	labelPair  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// scrape is a scrape of /metrics at addr.
type scrape []sample

func scrapeMetrics(t *testing.T, addr string) scrape {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", addr, resp.Status)
	}
	var out scrape
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		m := sampleLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("scrape line %q: %v", sc.Text(), err)
		}
		s := sample{name: m[1], labels: map[string]string{}, value: v}
		for _, l := range labelPair.FindAllStringSubmatch(m[2], -1) {
			s.labels[l[1]] = l[2]
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// sum adds the values of the samples of name whose labels include want;
// found is false when there is none.
func (s scrape) sum(name string, want map[string]string) (total float64, found bool) {
next:
	for _, x := range s {
		if x.name != name {
			continue
		}
		for k, v := range want {
			if x.labels[k] != v {
				continue next
			}
		}
		total, found = total+x.value, true
	}
	return total, found
}

// check is one expectation of a scrape: the sum of name's samples with
// labels, at least min (exactly min when exact).
type check struct {
	name   string
	labels map[string]string
	min    float64
	exact  bool
}

func (s scrape) expect(t *testing.T, checks []check) {
	t.Helper()
	for _, c := range checks {
		got, found := s.sum(c.name, c.labels)
		switch {
		case !found:
			t.Errorf("no %s%v in the scrape", c.name, c.labels)
		case c.exact && got != c.min:
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.min)
		case !c.exact && got < c.min:
			t.Errorf("%s%v = %v, want at least %v", c.name, c.labels, got, c.min)
		}
	}
}

func (s scrape) grep(prefix string) string {
	var b strings.Builder
	for _, x := range s {
		if strings.HasPrefix(x.name, prefix) {
			fmt.Fprintf(&b, "%s%v %v\n", x.name, x.labels, x.value)
		}
	}
	return b.String()
}

func handled(method, code string) map[string]string {
	return map[string]string{"grpc_method": method, "grpc_code": code}
}

func op(driver, operation, outcome string) map[string]string {
	return map[string]string{"driver": driver, "operation": operation, "outcome": outcome}
}

// The RBD driver's metrics over a volume's life: the CSI calls (a failed
// one under its code), the Ceph-side operations, the staged volume under
// its mapper and its condition (abnormal once its rbd-fuse died, normal
// again once healed), then none once unstaged.
func TestMetricsRBD(t *testing.T) {
	addr := freeAddr(t)
	d := startDriver(t, "--metrics-addr", addr)
	d.fs = fsCap("ext4")
	ctx := context.Background()
	const driver = "rbd.csi.nodeinfra.dev"
	vol := d.create(t, "metrics-"+fmt.Sprint(time.Now().UnixNano()), 64<<20, nil)
	target, release := d.mount(t, vol, "m")
	_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "not-a-volume-id", StagingTargetPath: d.dir + "/stage-bad",
		VolumeCapability: d.fs, Secrets: d.secrets})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("NodeStageVolume of a malformed ID = %v, want NotFound", err)
	}
	if _, err := d.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: target}); err != nil {
		t.Fatal(err)
	}
	_, rec := d.record(t, vol)
	m, _ := rec["mapping"].(map[string]any)
	label := map[string]string{mapper.KRBD: "krbd", mapper.RBDNBD: "rbd-nbd", mapper.Fuse: "rbd-fuse"}[fmt.Sprint(m["mapper"])]
	if label == "" {
		t.Fatalf("the staging record names mapper %v", m["mapper"])
	}

	s := scrapeMetrics(t, addr)
	s.expect(t, []check{
		{"grpc_server_handled_total", handled("CreateVolume", "OK"), 1, true},
		{"grpc_server_handled_total", handled("NodeStageVolume", "OK"), 1, true},
		{"grpc_server_handled_total", handled("NodePublishVolume", "OK"), 1, true},
		{"grpc_server_handled_total", handled("NodeStageVolume", "NotFound"), 1, true},
		{"grpc_server_started_total", map[string]string{"grpc_method": "NodeStageVolume", "grpc_service": "csi.v1.Node", "grpc_type": "unary"}, 2, true},
		{"grpc_server_handling_seconds_count", map[string]string{"grpc_method": "NodeStageVolume"}, 2, true},
		{"csi_ceph_operation_duration_seconds_count", op(driver, "create", "ok"), 1, true},
		{"csi_ceph_operation_duration_seconds_count", op(driver, "map", "ok"), 1, true},
		{"csi_ceph_operation_duration_seconds_count", op(driver, "mount", "ok"), 1, true},
		{"csi_ceph_mapped_volumes", map[string]string{"driver": driver, "mapper": label}, 1, true},
		{"csi_ceph_mapped_volumes", map[string]string{"driver": driver}, 1, true},
		{"csi_ceph_volume_condition", map[string]string{"driver": driver, "condition": "normal"}, 1, true},
		{"csi_ceph_volume_condition", map[string]string{"driver": driver, "condition": "abnormal"}, 0, true},
		{"csi_ceph_build_info", map[string]string{"type": "rbd"}, 1, true},
		{"go_goroutines", nil, 1, false},
		{"process_resident_memory_bytes", nil, 1, false},
	})
	if t.Failed() {
		t.Logf("scrape:\n%s%s", s.grep("grpc_server_handled_total"), s.grep("csi_ceph_"))
	}

	if label == "rbd-fuse" {
		// Its daemon killed: the next stats call finds the volume
		// abnormal, and a scrape still answers at once (it reads the
		// records, not the dead mount); a publish heals it.
		killFuse(t, d)
		if abnormal, msg := d.stats(t, vol, target); !abnormal {
			t.Fatalf("normal with rbd-fuse killed: %s", msg)
		}
		start := time.Now()
		s = scrapeMetrics(t, addr)
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("a scrape with a dead FUSE mount took %v", took)
		}
		s.expect(t, []check{
			{"csi_ceph_volume_condition", map[string]string{"driver": driver, "condition": "abnormal"}, 1, true},
			{"csi_ceph_volume_condition", map[string]string{"driver": driver, "condition": "normal"}, 0, true},
			{"csi_ceph_mapped_volumes", map[string]string{"driver": driver, "mapper": label}, 1, true},
		})
		healed := d.dir + "/target-healed"
		if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: d.dir + "/stage-m",
			TargetPath: healed, VolumeCapability: d.fs}); err != nil {
			t.Fatalf("publish on a broken staging: %v", err)
		}
		scrapeMetrics(t, addr).expect(t, []check{
			{"csi_ceph_volume_condition", map[string]string{"driver": driver, "condition": "normal"}, 1, true},
			{"csi_ceph_volume_condition", map[string]string{"driver": driver, "condition": "abnormal"}, 0, true},
		})
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: healed}); err != nil {
			t.Fatal(err)
		}
	}

	release()
	d.delete(t, vol, fmt.Sprint(m["image"])) // past a killed rbd-fuse's watch
	s = scrapeMetrics(t, addr)
	s.expect(t, []check{
		{"csi_ceph_operation_duration_seconds_count", op(driver, "unmount", "ok"), 1, true},
		{"csi_ceph_operation_duration_seconds_count", op(driver, "unmap", "ok"), 1, true},
		{"csi_ceph_operation_duration_seconds_count", op(driver, "delete", "ok"), 1, true},
		{"csi_ceph_mapped_volumes", map[string]string{"driver": driver}, 0, true},
		{"csi_ceph_volume_condition", map[string]string{"driver": driver}, 0, true},
	})
	if t.Failed() {
		t.Logf("scrape after unstage:\n%s", s.grep("csi_ceph_"))
	}
}

// The CephFS driver's: the same families, its mounter as the mapper.
func TestMetricsCephFS(t *testing.T) {
	addr := freeAddr(t)
	d := startFSDriver(t, "--metrics-addr", addr)
	ctx := context.Background()
	const driver = "cephfs.csi.nodeinfra.dev"
	vol, _ := d.create(t, uniqueName("metrics"), 64<<20, nil)
	staging := d.stage(t, vol)
	d.publish(t, vol, staging, "m")
	_, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: "not-a-volume-id", StagingTargetPath: d.dir + "/stage-bad",
		VolumeCapability: sharedCap, Secrets: d.secrets})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("NodeStageVolume of a malformed ID = %v, want NotFound", err)
	}

	s := scrapeMetrics(t, addr)
	s.expect(t, []check{
		{"grpc_server_handled_total", handled("CreateVolume", "OK"), 1, true},
		{"grpc_server_handled_total", handled("NodeStageVolume", "OK"), 1, true},
		{"grpc_server_handled_total", handled("NodePublishVolume", "OK"), 1, true},
		{"grpc_server_handled_total", handled("NodeStageVolume", "NotFound"), 1, true},
		{"csi_ceph_operation_duration_seconds_count", op(driver, "create", "ok"), 1, true},
		{"csi_ceph_operation_duration_seconds_count", op(driver, "mount", "ok"), 1, true},
		{"csi_ceph_mapped_volumes", map[string]string{"driver": driver}, 1, true},
		{"csi_ceph_volume_condition", map[string]string{"driver": driver, "condition": "normal"}, 1, true},
		{"csi_ceph_build_info", map[string]string{"type": "cephfs"}, 1, true},
	})
	kernel, _ := s.sum("csi_ceph_mapped_volumes", map[string]string{"driver": driver, "mapper": "kernel"})
	fuse, _ := s.sum("csi_ceph_mapped_volumes", map[string]string{"driver": driver, "mapper": "ceph-fuse"})
	if kernel+fuse != 1 {
		t.Errorf("the staged volume is under neither kernel nor ceph-fuse")
	}
	if t.Failed() {
		t.Logf("scrape:\n%s%s", s.grep("grpc_server_handled_total"), s.grep("csi_ceph_"))
	}
}
