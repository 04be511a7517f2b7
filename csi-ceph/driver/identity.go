package driver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// GetPluginInfo implements csi.IdentityServer.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	resp := &csi.GetPluginInfoResponse{Name: Name, VendorVersion: d.cfg.Version}
	if down := d.probes.unreachable(); len(down) > 0 {
		// The clusters the last probe could not reach show here (and in
		// the log).
		resp.Manifest = map[string]string{"unreachableClusters": strings.Join(down, ",")}
	}
	return resp, nil
}

// GetPluginCapabilities implements csi.IdentityServer.
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}},
	}}, nil
}

// Probe implements csi.IdentityServer. In controller mode the driver is
// ready when it can serve at least one configured cluster: a monitor of
// it answers with a Ceph banner (Probe carries no secrets, so it cannot
// log in). One unreachable cluster must not restart a controller that
// serves the others: unreachable clusters are logged when they go down
// and come back.
func (d *Driver) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if d.cfg.Mode == ModeNode {
		return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
	}
	type result struct {
		id  string
		err error
	}
	results := make(chan result, len(d.clusters))
	for id, c := range d.clusters {
		go func() { results <- result{id, monitorAnswers(ctx, c.Monitors)} }()
	}
	reachable := 0
	for range d.clusters {
		r := <-results
		if r.err == nil {
			reachable++
		}
		d.probes.note(d.log, r.id, r.err)
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(reachable > 0)}, nil
}

// probeLog remembers which clusters the last probe could not reach, to
// log a change once rather than every probe.
type probeLog struct {
	mu   sync.Mutex
	down map[string]bool
}

func newProbeLog() *probeLog { return &probeLog{down: map[string]bool{}} }

func (p *probeLog) note(log *slog.Logger, cluster string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err != nil && !p.down[cluster]:
		p.down[cluster] = true
		log.Warn("probe: cluster unreachable", "cluster", cluster, "error", err)
	case err == nil && p.down[cluster]:
		delete(p.down, cluster)
		log.Info("probe: cluster reachable again", "cluster", cluster)
	}
}

// unreachable lists the clusters the last probe could not reach.
func (p *probeLog) unreachable() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for c := range p.down {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// monitorAnswers succeeds when one of the monitors sends a Ceph messenger
// banner ("ceph v027" for msgr1, "ceph v2" for msgr2).
func monitorAnswers(ctx context.Context, monitors []string) error {
	var last error
	for _, m := range monitors {
		addr := m
		for _, p := range []string{"v1:", "v2:"} {
			if len(addr) > 3 && addr[:3] == p {
				addr = addr[3:]
			}
		}
		var dl net.Dialer
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		c, err := dl.DialContext(cctx, "tcp", addr)
		cancel()
		if err != nil {
			last = err
			continue
		}
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 7)
		_, err = io.ReadFull(c, buf)
		c.Close()
		if err == nil && string(buf[:6]) == "ceph v" {
			return nil
		}
		last = fmt.Errorf("monitor %s: no Ceph banner (%v)", m, err)
	}
	return last
}
