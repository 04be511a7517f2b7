package rbd

import (
	"context"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

func connect(t *testing.T) (*Conn, testutil.CephCluster) {
	t.Helper()
	cl := testutil.Ceph(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Connect(ctx, cl.Monitors, Credentials{ID: "admin", Key: cl.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, cl
}

func TestConnect(t *testing.T) {
	c, _ := connect(t)
	if id, err := c.FSID(); err != nil || len(id) != 36 {
		t.Fatalf("FSID = %q, %v", id, err)
	}
	if ok, err := c.PoolExists("rbd"); err != nil || !ok {
		t.Fatalf("PoolExists(rbd) = %v, %v", ok, err)
	}
	if ok, err := c.PoolExists("no-such-pool"); err != nil || ok {
		t.Fatalf("PoolExists(no-such-pool) = %v, %v", ok, err)
	}
}

func TestConnectRefusesBadCredentials(t *testing.T) {
	cl := testutil.Ceph(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, creds := range []Credentials{
		{ID: "", Key: cl.AdminKey},
		{ID: "admin", Key: ""},
		{ID: "client.admin", Key: cl.AdminKey},
	} {
		if _, err := Connect(ctx, cl.Monitors, creds); err == nil {
			t.Errorf("Connect(%+v) succeeded", creds)
		}
	}
	// A well-formed key that is not the user's: cephx refuses it (librados
	// keeps retrying until the deadline, which the context sets).
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	if _, err := Connect(short, cl.Monitors, Credentials{ID: "admin", Key: "AQBZvWNpAAAAABAAcYxp8c2dhfIzlX4ey+ZWvQ=="}); err == nil {
		t.Error("Connect with a wrong key succeeded")
	}
	if _, err := Connect(ctx, nil, Credentials{ID: "admin", Key: cl.AdminKey}); err == nil {
		t.Error("Connect without monitors succeeded")
	}
}

func TestUseAfterCloseFails(t *testing.T) {
	c, _ := connect(t)
	c.Close()
	c.Close() // twice is fine
	if _, err := c.FSID(); err == nil {
		t.Error("FSID after Close succeeded")
	}
	if _, _, err := c.CreateVolume(context.Background(), VolumeSpec{Name: "x", Pool: "rbd", SizeBytes: 1 << 20}); err == nil {
		t.Error("CreateVolume after Close succeeded")
	}
}
