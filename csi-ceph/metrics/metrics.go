// Package metrics is csi-ceph's Prometheus metrics, on a registry of its
// own (with the Go runtime's and the process's collectors):
//
//   - the CSI gRPC server's calls, under go-grpc-middleware's standard
//     names (grpc_server_started_total, grpc_server_handled_total,
//     grpc_server_handling_seconds), through UnaryServerInterceptor and
//     StreamServerInterceptor;
//   - csi_ceph_build_info{version,type};
//   - csi_ceph_operation_duration_seconds{driver,operation,outcome}: the
//     Ceph-side operations (Operations) the driver times and reports to
//     Operation;
//   - on a node, csi_ceph_mapped_volumes{driver,mapper} and
//     csi_ceph_volume_condition{driver,condition}: the staged volumes by
//     mapper and by condition, counted at every scrape from what Config's
//     Volumes lists (the driver's staging records and the conditions its
//     calls last found), so a scrape never touches Ceph or a mount.
//
// No label holds a volume ID: every label takes a few known values. The
// package knows nothing of CSI's requests; package driver reports to it.
package metrics

import (
	"net/http"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
)

// Ceph-side operations, the values of the label operation.
const (
	OpCreate         = "create"
	OpDelete         = "delete"
	OpSnapshot       = "snapshot"
	OpDeleteSnapshot = "delete_snapshot"
	OpClone          = "clone"
	OpResize         = "resize"
	OpMap            = "map"
	OpUnmap          = "unmap"
	OpMount          = "mount"
	OpUnmount        = "unmount"
)

// Operations are every value of the label operation.
var Operations = []string{OpCreate, OpDelete, OpSnapshot, OpDeleteSnapshot, OpClone, OpResize, OpMap, OpUnmap, OpMount, OpUnmount}

// Outcomes of an operation, the values of the label outcome.
const (
	OutcomeOK    = "ok"
	OutcomeError = "error"
)

// Conditions of a staged volume, the values of the label condition:
// normal or abnormal as the last check found it (a stage, publish, stats
// or health call), unknown when none has looked at it since the plugin
// started.
const (
	ConditionNormal   = "normal"
	ConditionAbnormal = "abnormal"
	ConditionUnknown  = "unknown"
)

// Conditions are every value of the label condition.
var Conditions = []string{ConditionNormal, ConditionAbnormal, ConditionUnknown}

// MapperOther is the label mapper of a staged volume whose mapper is not
// one of Config.Mappers (a record this driver did not write).
const MapperOther = "other"

// operationBuckets span an unmount (milliseconds) to a clone or a first
// mkfs (minutes).
var operationBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// Volume is a volume staged on the node, as a scrape counts it.
type Volume struct {
	// Mapper is how it is staged: one of Config.Mappers.
	Mapper string
	// Condition is one of Conditions.
	Condition string
}

// Config says what the metrics describe.
type Config struct {
	// Driver is the CSI driver name, the label driver.
	Driver string
	// Type is csi-ceph's --type (rbd or cephfs), Version its version:
	// csi_ceph_build_info's labels.
	Type, Version string
	// Mappers are the values of the label mapper the node can have
	// (exported as 0 when no volume uses them). Only on a node.
	Mappers []string
	// Volumes lists the node's staged volumes; called at every scrape, it
	// must not touch Ceph or a mount. Nil (a controller): no
	// csi_ceph_mapped_volumes or csi_ceph_volume_condition.
	Volumes func() ([]Volume, error)
}

// Metrics are csi-ceph's collectors on their registry.
type Metrics struct {
	reg    *prometheus.Registry
	grpc   *grpcprom.ServerMetrics
	ops    *prometheus.HistogramVec
	driver string
}

// New makes the metrics of cfg on a registry of their own.
func New(cfg Config) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(operationBuckets))),
		ops: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "csi_ceph_operation_duration_seconds",
			Help:    "Duration of csi-ceph's Ceph-side operations (create, delete, snapshot, delete_snapshot, clone, resize, map, unmap, mount, unmount), by outcome (ok or error).",
			Buckets: operationBuckets,
		}, []string{"driver", "operation", "outcome"}),
		driver: cfg.Driver,
	}
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "csi_ceph_build_info",
		Help: "Always 1: the csi-ceph version and the driver type (--type) of this process.",
	}, []string{"version", "type"})
	build.WithLabelValues(cfg.Version, cfg.Type).Set(1)
	m.reg.MustRegister(m.grpc, m.ops, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg.Volumes != nil {
		m.reg.MustRegister(&volumeCollector{driver: cfg.Driver, mappers: cfg.Mappers, list: cfg.Volumes})
	}
	return m
}

// Operation records one Ceph-side operation: op is one of Operations,
// err its result.
func (m *Metrics) Operation(op string, took time.Duration, err error) {
	outcome := OutcomeOK
	if err != nil {
		outcome = OutcomeError
	}
	m.ops.WithLabelValues(m.driver, op, outcome).Observe(took.Seconds())
}

// UnaryServerInterceptor counts and times the unary calls of the gRPC
// server it is given to.
func (m *Metrics) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return m.grpc.UnaryServerInterceptor()
}

// StreamServerInterceptor counts and times the streaming calls (CSI has
// none today).
func (m *Metrics) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return m.grpc.StreamServerInterceptor()
}

// InitializeMetrics exports every method the server registered at 0 (per
// code for grpc_server_handled_total), so that a rate over a call's first
// failure sees it. Call it after the services are registered.
func (m *Metrics) InitializeMetrics(s *grpc.Server) {
	m.grpc.InitializeMetrics(s)
}

// Handler serves /metrics. A family that cannot be collected (the staging
// records unreadable) is left out of a scrape; the others are served.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	return mux
}
