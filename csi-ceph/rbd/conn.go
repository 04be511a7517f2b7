// Package rbd is csi-ceph's Ceph RBD domain, through go-ceph (librados,
// librbd): connections per cluster and user; volumes (images), snapshots,
// clones of snapshots and of volumes (bounded in depth), expansion,
// listing and pool capacity. CSI names map to images and snapshots
// through an omap journal in each pool (journal.go), so that creating
// with a name seen before returns the same thing, also after a restart or
// a crash halfway; naming.go makes the image and snapshot names. Errors
// wrap the pkg/errdefs sentinels (ErrInvalidArgument, ErrNotFound,
// ErrAlreadyExists, ErrFailedPrecondition); the package knows nothing of
// CSI or gRPC. Build with -tags pacific (Debian's Ceph 16).
package rbd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ceph/go-ceph/rados"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Credentials are a cephx user and key, as CSI secrets carry them
// (userID without the "client." prefix, userKey).
type Credentials struct {
	ID  string
	Key string
}

// Validate checks that both parts are present.
func (c Credentials) Validate() error {
	if c.ID == "" || c.Key == "" {
		return errors.New("credentials need userID and userKey")
	}
	if strings.HasPrefix(c.ID, "client.") {
		return fmt.Errorf("userID %q: give the ID without the client. prefix", c.ID)
	}
	return nil
}

// Conn is a connection to one cluster as one user.
type Conn struct {
	rados  *rados.Conn
	closed atomic.Bool
}

// errClosed is returned by a Conn used after Close (librados would crash).
var errClosed = errors.New("ceph connection is closed")

// DefaultTimeout bounds connecting and every monitor and OSD operation.
const DefaultTimeout = 10 * time.Second

// Connect opens a connection to the cluster at monitors ("host:port") as
// creds, reading no ceph.conf or keyring from the host.
func Connect(ctx context.Context, monitors []string, creds Credentials) (*Conn, error) {
	if len(monitors) == 0 {
		return nil, errors.New("connect: no monitors")
	}
	if err := creds.Validate(); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	c, err := rados.NewConnWithUser(creds.ID)
	if err != nil {
		return nil, fmt.Errorf("connect as %s: %w", creds.ID, err)
	}
	timeout := DefaultTimeout
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = time.Until(d)
	}
	secs := fmt.Sprint(int(timeout.Seconds() + 0.999))
	for k, v := range map[string]string{
		"mon_host":             strings.Join(monitors, ","),
		"key":                  creds.Key,
		"keyring":              "",
		"client_mount_timeout": secs,
		"rados_mon_op_timeout": secs,
		"rados_osd_op_timeout": secs,
		"log_to_stderr":        "false",
		"err_to_stderr":        "false",
	} {
		if err := c.SetConfigOption(k, v); err != nil {
			c.Shutdown()
			return nil, fmt.Errorf("connect: set %s: %w", k, err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- c.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			c.Shutdown()
			return nil, fmt.Errorf("connect to %v as %s: %w", monitors, creds.ID, err)
		}
	case <-ctx.Done():
		go func() { <-done; c.Shutdown() }()
		return nil, fmt.Errorf("connect to %v: %w", monitors, ctx.Err())
	}
	return &Conn{rados: c}, nil
}

// Close shuts the connection down; later calls fail with an error.
func (c *Conn) Close() {
	if c.closed.CompareAndSwap(false, true) {
		c.rados.Shutdown()
	}
}

// Rados is the connection's librados handle, for the CephFS admin
// commands (package cephfs) that share the session; nil once closed.
func (c *Conn) Rados() *rados.Conn {
	if c.closed.Load() {
		return nil
	}
	return c.rados
}

// FSID returns the cluster's fsid: a cheap round trip to the monitors.
func (c *Conn) FSID() (string, error) {
	if c.closed.Load() {
		return "", errClosed
	}
	id, err := c.rados.GetFSID()
	if err != nil {
		return "", fmt.Errorf("get fsid: %w", err)
	}
	return id, nil
}

// PoolExists reports whether pool exists.
func (c *Conn) PoolExists(pool string) (bool, error) {
	if c.closed.Load() {
		return false, errClosed
	}
	_, err := c.rados.GetPoolByName(pool)
	if errors.Is(err, rados.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up pool %s: %w", pool, err)
	}
	return true, nil
}

// PoolID returns the ID of pool (ErrNotFound when there is none).
func (c *Conn) PoolID(pool string) (int64, error) {
	if c.closed.Load() {
		return 0, errClosed
	}
	id, err := c.rados.GetPoolByName(pool)
	if errors.Is(err, rados.ErrNotFound) {
		return 0, fmt.Errorf("pool %q: %w", pool, errdefs.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("look up pool %s: %w", pool, err)
	}
	return id, nil
}

// PoolName returns the name of the pool with id.
func (c *Conn) PoolName(id int64) (string, error) {
	if c.closed.Load() {
		return "", errClosed
	}
	name, err := c.rados.GetPoolByID(id)
	if errors.Is(err, rados.ErrNotFound) {
		return "", fmt.Errorf("pool %d: %w", id, errdefs.ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("look up pool %d: %w", id, err)
	}
	return name, nil
}

// Pools lists the cluster's pools.
func (c *Conn) Pools() ([]string, error) {
	if c.closed.Load() {
		return nil, errClosed
	}
	pools, err := c.rados.ListPools()
	if err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	return pools, nil
}

// ioctx opens pool; a missing pool is ErrNotFound.
func (c *Conn) ioctx(pool string) (*rados.IOContext, error) {
	if c.closed.Load() {
		return nil, errClosed
	}
	io, err := c.rados.OpenIOContext(pool)
	if errors.Is(err, rados.ErrNotFound) {
		return nil, fmt.Errorf("pool %q: %w", pool, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open pool %q: %w", pool, err)
	}
	return io, nil
}
