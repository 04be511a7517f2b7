package mapper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeNBD is an rbd-nbd that keeps its "mapped devices" in a file (one
// "device pool image cookie" line each) and logs its arguments.
type fakeNBD struct {
	bin, state, log, sys string
}

func newFakeNBD(t *testing.T) fakeNBD {
	dir := t.TempDir()
	f := fakeNBD{bin: filepath.Join(dir, "rbd-nbd"), state: filepath.Join(dir, "state"), log: filepath.Join(dir, "args"), sys: filepath.Join(dir, "sys")}
	script := `#!/bin/sh
echo "$@" >> ` + f.log + `
state=` + f.state + `
touch $state
last() { for a; do :; done; echo "$a"; }
case "$1" in
map)
	spec=$(last "$@"); pool=${spec%%/*}; img=${spec#*/}
	echo "/dev/nbd5 $pool $img cookie-5" >> $state
	echo "/dev/nbd5 cookie-5";;
attach)
	spec=$(last "$@"); pool=${spec%%/*}; img=${spec#*/}
	echo "/dev/nbd5 $pool $img cookie-5" >> $state;;
list-mapped)
	printf '['; sep=''
	while read dev pool img cookie; do
		printf '%s{"id":1,"pool":"%s","namespace":"","image":"%s","snap":"-","device":"%s","cookie":"%s"}' "$sep" $pool $img $dev $cookie; sep=','
	done < $state
	echo ']';;
unmap)
	dev=$(last "$@")
	grep -q "^$dev " $state || { echo "rbd-nbd: $dev is not mapped" >&2; exit 1; }
	grep -v "^$dev " $state > $state.new; mv $state.new $state;;
esac
`
	if err := os.WriteFile(f.bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	mustMkfile(t, filepath.Join(f.sys, "block/nbd5/backend"))
	if err := os.WriteFile(filepath.Join(f.sys, "block/nbd5/backend"), []byte("cookie-5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f fakeNBD) args(t *testing.T) string {
	b, _ := os.ReadFile(f.log)
	return string(b)
}

// The daemon is started to be reattachable; a device whose daemon died is
// broken (its backend is the mapping's cookie) and Heal attaches a new
// daemon to it with the key the work dir keeps; a device that serves
// another image is stale and Unmap leaves it alone.
func TestNBDReattachAndStale(t *testing.T) {
	f := newFakeNBD(t)
	n := NBD{Bin: f.bin, SysRoot: f.sys}
	ctx := context.Background()
	work := filepath.Join(t.TempDir(), "work")
	tg := Target{Monitors: []string{"a:1", "b:2"}, User: "kube", Key: "SECRET", Pool: "rbd", Image: "csi-vol-a", ImageID: "a1",
		Options: []string{"io-timeout=30", "reattach-timeout=60"}}
	m, err := n.Map(ctx, tg, work)
	if err != nil || m.Device != "/dev/nbd5" || m.Cookie != "cookie-5" || m.Monitors != "a:1,b:2" || m.User != "kube" {
		t.Fatalf("Map = %+v, %v", m, err)
	}
	if a := f.args(t); !strings.Contains(a, "map --id kube --keyfile "+filepath.Join(work, "key")+" --try-netlink --io-timeout 30 --reattach-timeout 60 --show-cookie -m a:1,b:2 rbd/csi-vol-a") || strings.Contains(a, "SECRET") {
		t.Fatalf("rbd-nbd called with %q", a)
	}
	if err := n.Check(ctx, m); err != nil {
		t.Fatalf("Check: %v", err)
	}
	// A retried map finds the device.
	if m2, err := n.Map(ctx, tg, work); err != nil || m2 != m || strings.Count(f.args(t), "map --id") != 1 {
		t.Fatalf("second Map = %+v, %v; args %q", m2, err, f.args(t))
	}

	// The daemon dies: the kernel keeps the device, its backend the cookie.
	if err := os.WriteFile(f.state, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.Check(ctx, m); !errors.Is(err, ErrBroken) {
		t.Fatalf("Check with the daemon gone = %v, want ErrBroken", err)
	}
	healed, err := n.Heal(ctx, m)
	if err != nil || healed != m {
		t.Fatalf("Heal = %+v, %v", healed, err)
	}
	if a := f.args(t); !strings.Contains(a, "attach --id kube --keyfile "+filepath.Join(work, "key")+" --try-netlink --io-timeout 30 --reattach-timeout 60 --device /dev/nbd5 --cookie cookie-5 -m a:1,b:2 rbd/csi-vol-a") {
		t.Fatalf("attach called with %q", a)
	}
	if err := n.Check(ctx, m); err != nil {
		t.Fatalf("Check after Heal: %v", err)
	}

	// The device now serves another image (a reboot, another volume):
	// stale, and left alone.
	if err := os.WriteFile(f.state, []byte("/dev/nbd5 rbd csi-vol-b cookie-9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.Check(ctx, m); !errors.Is(err, ErrStale) {
		t.Fatalf("Check of a device serving B = %v, want ErrStale", err)
	}
	if err := n.Unmap(ctx, m); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(f.args(t), "unmap") {
		t.Fatalf("unmapped a device that serves another image: %q", f.args(t))
	}
	if b, _ := os.ReadFile(f.state); !strings.Contains(string(b), "csi-vol-b") {
		t.Fatal("B's device is gone")
	}
	if _, err := os.Stat(work); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("work dir (with the key) left: %v", err)
	}
	// No cookie of its own: a dead device is not reattachable.
	m.Cookie = ""
	if _, err := n.Heal(ctx, m); err == nil {
		t.Fatal("Heal without a cookie succeeded")
	}
}
