// Package driver is csi-ceph's CSI layer: a gRPC adapter over package rbd
// (Ceph operations) and package mapper (block devices on the node). It
// serves the identity (identity.go), controller (controller.go: volumes,
// capacity, expansion; params.go: StorageClass parameters; snapshots.go:
// snapshots, and volumes made from a snapshot or a volume) and node
// (node.go: stage and unstage; publish.go: publish, unpublish and
// expansion; health.go: what a staging record still holds, healing,
// stats and volume health) services. The node keeps a staging record per
// staged volume (staging.go) and makes filesystems on first use
// (format.go). Connections are shared per cluster and user and closed
// when idle (conns.go). Volume and snapshot IDs are in ids.go, the
// cluster config in clusters.go. Each handler validates its request,
// calls the domain, and converts the error to a gRPC status once, with
// toStatus (errors.go). serve.go serves the services, gives each call a
// logger naming its volume, and serves the metrics (--metrics-addr);
// observe.go times the Ceph-side operations and counts the staged
// volumes for them.
package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"

	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Name is the CSI driver name of the RBD driver.
const Name = "rbd.csi.nodeinfra.dev"

// Driver types (--type): one binary serves either.
const (
	TypeRBD    = "rbd"
	TypeCephFS = "cephfs"
)

// Modes.
const (
	ModeAll        = "all"
	ModeController = "controller"
	ModeNode       = "node"
)

// Config is the driver's configuration (flags of csi-ceph).
type Config struct {
	Endpoint      string // unix:///path
	NodeID        string
	Type          string // rbd or cephfs
	Mode          string
	ClusterConfig string
	// CredentialsDir optionally holds <clusterID>/userID and
	// <clusterID>/userKey, used by the calls that carry no secrets
	// (ListVolumes, GetCapacity).
	CredentialsDir string
	// StateDir holds the node's staging records and mapping work dirs.
	StateDir string
	// MaxVolumesPerNode is reported by NodeGetInfo (0: no limit).
	MaxVolumesPerNode int64
	// MapperCgroup is the cgroup (in every hierarchy) the node's mapper
	// daemons run in, outside the plugin's container so that they outlive
	// it; "" leaves them in the plugin's own cgroup.
	MapperCgroup string
	// ConnIdle is how long a cached cluster connection may go unused
	// before it is closed (0: DefaultConnIdle).
	ConnIdle time.Duration
	// CloneWait is how long a CephFS CreateVolume from a source waits for
	// Ceph to finish the clone before it answers Aborted (the CO asks
	// again); 0 answers at once.
	CloneWait time.Duration
	// MetricsAddr is where Prometheus metrics are served over HTTP
	// (HOST:PORT or :PORT; an IPv6 host may come unbracketed); "": none.
	MetricsAddr string
	Version     string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if _, err := socketPath(c.Endpoint); err != nil {
		return err
	}
	if c.Type != TypeRBD && c.Type != TypeCephFS {
		return fmt.Errorf("--type %q: want %s or %s", c.Type, TypeRBD, TypeCephFS)
	}
	switch c.Mode {
	case ModeAll, ModeController, ModeNode:
	default:
		return fmt.Errorf("--mode %q: want all, controller or node", c.Mode)
	}
	if c.Mode != ModeController && c.NodeID == "" {
		return errors.New("--nodeid is required in node mode")
	}
	if c.ClusterConfig == "" {
		return errors.New("--cluster-config is required")
	}
	if c.CloneWait < 0 {
		return fmt.Errorf("clone wait %v is negative", c.CloneWait)
	}
	if c.ConnIdle < 0 {
		return fmt.Errorf("connection idle time %v is negative", c.ConnIdle)
	}
	if c.MetricsAddr != "" {
		if _, err := metricsListenAddr(c.MetricsAddr); err != nil {
			return err
		}
	}
	return nil
}

func socketPath(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" || (u.Path == "" && u.Host == "") {
		return "", fmt.Errorf("--endpoint %q: want unix:///path/to/csi.sock", endpoint)
	}
	p := u.Path
	if u.Host != "" {
		p = filepath.Join(u.Host, u.Path)
	}
	return p, nil
}

// Driver is the CSI driver.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg      Config
	clusters Clusters
	log      *slog.Logger
	locks    *locks
	node     *node
	conns    *connCache[*rbd.Conn]
	probes   *probeLog
	// metrics are nil without --metrics-addr; then obs and conds are nil
	// too.
	metrics *metrics.Metrics
	obs     opObserver
	conds   *conditions
}

// New builds a driver from cfg.
func New(cfg Config, log *slog.Logger) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	clusters, err := LoadClusters(cfg.ClusterConfig)
	if err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, clusters: clusters, log: log, locks: newLocks(),
		conns: newConnCache(cfg.ConnIdle, rbd.Connect), probes: newProbeLog()}
	if cfg.Mode != ModeController {
		if !filepath.IsAbs(cfg.StateDir) {
			return nil, fmt.Errorf("--state-dir %q must be an absolute path", cfg.StateDir)
		}
		if d.node, err = newNode(cfg.StateDir, cfg.MapperCgroup, log); err != nil {
			return nil, err
		}
	}
	var list func() ([]metrics.Volume, error)
	if d.node != nil {
		list = d.stagedVolumes
	}
	if d.metrics = newMetrics(cfg, Name, rbdMapperLabels, list); d.metrics != nil {
		d.obs, d.conds = d.metrics, newConditions()
	}
	return d, nil
}

// Run serves CSI on the endpoint until ctx ends.
func (d *Driver) Run(ctx context.Context) error {
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

// locks hands out per-ID locks; a busy ID means the call is Aborted, as
// the CSI spec asks for concurrent operations on one volume.
type locks struct {
	mu   sync.Mutex
	held map[string]bool
}

func newLocks() *locks { return &locks{held: map[string]bool{}} }

func (l *locks) tryLock(id string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[id] {
		return nil, fmt.Errorf("an operation on %q is already in progress: %w", id, errdefs.ErrAborted)
	}
	l.held[id] = true
	return func() {
		l.mu.Lock()
		delete(l.held, id)
		l.mu.Unlock()
	}, nil
}
