package rbd

import (
	"context"
	"errors"
	"sort"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestListVolumes(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	prefix := uniqueName(t)
	var mine []Volume
	for _, n := range []string{"-c", "-a", "-b"} {
		v, _, err := c.CreateVolume(ctx, VolumeSpec{Name: prefix + n, Pool: "rbd", SizeBytes: 4 << 20})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.DeleteVolume(ctx, v.Pool, v.Image) })
		mine = append(mine, v)
	}
	// A name journaled whose image was never created is not listed.
	io, err := c.ioctx("rbd")
	if err != nil {
		t.Fatal(err)
	}
	defer io.Destroy()
	ghost := newImageName()
	if err := (journal{io}).reserveVolume(prefix+"-d", ghost); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.DeleteVolume(ctx, "rbd", ghost) })

	list, err := c.ListVolumes(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	if !sort.SliceIsSorted(list, func(i, j int) bool { return list[i].Name < list[j].Name }) {
		t.Errorf("ListVolumes is not sorted by name: %+v", list)
	}
	var got []Volume
	for _, v := range list {
		if len(v.Name) > len(prefix) && v.Name[:len(prefix)] == prefix {
			got = append(got, v)
		}
	}
	want := []Volume{mine[1], mine[2], mine[0]}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("ListVolumes has %+v of ours, want %+v", got, want)
	}
	if err := c.DeleteVolume(ctx, "rbd", mine[1].Image); err != nil {
		t.Fatal(err)
	}
	list, err = c.ListVolumes(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range list {
		if v.Name == mine[1].Name {
			t.Errorf("ListVolumes lists the deleted %+v", v)
		}
	}
	if _, err := c.ListVolumes(ctx, "no-such-pool"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("ListVolumes in a missing pool = %v", err)
	}
}

func TestPoolStats(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	st, err := c.PoolStats(ctx, "rbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pool rbd: %+v", st)
	if st.AvailableBytes == 0 {
		t.Errorf("PoolStats = %+v: nothing available", st)
	}
	if _, err := c.PoolStats(ctx, "no-such-pool"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("PoolStats of a missing pool = %v", err)
	}
}
