package mapper

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper/fakekrbd"
)

func fakeImages(imgs ...fakekrbd.Image) func(pool, name string) (fakekrbd.Image, bool) {
	return func(pool, name string) (fakekrbd.Image, bool) {
		for _, i := range imgs {
			if i.Pool == pool && i.Name == name {
				return i, true
			}
		}
		return fakekrbd.Image{}, false
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The map line carries the monitors in the protocol the kernel speaks, the
// StorageClass's options and ms_mode where needed; the key never shows in
// an error.
func TestKrbdMapLine(t *testing.T) {
	a := fakekrbd.Image{Pool: "rbd", PoolID: 2, Name: "csi-vol-a", ID: "a1"}
	k := fakekrbd.Start(t, fakeImages(a))
	kr := Krbd{SysRoot: k.SysRoot, DevRoot: k.DevRoot}
	ctx := context.Background()
	base := Target{User: "kube", Key: "SECRET", Pool: "rbd", PoolID: 2, Image: "csi-vol-a", ImageID: "a1"}
	for _, tc := range []struct {
		mons []MonAddr
		opts []string
		want string
	}{
		{[]MonAddr{{V2: "10.0.0.1:3300", V1: "10.0.0.1:6789"}}, nil,
			"10.0.0.1:6789 name=kube,secret=<redacted> rbd csi-vol-a -"},
		{[]MonAddr{{V2: "10.0.0.1:3300"}}, []string{"queue_depth=128"},
			"10.0.0.1:3300 name=kube,secret=<redacted>,ms_mode=prefer-crc,queue_depth=128 rbd csi-vol-a -"},
		{[]MonAddr{{V2: "10.0.0.1:3300", V1: "10.0.0.1:6789"}, {V2: "10.0.0.2:3300", V1: "10.0.0.2:6789"}}, []string{"ms_mode=secure", "lock_on_read"},
			"10.0.0.1:3300,10.0.0.2:3300 name=kube,secret=<redacted>,ms_mode=secure,lock_on_read rbd csi-vol-a -"},
	} {
		tg := base
		tg.MonAddrs, tg.Options = tc.mons, tc.opts
		m, err := kr.Map(ctx, tg, "")
		if err != nil {
			t.Fatal(err)
		}
		added := k.Added()
		if got := added[len(added)-1]; got != tc.want {
			t.Errorf("map line %q, want %q", got, tc.want)
		}
		if err := kr.Unmap(ctx, m); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the unmap", func() bool { return len(k.Devices()) == 0 })
	}
	tg := base
	tg.MonAddrs = []MonAddr{{V1: "10.0.0.1:6789"}}
	tg.Options = []string{"ms_mode=crc"}
	if _, err := kr.Map(ctx, tg, ""); err == nil || strings.Contains(err.Error(), "SECRET") {
		t.Errorf("msgr2 mode against msgr1 monitors: %v", err)
	}
}

// A device ID that now holds another image is stale: Check says so, and
// Unmap leaves it alone while it releases the image's own device.
func TestKrbdStale(t *testing.T) {
	a := fakekrbd.Image{Pool: "rbd", PoolID: 2, Name: "csi-vol-a", ID: "a1"}
	b := fakekrbd.Image{Pool: "rbd", PoolID: 2, Name: "csi-vol-b", ID: "b1"}
	k := fakekrbd.Start(t, fakeImages(a, b))
	kr := Krbd{SysRoot: k.SysRoot, DevRoot: k.DevRoot}
	ctx := context.Background()
	tg := func(img fakekrbd.Image) Target {
		return Target{MonAddrs: []MonAddr{{V1: "10.0.0.1:6789"}}, User: "kube", Key: "K", Pool: img.Pool, PoolID: img.PoolID,
			Image: img.Name, ImageID: img.ID, UnmapOptions: []string{"force"}}
	}
	ma, err := kr.Map(ctx, tg(a), "")
	if err != nil {
		t.Fatal(err)
	}
	mb, err := kr.Map(ctx, tg(b), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := kr.Check(ctx, ma); err != nil {
		t.Fatalf("Check of a live mapping: %v", err)
	}
	// A's record, but its device ID now holds B.
	stale := ma
	stale.KrbdID, stale.Device = mb.KrbdID, mb.Device
	if err := kr.Check(ctx, stale); !errors.Is(err, ErrStale) {
		t.Fatalf("Check of a device that maps B = %v, want ErrStale", err)
	}
	if err := kr.Unmap(ctx, stale); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A's device to go", func() bool { _, ok := k.Holds(ma.KrbdID); return !ok })
	if n, ok := k.Holds(mb.KrbdID); !ok || n != b.Name {
		t.Fatalf("B's device touched: %s", k)
	}
	if got := k.Removed(); !slices.Equal(got, []string{ma.KrbdID + " force"}) {
		t.Fatalf("remove requests %v, want only A's, forced", got)
	}
	// Same name, another image ID (deleted and made again): not A's.
	reborn := ma
	reborn.ImageID = "a2"
	if _, err := kr.Map(ctx, tg(a), ""); err != nil {
		t.Fatal(err)
	}
	ids, _ := kr.find(reborn)
	if len(ids) != 0 {
		t.Fatalf("a device of image ID a1 taken for a2: %v", ids)
	}
	// A device that is gone is stale; a record without a device too.
	k.Remove(mb.KrbdID)
	if err := kr.Check(ctx, mb); !errors.Is(err, ErrStale) {
		t.Fatalf("Check of a removed device = %v", err)
	}
	if err := kr.Check(ctx, Mapping{Mapper: KRBD, Pool: "rbd", Image: b.Name}); !errors.Is(err, ErrStale) {
		t.Fatalf("Check without a device = %v", err)
	}
	// A record of an earlier version (no pool name, no image ID): the
	// pool ID and the name find the device.
	old := Mapping{Mapper: KRBD, PoolID: 2, Image: a.Name}
	if ids, err := kr.find(old); err != nil || len(ids) != 1 {
		t.Fatalf("find by pool ID and name = %v, %v (%s)", ids, err, k)
	}
	if err := kr.Unmap(ctx, old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "all devices to go", func() bool { return len(k.Devices()) == 0 })
	if _, err := os.Stat(k.DevRoot); err != nil {
		t.Fatal(err)
	}
}
