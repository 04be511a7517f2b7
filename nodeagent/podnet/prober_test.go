package podnet

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/nodeagent/probe"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

func TestProberRoute(t *testing.T) {
	v4 := Config{Interface: "eth0", MAC: "02:00:00:00:00:01", MTU: 1500, Tap: "tap0",
		Addresses: []string{"10.9.0.11/24", "fd00:9::11/64"}, Routes: []Route{{Gateway: "10.9.0.1"}}}
	want := Route{Dst: "169.254.1.1/32", Scope: ScopeLink}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		ok   bool
	}{
		{"IPv4 pod", func(*Config) {}, true},
		{"on-link route to the prober's address", func(c *Config) {
			c.Routes = append(c.Routes, Route{Dst: "169.254.1.1/32", Scope: ScopeLink})
		}, true},
		{"IPv6 only", func(c *Config) { c.Addresses = []string{"fd00:9::11/64"}; c.Routes = nil }, false},
		{"no address", func(c *Config) { c.Addresses = nil }, false},
		{"gateway at the prober's address", func(c *Config) {
			c.Routes = []Route{{Dst: "169.254.1.1/32", Scope: ScopeLink}, {Gateway: "169.254.1.1", OnLink: true}}
		}, false},
		{"prober's address behind a gateway", func(c *Config) {
			c.Routes = append(c.Routes, Route{Dst: "169.254.1.1/32", Gateway: "10.9.0.1"})
		}, false},
		{"pod address around the prober's", func(c *Config) { c.Addresses = []string{"169.254.0.7/16"} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := v4
			c.Routes = slices.Clone(v4.Routes)
			tc.edit(&c)
			if _, err := c.validate(); err != nil {
				t.Fatal(err)
			}
			r, ok := c.ProberRoute()
			if ok != tc.ok || ok && r != want {
				t.Errorf("ProberRoute = %+v, %v; want %+v, %v", r, ok, want, tc.ok)
			}
		})
	}
	if _, ok := validConfig().ProberRoute(); ok {
		t.Error("validConfig routes through 169.254.1.1, yet gets a prober path")
	}
}

// checkProber fails t unless p's tap carries the prober's path and nothing
// else of it: the address, a route and a permanent neighbour per IPv4 pod
// address, exactly the two filters ahead of the tap's redirect, eth0's
// redirect where it always was, and no other IPv4 route in the namespace.
func checkProber(t *testing.T, p pod) {
	t.Helper()
	testutil.Do(t, p.pod, func() error {
		tap, err := netlinksafe.LinkByName("tap0")
		if err != nil {
			return err
		}
		as, err := netlinksafe.AddrList(tap, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		if len(as) != 1 || as[0].IPNet.String() != "169.254.1.1/32" || as[0].Scope != unix.RT_SCOPE_LINK {
			t.Errorf("tap0 addresses %v, want 169.254.1.1/32 scope link", as)
		}
		rs, err := netlinksafe.RouteList(nil, netlink.FAMILY_V4) // the main table
		if err != nil {
			return err
		}
		if len(rs) != 1 || rs[0].LinkIndex != tap.Attrs().Index || rs[0].Dst.String() != "10.9.0.11/32" ||
			!net.IP(rs[0].Src).Equal(net.ParseIP("169.254.1.1")) || rs[0].Scope != netlink.SCOPE_LINK {
			t.Errorf("routes in the pod namespace %v, want only 10.9.0.11/32 dev tap0 src 169.254.1.1 scope link", rs)
		}
		nbs, err := netlink.NeighList(tap.Attrs().Index, unix.AF_INET)
		if err != nil {
			return err
		}
		if len(nbs) != 1 || !nbs[0].IP.Equal(net.ParseIP("10.9.0.11")) || !bytes.Equal(nbs[0].HardwareAddr, p.mac) ||
			nbs[0].State != netlink.NUD_PERMANENT {
			t.Errorf("tap0 neighbours %v, want 10.9.0.11 lladdr %s permanent", nbs, p.mac)
		}
		fs, err := ingressFilters(tap)
		if err != nil {
			return err
		}
		want := proberFilters(tap, proberAddr)
		var got []string
		for _, f := range fs {
			switch {
			case sameProberFilter(f, want[0]):
				got = append(got, "ip")
			case sameProberFilter(f, want[1]):
				got = append(got, "arp")
			default:
				if _, ok := redirectTarget(f); ok && f.Attrs().Priority == tapRedirectPriority {
					got = append(got, "redirect")
				} else {
					got = append(got, f.Type())
				}
			}
		}
		if !slices.Equal(got, []string{"ip", "arp", "redirect"}) {
			t.Errorf("tap0 ingress filters %v, want ip, arp, redirect", got)
		}
		eth0, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		fs, err = ingressFilters(eth0)
		if err != nil {
			return err
		}
		if len(fs) != 1 || fs[0].Attrs().Priority != linkRedirectPriority {
			t.Errorf("eth0 ingress filters %v, want the redirect at %d alone", fs, linkRedirectPriority)
		}
		return nil
	})
}

// capture records the frames that arrive on the VPC's end of eth0's veth.
type capture struct{ fd int }

func newCapture(t *testing.T, p pod) *capture {
	t.Helper()
	c := &capture{fd: -1}
	testutil.Do(t, p.vpc, func() error {
		l, err := netlinksafe.LinkByName("vpc0")
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		c.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.Attrs().Index})
	})
	t.Cleanup(func() { unix.Close(c.fd) })
	return c
}

// frames returns what arrived since the last call.
func (c *capture) frames(t *testing.T) [][]byte {
	t.Helper()
	var out [][]byte
	buf := make([]byte, 65536)
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) {
			return out
		}
		if err != nil {
			t.Fatalf("read capture: %v", err)
		}
		out = append(out, slices.Clone(buf[:n]))
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// mentions reports whether f is an IPv4 or ARP frame with a as one of
// its addresses.
func mentions(f []byte, a netip.Addr) bool {
	if arp, ok := parseARP(f); ok {
		return arp.spa == a || arp.tpa == a
	}
	if len(f) < 34 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP {
		return false
	}
	return bytes.Equal(f[26:30], a.AsSlice()) || bytes.Equal(f[30:34], a.AsSlice())
}

// The node's prober, its socket in the pod's namespace, reaches the guest
// at the pod's address through the tap, and the guest's answers come back
// to the namespace's stack, not through eth0; the VPC sees none of it,
// and every other frame still goes both ways between the tap and eth0.
func TestProberPath(t *testing.T) {
	p := newPod(t)
	cfg, err := Setup(p.pod.Path(), "eth0", "tap0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Teardown(p.pod.Path(), cfg); err != nil {
			t.Error(err)
		}
	})
	checkPlugged(t, p)
	tap, err := OpenTap(p.pod.Path(), cfg.Tap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	vpc := newCapture(t, p)
	exchange(t, p, tap)
	if fs := vpc.frames(t); len(fs) == 0 {
		t.Fatal("the capture on vpc0 saw nothing of the exchange")
	}
	tapMAC := link(t, p.pod, "tap0").Attrs().HardwareAddr
	podIP := netip.MustParseAddr("10.9.0.11")

	// The guest resolves the prober's address: the stack answers for the tap.
	writeFrame(t, tap, arpFrame(1, p.mac, podIP, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, proberAddr))
	rep := readFrame(t, tap, func(f []byte) bool {
		a, ok := parseARP(f)
		return ok && a.op == 2 && a.spa == proberAddr
	})
	if a, _ := parseARP(rep); !bytes.Equal(a.sha, tapMAC) || a.tpa != podIP || !bytes.Equal(rep[0:6], p.mac) {
		t.Errorf("ARP reply %+v to %x; want %s is at %s, to %s", a, rep[0:6], proberAddr, tapMAC, p.mac)
	}

	// A probe of an open port: SYN out of the tap, SYN-ACK in, ACK out.
	// The guest's SYN-ACK goes to the MAC it resolved.
	type dialed struct {
		c   net.Conn
		err error
	}
	dial := func(port uint16) <-chan dialed {
		ch := make(chan dialed, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := probe.DialInNetns(ctx, p.pod.Path(), netip.AddrPortFrom(podIP, port).String())
			ch <- dialed{c, err}
		}()
		return ch
	}
	synTo := func(port uint16) tcp {
		f := readFrame(t, tap, func(f []byte) bool {
			s, ok := parseTCP(f)
			return ok && s.flags == tcpSYN && s.dst == netip.AddrPortFrom(podIP, port)
		})
		s, _ := parseTCP(f)
		if !bytes.Equal(f[0:6], p.mac) || !bytes.Equal(f[6:12], tapMAC) || s.src.Addr() != proberAddr {
			t.Errorf("probe SYN from %s (MAC %x) to MAC %x; want from %s (%s) to the guest's %s",
				s.src, f[6:12], f[0:6], proberAddr, tapMAC, p.mac)
		}
		return s
	}
	open := dial(8080)
	syn := synTo(8080)
	writeFrame(t, tap, tcpFrame(p.mac, tapMAC, syn.dst, syn.src, 7000, syn.seq+1, tcpSYN|tcpACK))
	readFrame(t, tap, func(f []byte) bool {
		s, ok := parseTCP(f)
		return ok && s.flags == tcpACK && s.dst == syn.dst && s.ack == 7001
	})
	d := <-open
	if d.err != nil {
		t.Fatalf("probe of an open port: %v", d.err)
	}
	d.c.Close()

	// A probe of a closed port: the guest's reset reaches the prober.
	closed := dial(8081)
	syn = synTo(8081)
	writeFrame(t, tap, tcpFrame(p.mac, tapMAC, syn.dst, syn.src, 0, syn.seq+1, tcpRST|tcpACK))
	if d := <-closed; !errors.Is(d.err, unix.ECONNREFUSED) {
		t.Errorf("probe of a closed port: %v, want connection refused", d.err)
	}

	// Any datagram for the prober's address reaches the stack (which has
	// nothing on the port and says so), none leaves through eth0.
	writeFrame(t, tap, udpFrame(p.mac, tapMAC, netip.AddrPortFrom(podIP, 7002), netip.AddrPortFrom(proberAddr, 9), []byte("to the node?")))
	readFrame(t, tap, func(f []byte) bool {
		return len(f) >= 34 && binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_IP && f[23] == unix.IPPROTO_ICMP &&
			bytes.Equal(f[26:30], proberAddr.AsSlice()) && f[34] == 3 // destination unreachable
	})
	// Addressed to the tap's MAC but not to the prober, a frame still
	// leaves through eth0.
	writeFrame(t, tap, udpFrame(p.mac, tapMAC, netip.AddrPortFrom(podIP, 7002), netip.MustParseAddrPort("10.9.0.1:7001"), []byte("stray")))
	deadline := time.Now().Add(5 * time.Second)
	var seen [][]byte
	for {
		seen = append(seen, vpc.frames(t)...)
		if slices.ContainsFunc(seen, func(f []byte) bool { u, ok := parseUDP(f); return ok && string(u.payload) == "stray" }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a frame to the tap's MAC for 10.9.0.1 did not come out of eth0")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, f := range seen {
		if mentions(f, proberAddr) {
			t.Errorf("the VPC saw prober traffic: %x", f)
		}
	}
}

// A link plugged by an agent from before the prober's path has its
// redirects at the legacy priority and nothing else on the tap: Inspect
// sees it is plugged, Teardown unplugs it, Resume brings it up to date.
func TestLegacyPlug(t *testing.T) {
	p := newPod(t)
	cfg, err := Inspect(p.pod.Path(), "eth0", "tap0")
	if err != nil {
		t.Fatal(err)
	}
	legacy := func() {
		t.Helper()
		testutil.Do(t, p.pod, func() error {
			tap, err := ensureTap("tap0", podMTU)
			if err != nil {
				return err
			}
			eth0, err := netlinksafe.LinkByName("eth0")
			if err != nil {
				return err
			}
			for _, l := range [][2]netlink.Link{{tap, eth0}, {eth0, tap}} {
				if err := ensureIngress(l[0]); err != nil {
					return err
				}
				if err := netlink.FilterAdd(redirectFilter(l[0], l[1], linkRedirectPriority)); err != nil {
					return err
				}
			}
			return strip(eth0)
		})
	}
	legacy()
	if _, err := Inspect(p.pod.Path(), "eth0", "tap0"); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("Inspect of a legacy plug = %v, want already exists", err)
	}
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkUnplugged(t, p, cfg)

	// Moved, the tap's redirect leaves its old priority free, not just
	// emptied: a filter of another protocol can take it.
	legacy()
	testutil.Do(t, p.pod, func() error {
		tap, err := netlinksafe.LinkByName("tap0")
		if err != nil {
			return err
		}
		eth0, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := ensureRedirect(tap, eth0, tapRedirectPriority); err != nil {
			return err
		}
		if err := netlink.FilterAdd(proberFilters(tap, proberAddr)[0]); err != nil {
			t.Errorf("tap0 keeps an empty priority %d: %v", linkRedirectPriority, err)
		}
		return nil
	})
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkUnplugged(t, p, cfg)

	legacy()
	tapIndex := link(t, p.pod, "tap0").Attrs().Index
	if err := Resume(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkPlugged(t, p)
	if link(t, p.pod, "tap0").Attrs().Index != tapIndex {
		t.Error("Resume made a new tap")
	}
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkUnplugged(t, p, cfg)
}

// Resume finishes a prober's path cut short or spoilt: an address without
// routes, a stale filter where the IPv4 one goes, a second ARP filter.
func TestResumeProberHalfway(t *testing.T) {
	p := newPod(t)
	cfg, err := Inspect(p.pod.Path(), "eth0", "tap0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Do(t, p.pod, func() error {
		tap, err := ensureTap("tap0", podMTU)
		if err != nil {
			return err
		}
		eth0, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := ensureRedirect(tap, eth0, tapRedirectPriority); err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: prefixToIPNet(netip.MustParsePrefix("169.254.1.1/32")), Scope: unix.RT_SCOPE_LINK}
		if err := netlink.AddrAdd(tap, a); err != nil {
			return err
		}
		fs := proberFilters(tap, netip.MustParseAddr("169.254.9.9"))
		if err := netlink.FilterAdd(fs[0]); err != nil {
			return err
		}
		fs = proberFilters(tap, proberAddr)
		for range 2 {
			if err := netlink.FilterAdd(fs[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err := Resume(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkPlugged(t, p)
	if err := Resume(p.pod.Path(), cfg); err != nil {
		t.Fatalf("Resume again: %v", err)
	}
	checkPlugged(t, p)
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	checkUnplugged(t, p, cfg)
}

// A pod with no IPv4 address gets no prober's path: the tap holds nothing.
func TestProberIPv6Only(t *testing.T) {
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
		if err := addAddrs(l, "fd00:9::11/64"); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	cfg, err := Setup(p.pod.Path(), "eth0", "tap0")
	if err != nil {
		t.Fatal(err)
	}
	testutil.Do(t, p.pod, func() error {
		tap, err := netlinksafe.LinkByName("tap0")
		if err != nil {
			return err
		}
		as, err := netlinksafe.AddrList(tap, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		fs, err := ingressFilters(tap)
		if err != nil {
			return err
		}
		if len(as) != 0 || len(fs) != 1 {
			t.Errorf("tap0 of an IPv6-only pod has addresses %v and %d filters; want none and the redirect", as, len(fs))
		}
		return nil
	})
	if err := Teardown(p.pod.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	if l := link(t, p.pod, "tap0"); l != nil {
		t.Error("tap0 is still there")
	}
}

// TCP flags.
const (
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

type tcp struct {
	src, dst netip.AddrPort
	seq, ack uint32
	flags    byte
}

func parseTCP(f []byte) (tcp, bool) {
	if len(f) < 14+20+20 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP {
		return tcp{}, false
	}
	ip := f[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[9] != unix.IPPROTO_TCP || len(ip) < ihl+20 {
		return tcp{}, false
	}
	src, _ := netip.AddrFromSlice(ip[12:16])
	dst, _ := netip.AddrFromSlice(ip[16:20])
	s := ip[ihl:]
	return tcp{
		src:   netip.AddrPortFrom(src, binary.BigEndian.Uint16(s[0:])),
		dst:   netip.AddrPortFrom(dst, binary.BigEndian.Uint16(s[2:])),
		seq:   binary.BigEndian.Uint32(s[4:]),
		ack:   binary.BigEndian.Uint32(s[8:]),
		flags: s[13] & 0x3f,
	}, true
}

// tcpFrame builds an Ethernet frame with a bare IPv4 TCP segment (no
// options, no payload), checksums included.
func tcpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, seq, ack uint32, flags byte) []byte {
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 40)
	ip[8] = 64
	ip[9] = unix.IPPROTO_TCP
	copy(ip[12:], src.Addr().AsSlice())
	copy(ip[16:], dst.Addr().AsSlice())
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip))
	s := make([]byte, 20)
	binary.BigEndian.PutUint16(s[0:], src.Port())
	binary.BigEndian.PutUint16(s[2:], dst.Port())
	binary.BigEndian.PutUint32(s[4:], seq)
	binary.BigEndian.PutUint32(s[8:], ack)
	s[12] = 5 << 4
	s[13] = flags
	binary.BigEndian.PutUint16(s[14:], 65535)
	pseudo := slices.Concat(ip[12:20], []byte{0, unix.IPPROTO_TCP, 0, 20})
	binary.BigEndian.PutUint16(s[16:], ipChecksum(slices.Concat(pseudo, s)))
	return slices.Concat(dstMAC, srcMAC, []byte{0x08, 0x00}, ip, s)
}
