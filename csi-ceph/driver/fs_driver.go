package driver

// The CephFS driver (--type cephfs): the same binary, its own CSI name,
// serving CephFS subvolumes through package cephfs (controller:
// fs_controller.go; parameters: fs_params.go) and mounting them with the
// kernel client or ceph-fuse through mapper.CephFS (node: fs_node.go).
// It shares the RBD driver's IDs, cluster config, credentials, locks,
// error mapping and serving code.

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodeinfra/nodeinfra/csi-ceph/cephfs"
	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// FSName is the CSI driver name of the CephFS driver.
const FSName = "cephfs.csi.nodeinfra.dev"

// FSDriver is the CephFS CSI driver.
type FSDriver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg      Config
	clusters Clusters
	log      *slog.Logger
	locks    *locks
	conns    *connCache[*cephfs.Conn]
	probes   *probeLog
	node     *fsNode
	// metrics are nil without --metrics-addr; then obs and conds are nil
	// too.
	metrics *metrics.Metrics
	obs     opObserver
	conds   *conditions
}

// NewCephFS builds the CephFS driver from cfg (Type cephfs).
func NewCephFS(cfg Config, log *slog.Logger) (*FSDriver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Type != TypeCephFS {
		return nil, fmt.Errorf("--type %q: the CephFS driver needs %s", cfg.Type, TypeCephFS)
	}
	clusters, err := LoadClusters(cfg.ClusterConfig)
	if err != nil {
		return nil, err
	}
	d := &FSDriver{cfg: cfg, clusters: clusters, log: log, locks: newLocks(),
		conns: newConnCache(cfg.ConnIdle, cephfs.Connect), probes: newProbeLog()}
	if cfg.Mode != ModeController {
		if !filepath.IsAbs(cfg.StateDir) {
			return nil, fmt.Errorf("--state-dir %q must be an absolute path", cfg.StateDir)
		}
		daemons, err := mapper.NewDaemons(cfg.MapperCgroup)
		if err != nil {
			return nil, err
		}
		if d.node, err = newFSNode(cfg.StateDir, mapper.CephFS{FuseBin: "ceph-fuse", MountBin: "mount",
			LookPath: exec.LookPath, Daemons: daemons}, log); err != nil {
			return nil, err
		}
	}
	var list func() ([]metrics.Volume, error)
	if d.node != nil {
		list = d.stagedVolumes
	}
	if d.metrics = newMetrics(cfg, FSName, fsMapperLabels, list); d.metrics != nil {
		d.obs, d.conds = d.metrics, newConditions()
	}
	return d, nil
}

// Run serves CSI on the endpoint until ctx ends.
func (d *FSDriver) Run(ctx context.Context) error {
	d.log.Info("csi-ceph serving", "version", d.cfg.Version, "endpoint", d.cfg.Endpoint, "type", d.cfg.Type, "mode", d.cfg.Mode,
		"clusters", len(d.clusters), "metricsAddr", d.cfg.MetricsAddr)
	return serveCSI(ctx, service{endpoint: d.cfg.Endpoint, log: d.log, metrics: d.metrics, metricsAddr: d.cfg.MetricsAddr,
		register: func(g *grpc.Server) {
			csi.RegisterIdentityServer(g, d)
			if d.cfg.Mode != ModeNode {
				csi.RegisterControllerServer(g, d)
			}
			if d.cfg.Mode != ModeController {
				csi.RegisterNodeServer(g, d)
			}
		}, background: d.conns.reapIdle, onStop: d.conns.closeAll})
}

// group is the subvolume group of a cluster's volumes.
func (d *FSDriver) group(clusterID string) string {
	if g := d.clusters[clusterID].CephFS.SubvolumeGroup; g != "" {
		return g
	}
	return cephfs.DefaultGroup
}

// conn returns a shared session with a cluster as creds.
func (d *FSDriver) conn(ctx context.Context, clusterID string, creds rbd.Credentials) (*cephfs.Conn, func(), error) {
	cl, err := d.clusters.Get(clusterID)
	if err != nil {
		return nil, nil, err
	}
	c, release, err := d.conns.get(ctx, keyOf(clusterID, creds), cl.Monitors, creds)
	if err != nil {
		return nil, nil, fmt.Errorf("%v: %w", err, errdefs.ErrUnavailable)
	}
	return c, release, nil
}

// GetPluginInfo implements csi.IdentityServer.
func (d *FSDriver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	resp := &csi.GetPluginInfoResponse{Name: FSName, VendorVersion: d.cfg.Version}
	if down := d.probes.unreachable(); len(down) > 0 {
		resp.Manifest = map[string]string{"unreachableClusters": strings.Join(down, ",")}
	}
	return resp, nil
}

// GetPluginCapabilities implements csi.IdentityServer.
func (d *FSDriver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}},
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}}, nil
}

// Probe implements csi.IdentityServer, as the RBD driver's does.
func (d *FSDriver) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if d.cfg.Mode == ModeNode {
		return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
	}
	reachable := 0
	for id, c := range d.clusters {
		err := monitorAnswers(ctx, c.Monitors)
		if err == nil {
			reachable++
		}
		d.probes.note(d.log, id, err)
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(reachable > 0)}, nil
}
