package enilink

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// newENI creates a veth pair in host: hostName stays there, its peer goes to
// vpc, where it is up. It returns the spec of hostName as an ENI.
func newENI(t *testing.T, host, vpc ns.NetNS, hostName string) Spec {
	t.Helper()
	var mac string
	testutil.Do(t, host, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: hostName + "p", PeerNamespace: netlink.NsFd(int(vpc.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		l, err := netlinksafe.LinkByName(hostName)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr.String()
		return nil
	})
	testutil.Do(t, vpc, func() error {
		l, err := netlinksafe.LinkByName(hostName + "p")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: prefixToIPNet(netip.MustParsePrefix("10.9.0.1/24"))}); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	return Spec{
		MAC: mac, HostName: hostName, MTU: 1400,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.9.0.11/24"), netip.MustParsePrefix("fd00:9::11/64")},
		Gateways:  []netip.Addr{netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("fd00:9::1")},
		Routes:    []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")},
	}
}

func TestMoveInConfigureVerifyMoveOut(t *testing.T) {
	host, vpc, pod := testutil.NewNS(t), testutil.NewNS(t), testutil.NewNS(t)
	spec := newENI(t, host, vpc, "eni7")
	// The node has an eth0 of its own: moving the pod's eth0 back must not clash.
	testutil.Do(t, host, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"})
	})

	testutil.Do(t, host, func() error { return MoveIn(spec, pod, "eth0") })
	testutil.Do(t, host, func() error {
		if _, err := FindByMAC(spec.MAC, spec.HostName); !errors.Is(err, ErrLinkNotFound) {
			t.Errorf("ENI still in node namespace: %v", err)
		}
		return nil
	})
	id, err := Configure(spec, pod, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if id.Kind != "veth" || id.Index <= 0 || id.PeerNetnsID < 0 || id.PeerIndex <= 0 || id.PermAddr != "" {
		t.Errorf("identity of a veth ENI in the pod: %+v", id)
	}
	if err := Verify(spec, pod, "eth0"); err != nil {
		t.Fatalf("fresh pod link drifted: %v", err)
	}
	// A retried ADD finds the link already in the pod.
	testutil.Do(t, host, func() error { return MoveIn(spec, pod, "eth0") })
	if again, err := Configure(spec, pod, "eth0"); err != nil || again != id {
		t.Fatalf("configure again: %+v, %v (first %+v)", again, err, id)
	}

	// Drift: wrong MTU and a removed route are both reported.
	testutil.Do(t, pod, func() error {
		l, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMTU(l, 1300); err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR("192.168.50.0/24")
		return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst})
	})
	err = Verify(spec, pod, "eth0")
	if !errors.Is(err, ErrDrift) {
		t.Fatalf("Verify = %v, want drift", err)
	}
	t.Logf("drift reported: %v", err)

	hostNS := host
	moved, err := MoveOut(spec, id, pod, hostNS)
	if err != nil || !moved {
		t.Fatalf("MoveOut = %v, %v", moved, err)
	}
	testutil.Do(t, host, func() error {
		l, err := netlinksafe.LinkByName(spec.HostName)
		if err != nil {
			return err
		}
		if l.Attrs().Flags&net.FlagUp != 0 {
			t.Error("returned link is up")
		}
		addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		if len(addrs) != 0 {
			t.Errorf("returned link keeps addresses %v", addrs)
		}
		return nil
	})
	// Moving out again finds nothing and is not an error.
	if moved, err := MoveOut(spec, id, pod, hostNS); err != nil || moved {
		t.Fatalf("second MoveOut = %v, %v", moved, err)
	}
}

func TestPodRoutes(t *testing.T) {
	s := Spec{
		Addresses: []netip.Prefix{netip.MustParsePrefix("fd00::5/64"), netip.MustParsePrefix("10.0.0.5/24")},
		Gateways:  []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")},
		Routes:    []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")},
	}
	got := s.PodRoutes()
	if len(got) != 3 || got[0].Dst.String() != "0.0.0.0/0" || got[1].Dst.String() != "::/0" || got[2].GW.String() != "10.0.0.1" {
		t.Fatalf("PodRoutes = %v", got)
	}
}
