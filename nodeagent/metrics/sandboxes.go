package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/nodeagent/vmtemplate"
)

// SandboxSource is what the sandbox metrics read: the sandboxes, their
// accounting, and their events.
type SandboxSource interface {
	List() []sandbox.Sandbox
	Stats(ctx context.Context, id string) (sandbox.Stats, error)
	Watch(ctx context.Context, includeCurrent bool) <-chan sandbox.Event
}

// statsTimeout bounds one sandbox's accounting at scrape time (a QMP
// round trip and a few files).
const statsTimeout = 2 * time.Second

// WatchSandboxes exports the sandboxes by state and each running one's
// use (collected at scrape time), and follows src's events until ctx ends
// for the boot durations, failures and OOM kills.
func (m *Metrics) WatchSandboxes(ctx context.Context, src SandboxSource) {
	m.Registry.MustRegister(&sandboxCollector{src: src})
	if t, ok := src.(TemplateSource); ok {
		m.Registry.MustRegister(&templateCollector{src: t})
	}
	if p, ok := src.(WarmPoolSource); ok {
		m.Registry.MustRegister(&poolVMCollector{src: p})
	}
	started := time.Now()
	go func() {
		for ctx.Err() == nil {
			for e := range src.Watch(ctx, false) {
				m.observeEvent(e, started)
			}
			// Cut off (too far behind) or the manager closed: watch again.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
}

// observeEvent counts what an event tells: a boot that reached Ready (in
// this agent's life: a re-adopted sandbox's boot was counted before), a
// failure by its kind, an OOM kill.
func (m *Metrics) observeEvent(e sandbox.Event, started time.Time) {
	s := e.Sandbox
	switch e.Type {
	case sandbox.EventState:
		switch s.State {
		case sandbox.StateReady:
			if !s.ReadyAt.IsZero() && s.ReadyAt.After(started) && s.ReadyAt.After(s.CreatedAt) {
				m.boot.Observe(s.ReadyAt.Sub(s.CreatedAt).Seconds())
				if s.Start != "" {
					m.starts.WithLabelValues(s.Start).Inc()
				}
			}
		case sandbox.StateFailed:
			m.failures.WithLabelValues(failureKind(s.Reason)).Inc()
		}
	case sandbox.EventOOMKill:
		kind := "sandbox"
		if e.Group != "" {
			kind = "group"
		}
		m.ooms.WithLabelValues(kind).Inc()
	}
}

// failureKind sorts a Failed sandbox's reason into a few kinds, so that
// the label set stays small.
func failureKind(reason string) string {
	switch {
	case strings.HasPrefix(reason, "boot"):
		return "boot"
	case strings.HasPrefix(reason, "guest agent"):
		return "guest_protocol"
	case strings.HasPrefix(reason, "qemu"):
		return "qemu_exit"
	}
	return "other"
}

var (
	sandboxDesc = prometheus.NewDesc("nodeagent_sandboxes", "Pod sandboxes (QEMU VMs) on the node, by state.", []string{"state"}, nil)
	cpuDesc     = prometheus.NewDesc("nodeagent_sandbox_cpu_seconds_total", "CPU time a running sandbox's cgroup (QEMU and its threads) has used.", []string{"sandbox"}, nil)
	memDesc     = prometheus.NewDesc("nodeagent_sandbox_memory_bytes", "Memory charged to a running sandbox's cgroup (guest RAM it touched, QEMU's own).", []string{"sandbox"}, nil)
	memLimDesc  = prometheus.NewDesc("nodeagent_sandbox_memory_limit_bytes", "A running sandbox's cgroup memory limit (0: none).", []string{"sandbox"}, nil)
	throttDesc  = prometheus.NewDesc("nodeagent_sandbox_cpu_throttled_periods_total", "CFS periods a running sandbox's cgroup ran out of CPU quota in.", []string{"sandbox"}, nil)
	diskRDesc   = prometheus.NewDesc("nodeagent_sandbox_disk_read_bytes_total", "Bytes a running sandbox's guest read from a disk (QEMU's counter).", []string{"sandbox", "disk"}, nil)
	diskWDesc   = prometheus.NewDesc("nodeagent_sandbox_disk_write_bytes_total", "Bytes a running sandbox's guest wrote to a disk (QEMU's counter).", []string{"sandbox", "disk"}, nil)
	netRDesc    = prometheus.NewDesc("nodeagent_sandbox_network_receive_bytes_total", "Bytes a running sandbox's VM received through its tap.", []string{"sandbox"}, nil)
	netTDesc    = prometheus.NewDesc("nodeagent_sandbox_network_transmit_bytes_total", "Bytes a running sandbox's VM sent through its tap.", []string{"sandbox"}, nil)
)

type sandboxCollector struct{ src SandboxSource }

func (c *sandboxCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{sandboxDesc, cpuDesc, memDesc, memLimDesc, throttDesc, diskRDesc, diskWDesc, netRDesc, netTDesc} {
		ch <- d
	}
}

func (c *sandboxCollector) Collect(ch chan<- prometheus.Metric) {
	n := map[sandbox.State]int{}
	list := c.src.List()
	for _, s := range list {
		n[s.State]++
	}
	for _, st := range []sandbox.State{sandbox.StateCreating, sandbox.StateReady, sandbox.StateStopping, sandbox.StateStopped, sandbox.StateFailed} {
		ch <- prometheus.MustNewConstMetric(sandboxDesc, prometheus.GaugeValue, float64(n[st]), string(st))
	}
	for _, s := range list {
		if s.State != sandbox.StateReady || s.PID == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
		st, err := c.src.Stats(ctx, s.Spec.ID)
		cancel()
		if err != nil {
			continue // it ended meanwhile, or QEMU did not answer in time
		}
		id := s.Spec.ID
		ch <- prometheus.MustNewConstMetric(cpuDesc, prometheus.CounterValue, st.CPUUsage.Seconds(), id)
		ch <- prometheus.MustNewConstMetric(memDesc, prometheus.GaugeValue, float64(st.MemoryBytes), id)
		ch <- prometheus.MustNewConstMetric(memLimDesc, prometheus.GaugeValue, float64(st.MemoryLimitBytes), id)
		ch <- prometheus.MustNewConstMetric(throttDesc, prometheus.CounterValue, float64(st.CPUThrottledPeriods), id)
		ch <- prometheus.MustNewConstMetric(netRDesc, prometheus.CounterValue, float64(st.NetRxBytes), id)
		ch <- prometheus.MustNewConstMetric(netTDesc, prometheus.CounterValue, float64(st.NetTxBytes), id)
		for disk, d := range st.Disks {
			ch <- prometheus.MustNewConstMetric(diskRDesc, prometheus.CounterValue, float64(d.ReadBytes), id, disk)
			ch <- prometheus.MustNewConstMetric(diskWDesc, prometheus.CounterValue, float64(d.WriteBytes), id, disk)
		}
	}
}

// TemplateSource reports the VM templates at scrape time.
type TemplateSource interface{ Templates() []vmtemplate.Info }

var templateDesc = prometheus.NewDesc("nodeagent_vm_templates", "VM templates sandboxes start from (--fast-start template), by size class and state (building, ready, failed): 1 for the class's current state.", []string{"class", "state"}, nil)

type templateCollector struct{ src TemplateSource }

func (c *templateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- templateDesc }

func (c *templateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, t := range c.src.Templates() {
		for _, st := range []string{vmtemplate.StateBuilding, vmtemplate.StateReady, vmtemplate.StateFailed} {
			v := 0.0
			if t.State == st {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(templateDesc, prometheus.GaugeValue, v, t.Class.String(), st)
		}
	}
}

// WarmPoolSource reports the warm pool at scrape time.
type WarmPoolSource interface{ Pool() []sandbox.PoolInfo }

var poolVMDesc = prometheus.NewDesc("nodeagent_pool_vms", "VMs of the warm pool (--fast-start pool), by size class and state (ready: idle, to be taken; booting: refilling).", []string{"class", "state"}, nil)

type poolVMCollector struct{ src WarmPoolSource }

func (c *poolVMCollector) Describe(ch chan<- *prometheus.Desc) { ch <- poolVMDesc }

func (c *poolVMCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.src.Pool() {
		ch <- prometheus.MustNewConstMetric(poolVMDesc, prometheus.GaugeValue, float64(p.Ready), p.Class.String(), "ready")
		ch <- prometheus.MustNewConstMetric(poolVMDesc, prometheus.GaugeValue, float64(p.Booting), p.Class.String(), "booting")
	}
}
