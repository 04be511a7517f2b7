package enilink

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

func TestIdentityMatch(t *testing.T) {
	veth := Identity{Index: 7, Kind: "veth", PeerIndex: 3, PeerNetnsID: 0}
	nic := Identity{Index: 4, Kind: "device", PermAddr: "0a:00:00:00:00:05", ParentBus: "pci", ParentDev: "0000:00:05.0", PeerNetnsID: -1}
	for _, tc := range []struct {
		name      string
		want, got Identity
		diff      string // "" for a match
	}{
		{"same veth", veth, veth, ""},
		{"same NIC", nic, nic, ""},
		{"other ifindex", veth, Identity{Index: 8, Kind: "veth", PeerIndex: 3, PeerNetnsID: 0}, "ifindex 8, want 7"},
		// What a pod can make: a veth whose peer is beside it, even at the
		// ENI's ifindex once the real one is gone.
		{"pod's own veth", veth, Identity{Index: 7, Kind: "veth", PeerIndex: 9, PeerNetnsID: -1}, "peer ifindex 9, want 3, peer netns ID -1, want 0"},
		{"veth in place of a NIC", nic, Identity{Index: 4, Kind: "veth", PeerIndex: 5, PeerNetnsID: -1}, "kind veth, want device"},
		{"NIC without its device", nic, Identity{Index: 4, Kind: "device", PeerNetnsID: -1}, "permanent MAC , want 0a:00:00:00:00:05"},
		{"other NIC", nic, Identity{Index: 4, Kind: "device", PermAddr: "0a:00:00:00:00:06", ParentBus: "pci", ParentDev: "0000:00:06.0", PeerNetnsID: -1}, "parent device 0000:00:06.0"},
	} {
		err := tc.want.Match(tc.got)
		if tc.diff == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrForeignLink) || !strings.Contains(err.Error(), tc.diff) {
			t.Errorf("%s: Match = %v, want ErrForeignLink mentioning %q", tc.name, err, tc.diff)
		}
	}
	if err := (Identity{Kind: "veth"}).Validate(); err == nil {
		t.Error("identity without an ifindex validated")
	}
	if err := veth.Validate(); err != nil {
		t.Error(err)
	}
}

// ipIn runs ip(8) in n.
func ipIn(t *testing.T, n ns.NetNS, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", filepath.Base(n.Path())}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// linkNames lists n's links as "name mac".
func linkNames(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	var out []string
	testutil.Do(t, n, func() error {
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			out = append(out, l.Attrs().Name+" "+macOf(l))
		}
		return err
	})
	sort.Strings(out)
	return out
}

// attached is an ENI moved into a pod and configured, as ADD leaves it.
func attached(t *testing.T) (host, pod ns.NetNS, spec Spec, id Identity) {
	t.Helper()
	host, vpc, pod := testutil.NewNS(t), testutil.NewNS(t), testutil.NewNS(t)
	spec = newENI(t, host, vpc, "eni3")
	testutil.Do(t, host, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mgmt0"}, PeerName: "mgmt0p"})
	})
	testutil.Do(t, host, func() error { return MoveIn(spec, pod, "eth0") })
	id, err := Configure(spec, pod, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	return host, pod, spec, id
}

// A pod with NET_ADMIN in its namespace hides its ENI and plants a veth in
// its place with the ENI's name, MAC and a forged alias: MoveOut takes the
// real ENI back under its registered name and leaves the impostor. What
// the pod did to the ENI itself (name, MAC, alias, a macvlan on it) is
// undone or removed.
func TestMoveOutTakesOnlyTheENI(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, pod ns.NetNS, spec Spec)
		left   []string // pod links left after MoveOut, besides lo
	}{
		{"untouched", func(*testing.T, ns.NetNS, Spec) {}, nil},
		{"renamed, impostor planted", func(t *testing.T, pod ns.NetNS, spec Spec) {
			ipIn(t, pod, "link", "set", "eth0", "down")
			ipIn(t, pod, "link", "set", "eth0", "name", "hide0")
			ipIn(t, pod, "link", "add", "eth0", "address", spec.MAC, "type", "veth", "peer", "name", "eth0p")
			ipIn(t, pod, "link", "set", "eth0", "alias", "cni-eni:mgmt0")
		}, []string{"eth0", "eth0p"}},
		{"renamed to a node link's name, new MAC, forged alias", func(t *testing.T, pod ns.NetNS, spec Spec) {
			ipIn(t, pod, "link", "set", "eth0", "down")
			ipIn(t, pod, "link", "set", "eth0", "name", "mgmt0", "address", "02:00:00:00:66:66", "alias", "cni-eni:mgmt0")
		}, nil},
		{"macvlan on the ENI", func(t *testing.T, pod ns.NetNS, spec Spec) {
			ipIn(t, pod, "link", "add", "mv0", "link", "eth0", "type", "macvlan", "mode", "bridge")
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host, pod, spec, id := attached(t)
			before := linkNames(t, host)
			tc.tamper(t, pod, spec)
			moved, err := MoveOut(spec, id, pod, host)
			if err != nil || !moved {
				t.Fatalf("MoveOut = %v, %v", moved, err)
			}
			want := append(before, spec.HostName+" "+spec.MAC)
			sort.Strings(want)
			if got := linkNames(t, host); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("node links %v, want %v", got, want)
			}
			testutil.Do(t, host, func() error {
				l, err := netlinksafe.LinkByName(spec.HostName)
				if err == nil && (l.Attrs().Alias != "" || l.Attrs().Flags&1 != 0) {
					t.Errorf("returned ENI: alias %q, flags %v", l.Attrs().Alias, l.Attrs().Flags)
				}
				return err
			})
			var left []string
			for _, l := range linkNames(t, pod) {
				if name, _, _ := strings.Cut(l, " "); name != "lo" {
					left = append(left, name)
				}
			}
			if fmt.Sprint(left) != fmt.Sprint(tc.left) {
				t.Errorf("pod links left %v, want %v", left, tc.left)
			}
		})
	}
}

// When the ENI is gone from the pod (a veth ENI the pod deleted), a link
// the pod made at the ENI's very ifindex, with its MAC, is still refused.
func TestMoveOutRefusesAnImpostorAtTheENIsIndex(t *testing.T) {
	host, pod, spec, id := attached(t)
	before := linkNames(t, host)
	ipIn(t, pod, "link", "del", "eth0")
	// The kernel frees the ifindex a moment after the delete.
	args := []string{"-n", filepath.Base(pod.Path()), "link", "add", "eth0", "index", fmt.Sprint(id.Index), "address", spec.MAC, "type", "veth", "peer", "name", "eth0p"}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	moved, err := MoveOut(spec, id, pod, host)
	if moved || !errors.Is(err, ErrForeignLink) {
		t.Fatalf("MoveOut = %v, %v; want ErrForeignLink", moved, err)
	}
	t.Logf("refused: %v", err)
	if got := linkNames(t, host); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Errorf("node links %v, want %v", got, before)
	}
	// Nothing at the index: nothing to move, no error.
	ipIn(t, pod, "link", "del", "eth0")
	if moved, err := MoveOut(spec, id, pod, host); moved || err != nil {
		t.Fatalf("MoveOut with the ENI gone = %v, %v", moved, err)
	}
}
