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
// toStatus (errors.go).
package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"

	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Name is the CSI driver name of the RBD driver.
const Name = "rbd.csi.nodeinfra.dev"

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
	Type          string // rbd
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
	Version  string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if _, err := socketPath(c.Endpoint); err != nil {
		return err
	}
	if c.Type != "rbd" {
		return fmt.Errorf("--type %q: only rbd is implemented", c.Type)
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
	if c.ConnIdle < 0 {
		return fmt.Errorf("connection idle time %v is negative", c.ConnIdle)
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
	return d, nil
}

// Run serves CSI on the endpoint until ctx ends.
func (d *Driver) Run(ctx context.Context) error {
	path, _ := socketPath(d.cfg.Endpoint)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old socket: %w", err)
	}
	old := syscall.Umask(0o077)
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(d.logCalls))
	csi.RegisterIdentityServer(g, d)
	if d.cfg.Mode != ModeNode {
		csi.RegisterControllerServer(g, d)
	}
	if d.cfg.Mode != ModeController {
		csi.RegisterNodeServer(g, d)
	}
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	reapCtx, stopReap := context.WithCancel(ctx)
	defer stopReap()
	go d.conns.reapIdle(reapCtx)
	d.log.Info("csi-ceph serving", "endpoint", d.cfg.Endpoint, "mode", d.cfg.Mode, "clusters", len(d.clusters))
	select {
	case <-ctx.Done():
		g.GracefulStop()
	case err := <-errc:
		return err
	}
	d.conns.closeAll()
	return nil
}

// logCalls logs every call without its secrets.
func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	if err != nil {
		d.log.Warn("CSI call failed", "method", info.FullMethod, "error", err, "duration", time.Since(start))
	} else {
		d.log.Debug("CSI call", "method", info.FullMethod, "duration", time.Since(start))
	}
	return resp, err
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
