// Package metrics defines the node agent's Prometheus metrics.
package metrics

import (
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"

	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/nodeinfra/nodeinfra/nodeagent/eni"
)

// Metrics are the agent's collectors, registered on their own registry.
type Metrics struct {
	Registry *prometheus.Registry
	add, del prometheus.Histogram
	rpcs     *prometheus.CounterVec
}

var latencyBuckets = []float64{.001, .002, .005, .01, .015, .02, .03, .05, .1, .25, .5, 1, 2.5, 5}

// PoolSource reports ENI pools at scrape time.
type PoolSource interface{ Pools() []eni.Pool }

// New creates the metrics; pools is read at every scrape.
func New(pools PoolSource) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		add: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nodeagent_cni_add_duration_seconds",
			Help:    "Duration of successful cni-eni ADDs, as measured by the plugin.",
			Buckets: latencyBuckets,
		}),
		del: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "nodeagent_cni_del_duration_seconds",
			Help:    "Duration of cni-eni DELs that released an ENI, as measured by the plugin.",
			Buckets: latencyBuckets,
		}),
		rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nodeagent_grpc_requests_total",
			Help: "gRPC requests served, by method and status code.",
		}, []string{"method", "code"}),
	}
	m.Registry.MustRegister(m.add, m.del, m.rpcs, &poolCollector{src: pools},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveAdd records one ADD.
func (m *Metrics) ObserveAdd(d time.Duration) { m.add.Observe(d.Seconds()) }

// ObserveDel records one DEL.
func (m *Metrics) ObserveDel(d time.Duration) { m.del.Observe(d.Seconds()) }

// CountRPC records one served RPC.
func (m *Metrics) CountRPC(method, code string) { m.rpcs.WithLabelValues(method, code).Inc() }

var poolDesc = prometheus.NewDesc("nodeagent_eni_pool_size", "ENIs registered on the node, by VPC and state.", []string{"vpc", "state"}, nil)

type poolCollector struct{ src PoolSource }

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- poolDesc }

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.src.Pools() {
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(p.Free), p.VPC, "free")
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(p.Attached), p.VPC, "attached")
		ch <- prometheus.MustNewConstMetric(poolDesc, prometheus.GaugeValue, float64(p.Missing), p.VPC, "missing")
	}
}

// SandboxSource lists the sandboxes, for nodeagent_sandboxes.
type SandboxSource interface{ List() []sandbox.Sandbox }

// WatchSandboxes exports the number of sandboxes by state.
func (m *Metrics) WatchSandboxes(src SandboxSource) {
	m.Registry.MustRegister(&sandboxCollector{src: src})
}

var sandboxDesc = prometheus.NewDesc("nodeagent_sandboxes", "Pod sandboxes (QEMU VMs) on the node, by state.", []string{"state"}, nil)

type sandboxCollector struct{ src SandboxSource }

func (c *sandboxCollector) Describe(ch chan<- *prometheus.Desc) { ch <- sandboxDesc }

func (c *sandboxCollector) Collect(ch chan<- prometheus.Metric) {
	n := map[sandbox.State]int{}
	for _, s := range c.src.List() {
		n[s.State]++
	}
	for _, st := range []sandbox.State{sandbox.StateCreating, sandbox.StateReady, sandbox.StateStopping, sandbox.StateStopped, sandbox.StateFailed} {
		ch <- prometheus.MustNewConstMetric(sandboxDesc, prometheus.GaugeValue, float64(n[st]), string(st))
	}
}
