package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// DefaultConnIdle is how long a cached connection may go unused before it
// is closed.
const DefaultConnIdle = 5 * time.Minute

// connKey names a cached connection: one cluster, one user, one key (a
// rotated key is another connection; the old one goes when idle). The key
// is kept as a hash only.
type connKey struct {
	cluster, user, keyHash string
}

func keyOf(clusterID string, creds rbd.Credentials) connKey {
	sum := sha256.Sum256([]byte(creds.Key))
	return connKey{clusterID, creds.ID, hex.EncodeToString(sum[:8])}
}

// connCache shares connections between calls and closes the ones no call
// has used for idle. A connection is never closed while a call holds it:
// get hands out a release function, and closeIdle skips held ones. It is
// generic over the connection so that tests need no cluster.
type connCache[C interface{ Close() }] struct {
	idle    time.Duration
	connect func(ctx context.Context, monitors []string, creds rbd.Credentials) (C, error)

	mu    sync.Mutex
	conns map[connKey]*cachedConn[C]
}

type cachedConn[C any] struct {
	c        C
	users    int
	lastUsed time.Time
}

func newConnCache[C interface{ Close() }](idle time.Duration, connect func(context.Context, []string, rbd.Credentials) (C, error)) *connCache[C] {
	if idle <= 0 {
		idle = DefaultConnIdle
	}
	return &connCache[C]{idle: idle, connect: connect, conns: map[connKey]*cachedConn[C]{}}
}

// get returns the connection of k, connecting when there is none; the
// caller calls release when it is done with it.
func (cc *connCache[C]) get(ctx context.Context, k connKey, monitors []string, creds rbd.Credentials) (C, func(), error) {
	cc.mu.Lock()
	if e, ok := cc.conns[k]; ok {
		e.users++
		cc.mu.Unlock()
		return e.c, cc.releaser(k, e), nil
	}
	cc.mu.Unlock()
	c, err := cc.connect(ctx, monitors, creds)
	if err != nil {
		var zero C
		return zero, nil, err
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if other, ok := cc.conns[k]; ok { // another call connected meanwhile
		c.Close()
		other.users++
		return other.c, cc.releaser(k, other), nil
	}
	e := &cachedConn[C]{c: c, users: 1}
	cc.conns[k] = e
	return c, cc.releaser(k, e), nil
}

func (cc *connCache[C]) releaser(k connKey, e *cachedConn[C]) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			cc.mu.Lock()
			e.users--
			e.lastUsed = time.Now()
			cc.mu.Unlock()
		})
	}
}

// closeIdle closes the connections nobody holds that were last used
// before now-idle, and returns how many it closed.
func (cc *connCache[C]) closeIdle(now time.Time) int {
	cc.mu.Lock()
	var idle []C
	for k, e := range cc.conns {
		if e.users == 0 && now.Sub(e.lastUsed) >= cc.idle {
			idle = append(idle, e.c)
			delete(cc.conns, k)
		}
	}
	cc.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
	return len(idle)
}

// closeAll closes every connection (the driver is stopping: no call runs).
func (cc *connCache[C]) closeAll() {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	for k, e := range cc.conns {
		e.c.Close()
		delete(cc.conns, k)
	}
}

// reapIdle closes idle connections until ctx ends.
func (cc *connCache[C]) reapIdle(ctx context.Context) {
	t := time.NewTicker(cc.idle / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			cc.closeIdle(now)
		}
	}
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

// credsFromDir reads the credentials of clusterID for calls that carry no
// secrets: <dir>/<clusterID>/userID and userKey, and nothing else. Without
// them such a call fails; it never borrows the credentials another call
// (another tenant) brought.
func credsFromDir(dir, clusterID string) (rbd.Credentials, error) {
	if dir == "" {
		return rbd.Credentials{}, fmt.Errorf("a call without secrets needs --credentials-dir: %w", errdefs.ErrFailedPrecondition)
	}
	id, err1 := os.ReadFile(filepath.Join(dir, clusterID, "userID"))
	key, err2 := os.ReadFile(filepath.Join(dir, clusterID, "userKey"))
	if err := errors.Join(err1, err2); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return rbd.Credentials{}, fmt.Errorf("no credentials for cluster %q in --credentials-dir: %w", clusterID, errdefs.ErrFailedPrecondition)
		}
		return rbd.Credentials{}, fmt.Errorf("read credentials of cluster %q: %w", clusterID, err)
	}
	c := rbd.Credentials{ID: strings.TrimSpace(string(id)), Key: strings.TrimSpace(string(key))}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("credentials of cluster %q in --credentials-dir: %v: %w", clusterID, err, errdefs.ErrFailedPrecondition)
	}
	return c, nil
}

// conn returns a connection to a cluster as creds, shared with other calls
// of the same cluster and user; the caller calls release when done.
func (d *Driver) conn(ctx context.Context, clusterID string, creds rbd.Credentials) (*rbd.Conn, func(), error) {
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

// connNoSecrets connects for a call that carries no secrets, with the
// credentials of --credentials-dir only.
func (d *Driver) connNoSecrets(ctx context.Context, clusterID string) (*rbd.Conn, func(), error) {
	if _, err := d.clusters.Get(clusterID); err != nil {
		return nil, nil, err
	}
	creds, err := credsFromDir(d.cfg.CredentialsDir, clusterID)
	if err != nil {
		return nil, nil, err
	}
	return d.conn(ctx, clusterID, creds)
}

// connFor connects with secrets when a call carries them, else as a
// secret-less call.
func (d *Driver) connFor(ctx context.Context, clusterID string, secrets map[string]string) (*rbd.Conn, func(), error) {
	if len(secrets) == 0 {
		return d.connNoSecrets(ctx, clusterID)
	}
	creds, err := credsFrom(secrets)
	if err != nil {
		return nil, nil, err
	}
	return d.conn(ctx, clusterID, creds)
}
