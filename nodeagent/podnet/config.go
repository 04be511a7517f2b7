package podnet

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Config is the pod network a sandbox VM takes over: the pod link's
// identity as it was before Setup, and the tap that now stands in for it.
// It is JSON-serialisable: the caller keeps it and passes it back to
// Resume or Teardown, also from a later agent process.
type Config struct {
	// Interface is the pod's link, e.g. "eth0".
	Interface string `json:"interface"`
	// MAC is Interface's MAC; the VM's NIC gets it.
	MAC string `json:"mac"`
	// MTU is Interface's MTU; the tap and the guest's NIC get it.
	MTU int `json:"mtu"`
	// Addresses are Interface's global addresses in CIDR form, IPv4 and
	// IPv6, in the order the kernel listed them.
	Addresses []string `json:"addresses,omitempty"`
	// Routes are the main-table routes through Interface, without the
	// prefix routes the kernel makes for Addresses (the guest's kernel
	// makes them again). Routes without a gateway come first, so adding
	// them in order works.
	Routes []Route `json:"routes,omitempty"`
	// Tap is the tap link in the pod's namespace that carries the VM's
	// traffic to and from Interface.
	Tap string `json:"tap"`
}

// Route is one route through the pod's link.
type Route struct {
	// Dst is the destination in CIDR form; "" is the default route of
	// Gateway's family. A default route without a gateway is written
	// "0.0.0.0/0" or "::/0".
	Dst string `json:"dst,omitempty"`
	// Gateway is the next hop; "" means Dst is on the link.
	Gateway string `json:"gateway,omitempty"`
	// Scope is "link" or "host" for such routes, "" for global ones.
	Scope string `json:"scope,omitempty"`
	// OnLink says Gateway is on the link even though no address's prefix
	// covers it (ip route ... onlink).
	OnLink bool `json:"onLink,omitempty"`
	// Metric is the route's priority; 0 lets the kernel choose (IPv6
	// routes come back with 1024).
	Metric int `json:"metric,omitempty"`
	// Src is the preferred source address, if any.
	Src string `json:"src,omitempty"`
}

// Scopes of Route.
const (
	ScopeLink = "link"
	ScopeHost = "host"
)

// maxIfname is the longest link name the kernel takes (IFNAMSIZ - 1).
const maxIfname = unix.IFNAMSIZ - 1

// plan is a Config parsed for the kernel.
type plan struct {
	mac    net.HardwareAddr
	addrs  []netip.Prefix
	routes []netlink.Route // LinkIndex unset
}

// validate parses c; the error wraps errdefs.ErrInvalidArgument.
func (c Config) validate() (plan, error) {
	var p plan
	invalid := func(format string, a ...any) (plan, error) {
		return plan{}, fmt.Errorf("pod network config: %s: %w", fmt.Sprintf(format, a...), errdefs.ErrInvalidArgument)
	}
	if err := validIfname(c.Interface); err != nil {
		return invalid("interface: %v", err)
	}
	if err := validIfname(c.Tap); err != nil {
		return invalid("tap: %v", err)
	}
	if c.Tap == c.Interface {
		return invalid("tap and interface are both %q", c.Tap)
	}
	mac, err := net.ParseMAC(c.MAC)
	if err != nil || len(mac) != 6 {
		return invalid("MAC %q is not an Ethernet address", c.MAC)
	}
	p.mac = mac
	if c.MTU < 68 || c.MTU > 65535 {
		return invalid("MTU %d is out of range", c.MTU)
	}
	for _, s := range c.Addresses {
		a, err := netip.ParsePrefix(s)
		if err != nil || a.Addr().Zone() != "" || a.Addr().Is4In6() {
			return invalid("address %q is not in CIDR form", s)
		}
		p.addrs = append(p.addrs, a)
	}
	for _, r := range c.Routes {
		nr, err := r.toNetlink()
		if err != nil {
			return invalid("%v", err)
		}
		p.routes = append(p.routes, nr)
	}
	return p, nil
}

func validIfname(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty name")
	case len(s) > maxIfname:
		return fmt.Errorf("name %q is longer than %d bytes", s, maxIfname)
	case s == "." || s == "..":
		return fmt.Errorf("name %q is not a link name", s)
	}
	for _, ch := range []byte(s) {
		if ch == '/' || ch == ':' || ch <= ' ' || ch == 0x7f {
			return fmt.Errorf("name %q has a character a link name cannot have", s)
		}
	}
	return nil
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	return a, nil
}

// toNetlink turns r into a route through no link yet.
func (r Route) toNetlink() (netlink.Route, error) {
	var nr netlink.Route
	var gw netip.Addr
	if r.Gateway != "" {
		a, err := parseAddr(r.Gateway)
		if err != nil {
			return nr, fmt.Errorf("route to %q: gateway %w", r.Dst, err)
		}
		gw = a
		nr.Gw = a.AsSlice()
	}
	var dst netip.Prefix
	switch {
	case r.Dst != "":
		d, err := netip.ParsePrefix(r.Dst)
		if err != nil || d.Addr().Zone() != "" || d.Addr().Is4In6() {
			return nr, fmt.Errorf("route destination %q is not in CIDR form", r.Dst)
		}
		dst = d.Masked()
	case gw.IsValid():
		dst = netip.PrefixFrom(unspecified(gw.Is4()), 0)
	default:
		return nr, fmt.Errorf("a default route needs a gateway or an explicit 0.0.0.0/0 or ::/0")
	}
	if gw.IsValid() && gw.Is4() != dst.Addr().Is4() {
		return nr, fmt.Errorf("route to %s: gateway %s is of another family", dst, gw)
	}
	nr.Dst = prefixToIPNet(dst)
	switch r.Scope {
	case "":
		nr.Scope = netlink.SCOPE_UNIVERSE
	case ScopeLink:
		nr.Scope = netlink.SCOPE_LINK
	case ScopeHost:
		nr.Scope = netlink.SCOPE_HOST
	default:
		return nr, fmt.Errorf("route to %s: unknown scope %q", dst, r.Scope)
	}
	if r.OnLink {
		if !gw.IsValid() {
			return nr, fmt.Errorf("route to %s: onlink without a gateway", dst)
		}
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	if r.Metric < 0 || int64(r.Metric) > int64(^uint32(0)) {
		return nr, fmt.Errorf("route to %s: metric %d is out of range", dst, r.Metric)
	}
	nr.Priority = r.Metric
	if r.Src != "" {
		a, err := parseAddr(r.Src)
		if err != nil {
			return nr, fmt.Errorf("route to %s: source %w", dst, err)
		}
		if a.Is4() != dst.Addr().Is4() {
			return nr, fmt.Errorf("route to %s: source %s is of another family", dst, a)
		}
		nr.Src = a.AsSlice()
	}
	return nr, nil
}

// routeFromNetlink describes nr, a main-table unicast route through one
// link.
func routeFromNetlink(nr netlink.Route) (Route, error) {
	var r Route
	var gw netip.Addr
	if len(nr.Gw) > 0 {
		a, ok := netip.AddrFromSlice(nr.Gw)
		if !ok {
			return r, fmt.Errorf("route gateway %v is not an IP address", nr.Gw)
		}
		gw = a.Unmap()
		r.Gateway = gw.String()
	}
	is4 := nr.Family != unix.AF_INET6
	if nr.Family == 0 && gw.IsValid() {
		is4 = gw.Is4()
	}
	dst := netip.PrefixFrom(unspecified(is4), 0)
	if nr.Dst != nil {
		p, ok := ipNetToPrefix(nr.Dst)
		if !ok {
			return r, fmt.Errorf("route destination %v is not a prefix", nr.Dst)
		}
		dst = p
	}
	if dst.Bits() != 0 || !gw.IsValid() {
		r.Dst = dst.String()
	}
	switch nr.Scope {
	case netlink.SCOPE_UNIVERSE:
	case netlink.SCOPE_LINK:
		r.Scope = ScopeLink
	case netlink.SCOPE_HOST:
		r.Scope = ScopeHost
	default:
		return r, fmt.Errorf("route to %s has scope %d", dst, nr.Scope)
	}
	r.OnLink = gw.IsValid() && nr.Flags&int(netlink.FLAG_ONLINK) != 0
	r.Metric = nr.Priority
	if len(nr.Src) > 0 {
		a, ok := netip.AddrFromSlice(nr.Src)
		if !ok {
			return r, fmt.Errorf("route to %s: source %v is not an IP address", dst, nr.Src)
		}
		r.Src = a.Unmap().String()
	}
	return r, nil
}

// sortRoutes puts routes without a gateway first, keeping the order
// otherwise: a gateway may only be reachable through one of them.
func sortRoutes(rs []Route) {
	slices.SortStableFunc(rs, func(a, b Route) int {
		return cmp.Compare(boolInt(a.Gateway != ""), boolInt(b.Gateway != ""))
	})
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func unspecified(is4 bool) netip.Addr {
	if is4 {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}
