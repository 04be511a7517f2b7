// Package driver is csi-ceph's CSI layer: a gRPC adapter over package rbd
// (Ceph operations) and package mapper (block devices on the node). It
// serves the identity (identity.go), controller (controller.go: volumes,
// capacity, expansion; snapshots.go: snapshots, and volumes made from a
// snapshot or a volume) and node (node.go) services, the node keeping a
// staging record per staged volume (staging.go) and making filesystems on
// first use (format.go). Volume and snapshot IDs are in ids.go, the
// cluster config in clusters.go. Each handler validates its request, calls
// the domain, and converts the error to a gRPC status once, with toStatus
// (errors.go).
package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
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
	Version           string
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

	mu    sync.Mutex
	conns map[string]*rbd.Conn // by cluster, user and key hash
	creds map[string]rbd.Credentials
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
		conns: map[string]*rbd.Conn{}, creds: map[string]rbd.Credentials{}}
	if cfg.Mode != ModeController {
		if !filepath.IsAbs(cfg.StateDir) {
			return nil, fmt.Errorf("--state-dir %q must be an absolute path", cfg.StateDir)
		}
		d.node = newNode(cfg.StateDir)
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
	d.log.Info("csi-ceph serving", "endpoint", d.cfg.Endpoint, "mode", d.cfg.Mode, "clusters", len(d.clusters))
	select {
	case <-ctx.Done():
		g.GracefulStop()
	case err := <-errc:
		return err
	}
	d.closeConns()
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

// credsFrom reads userID and userKey from CSI secrets.
func credsFrom(secrets map[string]string) (rbd.Credentials, error) {
	c := rbd.Credentials{ID: secrets["userID"], Key: secrets["userKey"]}
	if c.ID == "" || c.Key == "" {
		return c, fmt.Errorf("secrets must carry userID and userKey: %w", errdefs.ErrInvalidArgument)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)
	}
	return c, nil
}

// conn returns a (cached) connection to a cluster as creds.
func (d *Driver) conn(ctx context.Context, clusterID string, creds rbd.Credentials) (*rbd.Conn, error) {
	cl, err := d.clusters.Get(clusterID)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(creds.Key))
	k := clusterID + "\x00" + creds.ID + "\x00" + hex.EncodeToString(sum[:8])
	d.mu.Lock()
	c, ok := d.conns[k]
	d.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err = rbd.Connect(ctx, cl.Monitors, creds)
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, errdefs.ErrUnavailable)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if other, ok := d.conns[k]; ok {
		c.Close()
		return other, nil
	}
	d.conns[k] = c
	d.creds[clusterID] = creds
	return c, nil
}

// connNoSecrets connects for a call that carries no secrets: with the
// credentials from CredentialsDir, else the last ones a request used.
func (d *Driver) connNoSecrets(ctx context.Context, clusterID string) (*rbd.Conn, error) {
	if d.cfg.CredentialsDir != "" {
		id, err1 := os.ReadFile(filepath.Join(d.cfg.CredentialsDir, clusterID, "userID"))
		key, err2 := os.ReadFile(filepath.Join(d.cfg.CredentialsDir, clusterID, "userKey"))
		if err1 == nil && err2 == nil {
			return d.conn(ctx, clusterID, rbd.Credentials{ID: strings.TrimSpace(string(id)), Key: strings.TrimSpace(string(key))})
		}
	}
	d.mu.Lock()
	creds, ok := d.creds[clusterID]
	d.mu.Unlock()
	if !ok {
		if _, err := d.clusters.Get(clusterID); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("no credentials for cluster %q yet (set --credentials-dir): %w", clusterID, errdefs.ErrFailedPrecondition)
	}
	return d.conn(ctx, clusterID, creds)
}

func (d *Driver) closeConns() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, c := range d.conns {
		c.Close()
		delete(d.conns, k)
	}
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
