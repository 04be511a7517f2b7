package driver

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// GetPluginInfo implements csi.IdentityServer.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: Name, VendorVersion: d.cfg.Version}, nil
}

// GetPluginCapabilities implements csi.IdentityServer.
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}},
	}}, nil
}

// Probe implements csi.IdentityServer. In controller mode it checks that a
// monitor of every configured cluster answers with a Ceph banner (Probe
// carries no secrets, so it cannot log in).
func (d *Driver) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if d.cfg.Mode == ModeNode {
		return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
	}
	for id, c := range d.clusters {
		if err := monitorAnswers(ctx, c.Monitors); err != nil {
			d.log.Warn("probe: cluster unreachable", "cluster", id, "error", err)
			return &csi.ProbeResponse{Ready: wrapperspb.Bool(false)}, nil
		}
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
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
