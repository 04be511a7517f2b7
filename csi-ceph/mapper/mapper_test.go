package mapper

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fakeHost(t *testing.T, sys, dev []string, bins ...string) Host {
	root := t.TempDir()
	h := Host{SysRoot: filepath.Join(root, "sys"), DevRoot: filepath.Join(root, "dev")}
	for _, p := range sys {
		mustMkfile(t, filepath.Join(h.SysRoot, p))
	}
	for _, p := range dev {
		mustMkfile(t, filepath.Join(h.DevRoot, p))
	}
	h.LookPath = func(b string) (string, error) {
		for _, x := range bins {
			if x == b {
				return "/usr/bin/" + b, nil
			}
		}
		return "", exec.ErrNotFound
	}
	return h
}

func mustMkfile(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestChoose(t *testing.T) {
	all := fakeHost(t, []string{"bus/rbd/add_single_major", "module/nbd/x"}, []string{"fuse", "loop-control"}, "rbd-nbd", "rbd-fuse")
	if got := all.Available(); strings.Join(got, ",") != "krbd,rbd-nbd,fuse" {
		t.Fatalf("Available = %v", got)
	}
	if m, err := all.Choose(""); err != nil || m != KRBD {
		t.Fatalf("Choose() = %v, %v", m, err)
	}
	if m, err := all.Choose(Fuse); err != nil || m != Fuse {
		t.Fatalf("Choose(fuse) = %v, %v", m, err)
	}
	// This machine's kind: no krbd, no nbd module.
	fuseOnly := fakeHost(t, nil, []string{"fuse", "loop-control"}, "rbd-nbd", "rbd-fuse")
	if m, err := fuseOnly.Choose(""); err != nil || m != Fuse {
		t.Fatalf("Choose() on a fuse-only host = %v, %v", m, err)
	}
	if _, err := fuseOnly.Choose(KRBD); err == nil || !strings.Contains(err.Error(), "not available") {
		t.Fatalf("Choose(krbd) on a fuse-only host = %v", err)
	}
	if _, err := fuseOnly.Choose("ceph-fuse"); err == nil {
		t.Fatal("unknown mounter accepted")
	}
	if _, err := fakeHost(t, nil, nil).Choose(""); err == nil {
		t.Fatal("a host with no mapper chose one")
	}
}

func TestTargetValidate(t *testing.T) {
	good := Target{Monitors: []string{"127.0.0.1:3300"}, User: "u", Key: "k", Pool: "rbd", Image: "i"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mut := range []func(*Target){
		func(t *Target) { t.Monitors = nil }, func(t *Target) { t.Key = "" },
		func(t *Target) { t.Image = "" }, func(t *Target) { t.Image = "a b" }, func(t *Target) { t.Pool = "a/b" },
		func(t *Target) { t.User = "x,secret=y" },
	} {
		bad := good
		mut(&bad)
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// krbd against a fake sysfs: a goroutine plays the kernel.
func TestKrbd(t *testing.T) {
	root := t.TempDir()
	k := Krbd{SysRoot: filepath.Join(root, "sys"), DevRoot: "/dev"}
	add := filepath.Join(k.SysRoot, "bus/rbd/add_single_major")
	remove := filepath.Join(k.SysRoot, "bus/rbd/remove_single_major")
	mustMkfile(t, add)
	mustMkfile(t, remove)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			if b, _ := os.ReadFile(add); len(b) > 0 {
				f := strings.Fields(string(b))
				dev := filepath.Join(k.SysRoot, "bus/rbd/devices/3")
				_ = os.MkdirAll(dev, 0o755)
				_ = os.WriteFile(filepath.Join(dev, "pool"), []byte(f[2]+"\n"), 0o644)
				_ = os.WriteFile(filepath.Join(dev, "name"), []byte(f[3]+"\n"), 0o644)
				_ = os.WriteFile(add, nil, 0o644)
			}
			if b, _ := os.ReadFile(remove); len(b) > 0 {
				_ = os.RemoveAll(filepath.Join(k.SysRoot, "bus/rbd/devices", strings.TrimSpace(string(b))))
				_ = os.WriteFile(remove, nil, 0o644)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	tg := Target{Monitors: []string{"10.0.0.1:6789", "10.0.0.2:6789"}, User: "kube", Key: "SECRET", Pool: "rbd", Image: "img", ReadOnly: true}
	m, err := k.Map(ctx, tg, "")
	if err != nil || m.Device != "/dev/rbd3" || m.KrbdID != "3" {
		t.Fatalf("Map = %+v, %v", m, err)
	}
	// Mapping again finds the existing device.
	if m2, err := k.Map(ctx, tg, ""); err != nil || m2 != m {
		t.Fatalf("second Map = %+v, %v", m2, err)
	}
	if err := k.Unmap(ctx, m); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(k.SysRoot, "bus/rbd/devices/3")); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("device not removed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := k.Unmap(ctx, m); err != nil {
		t.Fatalf("second Unmap: %v", err)
	}
}

// rbd-nbd with a fake binary that records its arguments.
func TestNBD(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "rbd-nbd")
	log := filepath.Join(dir, "args")
	script := "#!/bin/sh\necho \"$@\" >> " + log + "\n" +
		"case \"$1\" in map) [ -s \"$5\" ] || exit 3; echo /dev/nbd7;; unmap) [ \"$2\" = /dev/nbd7 ] || { echo 'rbd-nbd: /dev/nbd9 is not mapped' >&2; exit 1; };; esac\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	n := NBD{Bin: bin}
	ctx := context.Background()
	work := filepath.Join(dir, "work")
	m, err := n.Map(ctx, Target{Monitors: []string{"a:1", "b:2"}, User: "kube", Key: "SECRET", Pool: "rbd", Image: "img", ReadOnly: true}, work)
	if err != nil || m.Device != "/dev/nbd7" {
		t.Fatalf("Map = %+v, %v", m, err)
	}
	b, _ := os.ReadFile(log)
	if s := string(b); !strings.Contains(s, "map --id kube --keyfile") || !strings.Contains(s, "-m a:1,b:2 --read-only rbd/img") || strings.Contains(s, "SECRET") {
		t.Fatalf("rbd-nbd called with %q", s)
	}
	// The key stays (root only) while the mapping lives, so that a new
	// daemon can be attached without the stage secrets; Unmap removes it.
	if st, err := os.Stat(filepath.Join(work, "key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", st, err)
	}
	if err := n.Unmap(ctx, m); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(work, "key")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("key file left behind")
	}
	if err := n.Unmap(ctx, Mapping{Mapper: RBDNBD, Device: "/dev/nbd9"}); err != nil {
		t.Fatalf("unmapping a gone device: %v", err)
	}
}
