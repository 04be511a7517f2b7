package podnet

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// pod is a pod namespace as cni-eni leaves it: eth0, one end of a veth
// whose peer vpc0 sits in a VPC namespace with the gateway's addresses.
type pod struct {
	pod, vpc ns.NetNS
	mac      net.HardwareAddr // eth0's
	peerMAC  net.HardwareAddr // vpc0's
}

const podMTU = 1400

// wantRoutes are the routes newPod gives eth0, as Inspect reports them.
var wantRoutes = []Route{
	{Dst: "10.20.0.0/16", Scope: ScopeLink},
	{Dst: "169.254.1.1/32", Scope: ScopeLink},
	{Gateway: "10.9.0.1"},
	{Dst: "192.168.50.0/24", Gateway: "10.9.0.1"},
	{Dst: "172.16.0.0/12", Gateway: "10.99.0.1", OnLink: true, Metric: 100, Src: "10.9.0.11"},
	{Dst: "fd00:77::/64", Metric: 1024},
	{Gateway: "fd00:9::1", Metric: 1024},
}

var wantAddrs = []string{"10.9.0.11/24", "fd00:9::11/64"}

func newPod(t *testing.T) pod {
	t.Helper()
	p := pod{pod: testutil.NewNS(t), vpc: testutil.NewNS(t)}
	testutil.Do(t, p.pod, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: podMTU}, PeerName: "vpc0",
			PeerNamespace: netlink.NsFd(int(p.vpc.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		l, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		p.mac = l.Attrs().HardwareAddr
		if err := addAddrs(l, wantAddrs...); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		for _, r := range wantRoutes {
			nr, err := r.toNetlink()
			if err != nil {
				return err
			}
			nr.LinkIndex = l.Attrs().Index
			if err := netlink.RouteAdd(&nr); err != nil {
				return err
			}
		}
		return nil
	})
	testutil.Do(t, p.vpc, func() error {
		l, err := netlinksafe.LinkByName("vpc0")
		if err != nil {
			return err
		}
		p.peerMAC = l.Attrs().HardwareAddr
		if err := netlink.LinkSetMTU(l, podMTU); err != nil {
			return err
		}
		if err := addAddrs(l, "10.9.0.1/24", "fd00:9::1/64"); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	return p
}

func addAddrs(l netlink.Link, cidrs ...string) error {
	for _, c := range cidrs {
		a := &netlink.Addr{IPNet: prefixToIPNet(netip.MustParsePrefix(c))}
		if a.IP.To4() == nil {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
	}
	return nil
}

// link returns the link name in n, or nil.
func link(t *testing.T, n ns.NetNS, name string) netlink.Link {
	t.Helper()
	var l netlink.Link
	testutil.Do(t, n, func() error {
		var err error
		l, err = netlinksafe.LinkByName(name)
		if isLinkNotFound(err) {
			return nil
		}
		return err
	})
	return l
}

// state is what the test looks at in the pod namespace.
type state struct {
	addrs      []string // eth0's global addresses
	routes     int      // routes through eth0 the guest would take over
	eth0Up     bool
	tap        netlink.Link
	eth0Redir  []int // targets of our filters on eth0
	tapRedir   []int
	eth0Qdisc  bool
	otherLinks []string
}

func podState(t *testing.T, p pod) state {
	t.Helper()
	var s state
	testutil.Do(t, p.pod, func() error {
		l, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		s.eth0Up = l.Attrs().Flags&net.FlagUp != 0
		if s.addrs, err = globalAddrs(l); err != nil {
			return err
		}
		rs, err := linkRoutes(l)
		if err != nil {
			return err
		}
		s.routes = len(rs)
		fs, err := redirects(l)
		if err != nil {
			return err
		}
		for _, f := range fs {
			idx, _ := redirectTarget(f)
			s.eth0Redir = append(s.eth0Redir, idx)
		}
		q, err := ingressQdisc(l)
		if err != nil {
			return err
		}
		s.eth0Qdisc = q != nil
		tap, err := netlinksafe.LinkByName("tap0")
		if err == nil {
			s.tap = tap
			fs, err := redirects(tap)
			if err != nil {
				return err
			}
			for _, f := range fs {
				idx, _ := redirectTarget(f)
				s.tapRedir = append(s.tapRedir, idx)
			}
		} else if !isLinkNotFound(err) {
			return err
		}
		links, err := netlinksafe.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if n := l.Attrs().Name; n != "lo" && n != "eth0" && n != "tap0" {
				s.otherLinks = append(s.otherLinks, n)
			}
		}
		return nil
	})
	return s
}

// checkPlugged fails t unless p is plugged into tap0.
func checkPlugged(t *testing.T, p pod) {
	t.Helper()
	s := podState(t, p)
	if s.tap == nil || !isTap(s.tap) {
		t.Fatalf("tap0 = %#v, want a tap", s.tap)
	}
	if s.tap.Attrs().MTU != podMTU || s.tap.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap0 has MTU %d, flags %v; want %d, up", s.tap.Attrs().MTU, s.tap.Attrs().Flags, podMTU)
	}
	if len(s.addrs) != 0 || s.routes != 0 {
		t.Errorf("eth0 keeps addresses %v and %d routes", s.addrs, s.routes)
	}
	if !s.eth0Up {
		t.Error("eth0 is down")
	}
	eth0 := link(t, p.pod, "eth0")
	if !slices.Equal(s.eth0Redir, []int{s.tap.Attrs().Index}) || !slices.Equal(s.tapRedir, []int{eth0.Attrs().Index}) {
		t.Errorf("redirects: eth0 to %v, tap0 to %v; want eth0 to %d and tap0 to %d",
			s.eth0Redir, s.tapRedir, s.tap.Attrs().Index, eth0.Attrs().Index)
	}
	testutil.Do(t, p.pod, func() error {
		v, err := os.ReadFile("/proc/sys/net/ipv6/conf/tap0/disable_ipv6")
		if errors.Is(err, os.ErrNotExist) {
			return nil // no IPv6 in this kernel
		}
		if err != nil {
			return err
		}
		if string(bytes.TrimSpace(v)) != "1" {
			t.Errorf("tap0 has IPv6: disable_ipv6 = %q", v)
		}
		return nil
	})
	checkProber(t, p)
}

// checkUnplugged fails t unless p is as newPod left it.
func checkUnplugged(t *testing.T, p pod, cfg Config) {
	t.Helper()
	s := podState(t, p)
	if s.tap != nil {
		t.Errorf("tap0 is still there")
	}
	if s.eth0Qdisc || len(s.eth0Redir) > 0 {
		t.Errorf("eth0 keeps its ingress qdisc (%v) or redirects %v", s.eth0Qdisc, s.eth0Redir)
	}
	if len(s.otherLinks) > 0 {
		t.Errorf("stray links %v", s.otherLinks)
	}
	got, err := Inspect(p.pod.Path(), "eth0", "tap0")
	if err != nil {
		t.Fatalf("Inspect after teardown: %v", err)
	}
	if !reflect.DeepEqual(got, cfg) {
		t.Errorf("after teardown eth0 is\n%+v\nwant\n%+v", got, cfg)
	}
}

func TestSetupTeardown(t *testing.T) {
	p := newPod(t)
	cfg, err := Setup(p.pod.Path(), "eth0", "tap0")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("config: %+v", cfg)
	if cfg.Interface != "eth0" || cfg.Tap != "tap0" || cfg.MAC != p.mac.String() || cfg.MTU != podMTU {
		t.Errorf("config %+v: want eth0, tap0, MAC %s, MTU %d", cfg, p.mac, podMTU)
	}
	if !slices.Equal(cfg.Addresses, wantAddrs) {
		t.Errorf("addresses %v, want %v", cfg.Addresses, wantAddrs)
	}
	if !sameRoutes(cfg.Routes, wantRoutes) {
		t.Errorf("routes\n%+v\nwant (any order)\n%+v", cfg.Routes, wantRoutes)
	}
	if i := slices.IndexFunc(cfg.Routes, func(r Route) bool { return r.Gateway != "" }); i >= 0 &&
		slices.ContainsFunc(cfg.Routes[i:], func(r Route) bool { return r.Gateway == "" }) {
		t.Errorf("routes without a gateway do not come first: %+v", cfg.Routes)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var back Config
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, cfg) {
		t.Fatalf("JSON round trip: %v\n%s\n%+v", err, b, back)
	}
	checkPlugged(t, p)

	// Plugged: Setup and Inspect refuse, Resume is a no-op.
	if _, err := Setup(p.pod.Path(), "eth0", "tap0"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("Setup again = %v, want already exists", err)
	}
	if _, err := Inspect(p.pod.Path(), "eth0", "tap1"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("Inspect while plugged = %v, want already exists", err)
	}
	tapIndex := link(t, p.pod, "tap0").Attrs().Index
	if err := Resume(p.pod.Path(), back); err != nil {
		t.Fatalf("Resume when done: %v", err)
	}
	checkPlugged(t, p)
	if i := link(t, p.pod, "tap0").Attrs().Index; i != tapIndex {
		t.Errorf("Resume made a new tap")
	}

	tap, err := OpenTap(p.pod.Path(), cfg.Tap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	if f, err := OpenTap(p.pod.Path(), cfg.Tap); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		if f != nil {
			f.Close()
		}
		t.Errorf("second OpenTap = %v, want failed precondition", err)
	}
	exchange(t, p, tap)
	tap.Close()

	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkUnplugged(t, p, cfg)
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	checkUnplugged(t, p, cfg)

	// Plugged again, the namespace goes: Teardown has nothing to do.
	if _, err := Setup(p.pod.Path(), "eth0", "tap0"); err != nil {
		t.Fatalf("Setup after Teardown: %v", err)
	}
	p.pod.Close() // an open file of the namespace keeps its mount busy
	if err := testutils.UnmountNS(p.pod); err != nil {
		t.Fatal(err)
	}
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatalf("Teardown with the namespace gone: %v", err)
	}
	if _, err := OpenTap(p.pod.Path(), cfg.Tap); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("OpenTap with the namespace gone = %v, want not found", err)
	}
}

func sameRoutes(a, b []Route) bool {
	if len(a) != len(b) {
		return false
	}
	for _, r := range b {
		if !slices.Contains(a, r) {
			return false
		}
	}
	return true
}

// exchange proves both redirects with frames through tap, the VM's side:
// the VPC resolves the pod's address (its ARP request comes out of the
// tap, the reply written into the tap reaches it) and sends it a datagram
// (out of the tap); a datagram written into the tap reaches a socket in
// the VPC.
func exchange(t *testing.T, p pod, tap *os.File) {
	podIP, vpcIP := netip.MustParseAddr("10.9.0.11"), netip.MustParseAddr("10.9.0.1")
	var conn *net.UDPConn
	testutil.Do(t, p.vpc, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: vpcIP.AsSlice(), Port: 7001})
		return err
	})
	t.Cleanup(func() { conn.Close() })

	if _, err := conn.WriteToUDP([]byte("to the guest"), &net.UDPAddr{IP: podIP.AsSlice(), Port: 7002}); err != nil {
		t.Fatal(err)
	}
	req := readFrame(t, tap, func(f []byte) bool {
		a, ok := parseARP(f)
		return ok && a.op == 1 && a.tpa == podIP && a.spa == vpcIP
	})
	if !bytes.Equal(req[6:12], p.peerMAC) {
		t.Errorf("ARP request from %x, want %s", req[6:12], p.peerMAC)
	}
	writeFrame(t, tap, arpFrame(2, p.mac, podIP, p.peerMAC, vpcIP))
	dgram := readFrame(t, tap, func(f []byte) bool {
		u, ok := parseUDP(f)
		return ok && u.dst == netip.AddrPortFrom(podIP, 7002)
	})
	if u, _ := parseUDP(dgram); string(u.payload) != "to the guest" || u.src != netip.AddrPortFrom(vpcIP, 7001) ||
		!bytes.Equal(dgram[0:6], p.mac) {
		t.Errorf("datagram to the guest: %+v in %x", u, dgram)
	}

	writeFrame(t, tap, udpFrame(p.mac, p.peerMAC, netip.AddrPortFrom(podIP, 7002), netip.AddrPortFrom(vpcIP, 7001), []byte("from the guest")))
	buf := make([]byte, 100)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("datagram from the guest: %v", err)
	}
	if string(buf[:n]) != "from the guest" || from != netip.AddrPortFrom(podIP, 7002) {
		t.Errorf("VPC got %q from %v", buf[:n], from)
	}
}

// vnetHdrLen is the size of the virtio-net header before each frame on a
// tap file (struct virtio_net_hdr, the tap's default).
const vnetHdrLen = 10

// readFrame returns the first Ethernet frame from tap that match accepts,
// failing t after 5 s.
func readFrame(t *testing.T, tap *os.File, match func([]byte) bool) []byte {
	t.Helper()
	tap.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65536)
	for {
		n, err := tap.Read(buf)
		if err != nil {
			t.Fatalf("read tap: %v", err)
		}
		if n < vnetHdrLen+14 {
			continue
		}
		if f := buf[vnetHdrLen:n]; match(f) {
			return slices.Clone(f)
		}
	}
}

func writeFrame(t *testing.T, tap *os.File, frame []byte) {
	t.Helper()
	if _, err := tap.Write(append(make([]byte, vnetHdrLen), frame...)); err != nil {
		t.Fatalf("write tap: %v", err)
	}
}

type arp struct {
	op       uint16
	sha, tha net.HardwareAddr
	spa, tpa netip.Addr
}

func parseARP(f []byte) (arp, bool) {
	if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_ARP {
		return arp{}, false
	}
	b := f[14:]
	spa, _ := netip.AddrFromSlice(b[14:18])
	tpa, _ := netip.AddrFromSlice(b[24:28])
	return arp{op: binary.BigEndian.Uint16(b[6:]), sha: b[8:14], spa: spa, tha: b[18:24], tpa: tpa}, true
}

func arpFrame(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	f := slices.Concat(tha, sha, []byte{0x08, 0x06},
		[]byte{0, 1, 0x08, 0x00, 6, 4}, binary.BigEndian.AppendUint16(nil, op),
		sha, spa.AsSlice(), tha, tpa.AsSlice())
	return f
}

type udp struct {
	src, dst netip.AddrPort
	payload  []byte
}

func parseUDP(f []byte) (udp, bool) {
	if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP {
		return udp{}, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != unix.IPPROTO_UDP || len(ip) < ihl+8 {
		return udp{}, false
	}
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	u := ip[ihl:]
	end := min(int(binary.BigEndian.Uint16(u[4:])), len(u))
	return udp{
		src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(u[0:])),
		dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(u[2:])),
		payload: u[8:end],
	}, true
}

// udpFrame builds an Ethernet frame with an IPv4 UDP datagram (no UDP
// checksum, which IPv4 allows).
func udpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[12:], src.Addr().AsSlice())
	copy(ip[16:], dst.Addr().AsSlice())
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	u := make([]byte, 8)
	binary.BigEndian.PutUint16(u[0:], src.Port())
	binary.BigEndian.PutUint16(u[2:], dst.Port())
	binary.BigEndian.PutUint16(u[4:], uint16(8+len(payload)))
	return slices.Concat(dstMAC, srcMAC, []byte{0x08, 0x00}, ip, u, payload)
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func TestSetupMissingLink(t *testing.T) {
	p := newPod(t)
	_, err := Setup(p.pod.Path(), "eth9", "tap0")
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Setup without the link = %v, want not found", err)
	}
	t.Logf("error: %v", err)
	s := podState(t, p)
	if s.tap != nil || s.eth0Qdisc || len(s.addrs) != len(wantAddrs) || len(s.otherLinks) > 0 {
		t.Errorf("Setup left something: %+v", s)
	}
	if _, err := Setup("/run/netns/podnet-test-no-such-ns", "eth0", "tap0"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Setup without the namespace = %v, want not found", err)
	}
	if _, err := OpenTap(p.pod.Path(), "tap0"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("OpenTap without a tap = %v, want not found", err)
	}
	if s := podState(t, p); s.tap != nil || len(s.otherLinks) > 0 {
		t.Errorf("OpenTap made a link: %+v", s)
	}
}

func TestResumeFailureUndoes(t *testing.T) {
	p := newPod(t)
	cfg, err := Inspect(p.pod.Path(), "eth0", "tap0")
	if err != nil {
		t.Fatal(err)
	}
	// A tap cannot take this MTU: Resume fails after making the tap.
	bad := cfg
	bad.MTU = 65535
	if err := Resume(p.pod.Path(), bad); err == nil {
		t.Fatal("Resume with MTU 65535 succeeded")
	} else {
		t.Logf("error: %v", err)
	}
	checkUnplugged(t, p, cfg)

	// A link named like the tap that is not one is left alone.
	testutil.Do(t, p.pod, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tap0"}, PeerName: "tap0p"})
	})
	if _, err := Setup(p.pod.Path(), "eth0", "tap0"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Setup with a veth named tap0 = %v, want already exists", err)
	}
	if l := link(t, p.pod, "tap0"); l == nil || l.Type() != "veth" {
		t.Fatalf("tap0 = %v, want the veth", l)
	}
	if s := podState(t, p); s.eth0Qdisc || len(s.addrs) != len(wantAddrs) {
		t.Errorf("failed Setup left %+v", s)
	}
}

func TestResumeAndTeardownHalfway(t *testing.T) {
	p := newPod(t)
	cfg, err := Inspect(p.pod.Path(), "eth0", "tap0")
	if err != nil {
		t.Fatal(err)
	}
	// A Setup cut short after the tap and the tap's redirect.
	testutil.Do(t, p.pod, func() error {
		tap, err := ensureTap("tap0", 1500)
		if err != nil {
			return err
		}
		eth0, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		return ensureRedirect(tap, eth0, tapRedirectPriority)
	})
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkUnplugged(t, p, cfg)

	// Cut short again, after the addresses went (the IPv6 routes stay).
	testutil.Do(t, p.pod, func() error {
		eth0, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		for _, a := range wantAddrs {
			if err := netlink.AddrDel(eth0, &netlink.Addr{IPNet: prefixToIPNet(netip.MustParsePrefix(a))}); err != nil {
				return err
			}
		}
		return nil
	})
	if err := Resume(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkPlugged(t, p)

	// Teardown while a VM still holds the tap.
	tap, err := OpenTap(p.pod.Path(), "tap0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkUnplugged(t, p, cfg)
}

func TestTeardownLinkGone(t *testing.T) {
	p := newPod(t)
	cfg, err := Setup(p.pod.Path(), "eth0", "tap0")
	if err != nil {
		t.Fatal(err)
	}
	// cni-eni's DEL took the ENI back (here: the veth goes).
	testutil.Do(t, p.vpc, func() error {
		l, err := netlinksafe.LinkByName("vpc0")
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	if l := link(t, p.pod, "tap0"); l != nil {
		t.Error("tap0 is still there")
	}
	if err := Resume(p.pod.Path(), cfg); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("Resume without the link = %v, want not found", err)
	}
	if l := link(t, p.pod, "tap0"); l != nil {
		t.Error("Resume without the link made tap0")
	}
}
