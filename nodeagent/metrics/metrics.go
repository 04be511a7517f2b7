// Package metrics defines the node agent's Prometheus metrics: build
// info, the CNI commands the plugin reports, the gRPC server's standard
// metrics (go-grpc-middleware's provider), ENIs by state, reconcile runs
// and repairs, sandboxes by state, their boot time, failures and OOM
// kills, their CPU, memory, disk and network use, and probe outcomes.
// Families that read state (ENIs, sandboxes, usage) are collected at
// scrape time.
package metrics

import (
	"runtime"
	"strconv"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/nodeinfra/nodeinfra/nodeagent/eni"
	"github.com/nodeinfra/nodeinfra/pkg/version"
)

// Metrics are the agent's collectors, registered on their own registry.
type Metrics struct {
	Registry *prometheus.Registry
	// GRPC is the gRPC server's metrics: its interceptors go on the
	// server, and InitializeMetrics once the services are registered.
	GRPC *grpcprom.ServerMetrics

	cni              *prometheus.HistogramVec
	reconcileRuns    *prometheus.CounterVec
	reconcileRepairs prometheus.Counter
	boot             prometheus.Histogram
	starts           *prometheus.CounterVec
	failures         *prometheus.CounterVec
	ooms             *prometheus.CounterVec
	probes           *prometheus.CounterVec
}

var latencyBuckets = []float64{.001, .002, .005, .01, .015, .02, .03, .05, .1, .25, .5, 1, 2.5, 5}

// bootBuckets span a KVM boot (a fraction of a second) to a slow TCG one.
var bootBuckets = []float64{.1, .25, .5, .75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60}

// PoolSource reports ENI pools at scrape time.
type PoolSource interface{ Pools() []eni.Pool }

// New creates the metrics; pools is read at every scrape, accel (may be
// nil) names the sandboxes' accelerator for the build info.
func New(pools PoolSource, accel func() string) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		GRPC: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets(latencyBuckets))),
		cni: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nodeagent_cni_duration_seconds",
			Help:    "Duration of cni-eni commands as the plugin measured them, by command (ADD, DEL, CHECK) and CNI result code (0: success).",
			Buckets: latencyBuckets,
		}, []string{"command", "code"}),
		reconcileRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_reconcile_runs_total",
			Help: "Reconciliations of the ENI state with the node's links, by outcome (ok, error).",
		}, []string{"outcome"}),
		reconcileRepairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nodeagent_reconcile_repairs_total",
			Help: "Changes reconciliation made (an ENI freed, found missing, found again, an attachment ended).",
		}),
		boot: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nodeagent_sandbox_boot_duration_seconds",
			Help:    "From a sandbox's create to its guest agent's first answer (Ready).",
			Buckets: bootBuckets,
		}),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_sandbox_starts_total",
			Help: "Sandboxes that reached Ready, by how they started (cold: a boot; template: restored from a VM template; pool: taken from the warm pool).",
		}, []string{"start"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_sandbox_failures_total",
			Help: "Sandboxes that went Failed, by reason (boot, qemu_exit, guest_protocol, other).",
		}, []string{"reason"}),
		ooms: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_oom_kills_total",
			Help: "OOM kills in the cgroups the agent keeps, by kind (sandbox, group).",
		}, []string{"kind"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_probes_total",
			Help: "Kubelet probes run from inside pod namespaces, by kind (tcp, http) and result (success, failure, refused: too many in flight, error: a bad request or an unknown pod).",
		}, []string{"kind", "result"}),
	}
	for _, r := range []string{"boot", "qemu_exit", "guest_protocol", "other"} {
		m.failures.WithLabelValues(r)
	}
	for _, s := range []string{"cold", "template", "pool"} {
		m.starts.WithLabelValues(s)
	}
	for _, k := range []string{"sandbox", "group"} {
		m.ooms.WithLabelValues(k)
	}
	for _, o := range []string{"ok", "error"} {
		m.reconcileRuns.WithLabelValues(o)
	}
	m.Registry.MustRegister(m.GRPC, m.cni, m.reconcileRuns, m.reconcileRepairs, m.boot, m.starts, m.failures, m.ooms, m.probes,
		&poolCollector{src: pools}, &buildInfo{accel: accel},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveCNI records one cni-eni command as the plugin reported it.
func (m *Metrics) ObserveCNI(command string, code uint32, d time.Duration) {
	m.cni.WithLabelValues(command, strconv.FormatUint(uint64(code), 10)).Observe(d.Seconds())
}

// ObserveReconcile records one reconciliation and the changes it made.
func (m *Metrics) ObserveReconcile(changes int, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.reconcileRuns.WithLabelValues(outcome).Inc()
	m.reconcileRepairs.Add(float64(changes))
}

// ObserveProbe records one probe: kind tcp or http, result success,
// failure, refused or error.
func (m *Metrics) ObserveProbe(kind, result string) { m.probes.WithLabelValues(kind, result).Inc() }

var buildInfoDesc = prometheus.NewDesc("nodeagent_build_info", "The agent's version, Go version and the sandboxes' accelerator (kvm, tcg, or empty while probing or without sandboxes); always 1.",
	[]string{"version", "goversion", "accel"}, nil)

type buildInfo struct{ accel func() string }

func (b *buildInfo) Describe(ch chan<- *prometheus.Desc) { ch <- buildInfoDesc }

func (b *buildInfo) Collect(ch chan<- prometheus.Metric) {
	accel := ""
	if b.accel != nil {
		accel = b.accel()
	}
	ch <- prometheus.MustNewConstMetric(buildInfoDesc, prometheus.GaugeValue, 1, version.Version, runtime.Version(), accel)
}

var poolDesc = prometheus.NewDesc("nodeagent_eni_pool_size", "ENIs registered on the node, by VPC and state.", []string{"vpc", "state"}, nil)

type poolCollector struct{ src PoolSource }

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- poolDesc; ch <- pendingDesc }

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.src.Pools() {
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(p.Free), p.VPC, "free")
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(p.Attached), p.VPC, "attached")
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(p.Missing), p.VPC, "missing")
		ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(p.Pending), p.VPC)
	}
}

var pendingDesc = prometheus.NewDesc("nodeagent_eni_assignments_pending", "Pods assigned to a VPC (or one of its ENIs) on this node that hold no ENI yet.", []string{"vpc"}, nil)
