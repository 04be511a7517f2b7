package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

type fakeConn struct {
	creds  rbd.Credentials
	closed atomic.Bool
}

func (c *fakeConn) Close() { c.closed.Store(true) }

func newFakeCache(idle time.Duration) (*connCache[*fakeConn], *atomic.Int32) {
	var dials atomic.Int32
	return newConnCache(idle, func(_ context.Context, _ []string, creds rbd.Credentials) (*fakeConn, error) {
		dials.Add(1)
		return &fakeConn{creds: creds}, nil
	}), &dials
}

// Connections are per cluster and user (and key): two tenants on one
// cluster never share one; a connection in use is never closed; an idle
// one is.
func TestConnCache(t *testing.T) {
	cc, dials := newFakeCache(time.Minute)
	ctx := context.Background()
	alice := rbd.Credentials{ID: "alice", Key: "AQAA"}
	bob := rbd.Credentials{ID: "bob", Key: "AQBB"}
	a1, releaseA1, err := cc.get(ctx, keyOf("c1", alice), nil, alice)
	if err != nil {
		t.Fatal(err)
	}
	a2, releaseA2, _ := cc.get(ctx, keyOf("c1", alice), nil, alice)
	b, releaseB, _ := cc.get(ctx, keyOf("c1", bob), nil, bob)
	other, releaseOther, _ := cc.get(ctx, keyOf("c2", alice), nil, alice)
	rotated := rbd.Credentials{ID: "alice", Key: "AQCC"}
	r, releaseR, _ := cc.get(ctx, keyOf("c1", rotated), nil, rotated)
	if a1 != a2 || a1 == b || a1 == other || a1 == r || dials.Load() != 4 {
		t.Fatalf("sharing: alice %p %p, bob %p, other cluster %p, rotated key %p, %d dials", a1, a2, b, other, r, dials.Load())
	}
	if b.creds != bob || a1.creds != alice {
		t.Fatalf("a connection carries another user's credentials: %+v %+v", b.creds, a1.creds)
	}
	releaseA1()
	releaseA1() // a second release is a no-op
	releaseB()
	releaseOther()
	releaseR()
	later := time.Now().Add(2 * time.Minute)
	if n := cc.closeIdle(later); n != 3 {
		t.Fatalf("closeIdle closed %d, want bob's, c2's and the rotated key's", n)
	}
	if a1.closed.Load() || !b.closed.Load() {
		t.Fatal("closed a connection in use, or kept an idle one")
	}
	releaseA2()
	if n := cc.closeIdle(time.Now()); n != 0 {
		t.Fatalf("closed a connection used just now (%d)", n)
	}
	if n := cc.closeIdle(later); n != 1 || !a1.closed.Load() {
		t.Fatalf("closeIdle = %d, closed %v", n, a1.closed.Load())
	}
	// After closing, the next call connects again.
	a3, release, _ := cc.get(ctx, keyOf("c1", alice), nil, alice)
	if a3 == a1 || a3.closed.Load() {
		t.Fatal("a closed connection handed out")
	}
	release()
	cc.closeAll()
	if !a3.closed.Load() {
		t.Fatal("closeAll left a connection open")
	}
}

// A call without secrets uses --credentials-dir and nothing else: never
// the credentials another call brought.
func TestCredentialsForCallsWithoutSecrets(t *testing.T) {
	if _, err := credsFromDir("", "c1"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("no --credentials-dir: %v", err)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "c1"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := credsFromDir(dir, "c1"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("no files for the cluster: %v", err)
	}
	for f, v := range map[string]string{"userID": "lister\n", "userKey": " AQDD\n"} {
		if err := os.WriteFile(filepath.Join(dir, "c1", f), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err := credsFromDir(dir, "c1")
	if err != nil || c != (rbd.Credentials{ID: "lister", Key: "AQDD"}) {
		t.Fatalf("credsFromDir = %+v, %v", c, err)
	}
	if _, err := credsFromDir(dir, "c2"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("another cluster borrowed c1's credentials: %v", err)
	}

	// Through the driver: a call with secrets first, then one without
	// them, with no --credentials-dir: refused, not served as that user.
	var dialed []rbd.Credentials
	d := &Driver{clusters: Clusters{"c1": {ClusterID: "c1", Monitors: []string{"127.0.0.1:1"}}},
		conns: newConnCache(time.Minute, func(_ context.Context, _ []string, creds rbd.Credentials) (*rbd.Conn, error) {
			dialed = append(dialed, creds)
			return nil, errors.New("no cluster in this test")
		})}
	ctx := context.Background()
	if _, _, err := d.connFor(ctx, "c1", map[string]string{"userID": "tenant-a", "userKey": "AQAA"}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("call with secrets: %v", err)
	}
	if _, _, err := d.connFor(ctx, "c1", nil); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("a call without secrets after tenant-a's: %v", err)
	}
	d.cfg.CredentialsDir = dir
	if _, _, err := d.connFor(ctx, "c1", nil); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("call without secrets: %v", err)
	}
	if len(dialed) != 2 || dialed[0].ID != "tenant-a" || dialed[1] != (rbd.Credentials{ID: "lister", Key: "AQDD"}) {
		t.Fatalf("dialed as %+v, want tenant-a, then the credentials dir's user", dialed)
	}
	// connNoSecrets itself refuses an unknown cluster first.
	if _, _, err := d.connNoSecrets(context.Background(), "nope"); !errors.Is(err, ErrUnknownCluster) {
		t.Fatalf("connNoSecrets(unknown cluster) = %v", err)
	}
}
