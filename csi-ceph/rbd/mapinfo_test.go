package rbd

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestDecodeImageID(t *testing.T) {
	enc := func(s string) []byte {
		b := binary.LittleEndian.AppendUint32(nil, uint32(len(s)))
		return append(b, s...)
	}
	if id, err := decodeImageID(enc("10a26b8b4567")); err != nil || id != "10a26b8b4567" {
		t.Fatalf("decode = %q, %v", id, err)
	}
	for name, b := range map[string][]byte{
		"empty":     nil,
		"short":     {1, 0},
		"no ID":     enc(""),
		"long len":  append(binary.LittleEndian.AppendUint32(nil, 40), "abc"...),
		"trailing":  append(enc("abc"), 'd'),
		"not hex":   enc("ab/c"),
		"uppercase": enc("ABC"),
	} {
		if id, err := decodeImageID(b); err == nil {
			t.Errorf("%s: decoded %q", name, id)
		}
	}
}

func FuzzDecodeImageID(f *testing.F) {
	f.Add([]byte{3, 0, 0, 0, 'a', 'b', 'c'})
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := decodeImageID(b)
		if err == nil && (id == "" || strings.Trim(id, "0123456789abcdef") != "") {
			t.Fatalf("accepted %q", id)
		}
	})
}

func TestParseMonDump(t *testing.T) {
	// Pacific's "mon dump --format json", cut down: one monitor with both
	// protocols, one with msgr1 only.
	out := []byte(`{"epoch":2,"fsid":"x","mons":[
	 {"rank":0,"name":"a","public_addrs":{"addrvec":[{"type":"v2","addr":"10.0.0.1:3300","nonce":0},{"type":"v1","addr":"10.0.0.1:6789","nonce":0}]},"addr":"10.0.0.1:6789/0"},
	 {"rank":1,"name":"b","public_addrs":{"addrvec":[{"type":"v1","addr":"10.0.0.2:6789","nonce":0}]}}]}`)
	got, err := parseMonDump(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []MonAddr{{V2: "10.0.0.1:3300", V1: "10.0.0.1:6789"}, {V1: "10.0.0.2:6789"}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("parseMonDump = %+v, want %+v", got, want)
	}
	for _, bad := range []string{`{`, `{"mons":[]}`, `{"mons":[{"public_addrs":{"addrvec":[]}}]}`} {
		if _, err := parseMonDump([]byte(bad)); err == nil {
			t.Errorf("parseMonDump(%s) succeeded", bad)
		}
	}
}

// ImageID reads the same ID librbd reports; MonitorAddrs finds the test
// cluster's monitor with both protocols.
func TestImageIDAndMonitors(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	v, _, err := c.CreateVolume(ctx, VolumeSpec{Name: uniqueName(t), Pool: "rbd", SizeBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.DeleteVolume(context.Background(), v.Pool, v.Image) })
	id, err := c.ImageID(ctx, v.Pool, v.Image)
	if err != nil {
		t.Fatal(err)
	}
	io, err := c.ioctx(v.Pool)
	if err != nil {
		t.Fatal(err)
	}
	defer io.Destroy()
	img, err := librbd.OpenImageReadOnly(io, v.Image, librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	want, err := img.GetId()
	img.Close()
	if err != nil || id != want {
		t.Fatalf("ImageID = %q, librbd says %q (%v)", id, want, err)
	}
	if _, err := c.ImageID(ctx, v.Pool, "csi-vol-missing"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("ImageID of a missing image = %v", err)
	}
	mons, err := c.MonitorAddrs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(mons) != 1 || !strings.HasPrefix(mons[0].V2, "127.0.0.1:") || !strings.HasPrefix(mons[0].V1, "127.0.0.1:") {
		t.Fatalf("MonitorAddrs = %+v, want one monitor on 127.0.0.1 with v2 and v1", mons)
	}
}

// A volume with a data pool keeps its data objects there; the same name
// with another data pool is refused.
func TestCreateVolumeWithDataPool(t *testing.T) {
	c, _ := connect(t)
	ctx := context.Background()
	dataPool := "data-" + uniqueName(t)
	if err := c.rados.MakePool(dataPool); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.rados.DeletePool(dataPool) })
	spec := VolumeSpec{Name: uniqueName(t), Pool: "rbd", SizeBytes: 8 << 20, DataPool: dataPool}
	v, created, err := c.CreateVolume(ctx, spec)
	if err != nil || !created {
		t.Fatalf("CreateVolume = %+v, %v, %v", v, created, err)
	}
	t.Cleanup(func() { _ = c.DeleteVolume(context.Background(), v.Pool, v.Image) })
	io, err := c.ioctx(v.Pool)
	if err != nil {
		t.Fatal(err)
	}
	defer io.Destroy()
	img, err := librbd.OpenImageReadOnly(io, v.Image, librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	got, err := img.GetDataPoolID()
	img.Close()
	want, _ := c.PoolID(dataPool)
	if err != nil || got != want {
		t.Fatalf("data pool ID %d (%v), want %d", got, err, want)
	}
	if again, created, err := c.CreateVolume(ctx, spec); err != nil || created || again != v {
		t.Fatalf("second CreateVolume = %+v, %v, %v", again, created, err)
	}
	other := spec
	other.DataPool = "rbd"
	if _, _, err := c.CreateVolume(ctx, other); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("same name, other data pool: %v", err)
	}
	// A clone of it may name a data pool too.
	clone, _, err := c.CreateVolumeFromVolume(ctx, VolumeSpec{Name: uniqueName(t), Pool: "rbd", DataPool: dataPool}, v.Pool, v.Image)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.DeleteVolume(context.Background(), clone.Pool, clone.Image) })
}
