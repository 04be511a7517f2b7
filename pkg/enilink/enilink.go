// Package enilink moves an ENI's link between the node's network namespace
// and a pod's, and sets up, checks and tears down its addresses and routes
// there. It is shared by the cni-eni plugin and the node agent.
//
// A move is a single RTM_SETLINK that carries the target namespace, the new
// name, the MTU and the up/down flag together: the kernel moves the link and
// renames it in the target namespace in one step, so no temporary namespace
// and no temporary name are needed (host-device uses both). Moving a link out
// of a namespace drops its addresses and routes and brings it down.
package enilink

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Spec is what a pod's ENI link looks like inside the pod.
type Spec struct {
	MAC string `json:"mac"`
	// HostName is the link's name in the node namespace.
	HostName  string         `json:"hostName"`
	MTU       int            `json:"mtu,omitempty"` // 0: leave as is
	Addresses []netip.Prefix `json:"addresses"`
	Gateways  []netip.Addr   `json:"gateways"`
	Routes    []netip.Prefix `json:"routes,omitempty"`
}

// Gateway returns the gateway of a's family.
func (s Spec) Gateway(a netip.Addr) (netip.Addr, bool) {
	for _, g := range s.Gateways {
		if g.Is4() == a.Is4() {
			return g, true
		}
	}
	return netip.Addr{}, false
}

// RouteSpec is one route the pod gets via the ENI.
type RouteSpec struct {
	Dst netip.Prefix
	GW  netip.Addr
}

// PodRoutes lists the pod's routes: a default route per family that has a
// gateway and an address, then the extra routes.
func (s Spec) PodRoutes() []RouteSpec {
	var out []RouteSpec
	for _, def := range []netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0)} {
		for _, a := range s.Addresses {
			if a.Addr().Is4() != def.Addr().Is4() {
				continue
			}
			if gw, ok := s.Gateway(a.Addr()); ok {
				out = append(out, RouteSpec{Dst: def, GW: gw})
			}
			break
		}
	}
	for _, r := range s.Routes {
		if gw, ok := s.Gateway(r.Addr()); ok {
			out = append(out, RouteSpec{Dst: r, GW: gw})
		}
	}
	return out
}

var (
	// ErrLinkNotFound means no link with the ENI's MAC is where it should be.
	ErrLinkNotFound = errors.New("ENI link not found")
	// ErrDrift means the pod's link does not match its spec.
	ErrDrift = errors.New("ENI link drifted from its spec")
)

func macOf(l netlink.Link) string { return l.Attrs().HardwareAddr.String() }

// FindByMAC returns the link with mac in the current namespace, trying the
// name hint first.
func FindByMAC(mac, hint string) (netlink.Link, error) {
	if hint != "" {
		if l, err := netlinksafe.LinkByName(hint); err == nil && macOf(l) == mac {
			return l, nil
		}
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if macOf(l) == mac {
			return l, nil
		}
	}
	return nil, fmt.Errorf("no link with MAC %s: %w", mac, ErrLinkNotFound)
}

// aliasPrefix marks a pod link as an ENI, for people reading `ip link` in
// the pod; the rest of the alias is the link's name in the node. Nothing
// reads it back: the pod can rewrite it, so DEL goes by the Identity the
// agent recorded and the name it registered.
const aliasPrefix = "cni-eni:"

// linkChange is what one RTM_SETLINK changes; zero fields are left alone.
type linkChange struct {
	nsFD  int    // move to the namespace open at nsFD, if >= 0
	name  string // new name
	mtu   int
	up    bool    // the up/down flag is always set
	alias *string // "" removes the alias
	mac   net.HardwareAddr
}

// setLink sends one RTM_SETLINK for the link with index in the current
// namespace.
func setLink(index int, c linkChange) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	msg.Change = unix.IFF_UP
	if c.up {
		msg.Flags = unix.IFF_UP
	}
	req.AddData(msg)
	if c.nsFD >= 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(c.nsFD))))
	}
	if c.name != "" {
		req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(c.name)))
	}
	if c.mtu > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(c.mtu))))
	}
	if c.alias != nil {
		req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(*c.alias)))
	}
	if c.mac != nil {
		req.AddData(nl.NewRtAttr(unix.IFLA_ADDRESS, []byte(c.mac)))
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// MoveIn moves the ENI's link from the current (node) namespace into pod,
// names it ifname, sets its MTU and brings it up. When the link is already
// in pod (a retried ADD) it is renamed and brought up there.
func MoveIn(spec Spec, pod ns.NetNS, ifname string) error {
	alias := aliasPrefix + spec.HostName
	l, err := FindByMAC(spec.MAC, spec.HostName)
	if err == nil {
		if err := setLink(l.Attrs().Index, linkChange{nsFD: int(pod.Fd()), name: ifname, mtu: spec.MTU, up: true, alias: &alias}); err != nil {
			return fmt.Errorf("move link %s (%s) into %s as %s: %w", l.Attrs().Name, spec.MAC, pod.Path(), ifname, err)
		}
		return nil
	}
	if !errors.Is(err, ErrLinkNotFound) {
		return err
	}
	return pod.Do(func(ns.NetNS) error {
		l, err := FindByMAC(spec.MAC, ifname)
		if err != nil {
			return fmt.Errorf("ENI %s is neither in the node namespace (as %s) nor in %s: %w", spec.MAC, spec.HostName, pod.Path(), err)
		}
		if err := setLink(l.Attrs().Index, linkChange{nsFD: -1, name: ifname, mtu: spec.MTU, up: true, alias: &alias}); err != nil {
			return fmt.Errorf("set up link %s in %s as %s: %w", l.Attrs().Name, pod.Path(), ifname, err)
		}
		return nil
	})
}

// Configure gives the link ifname in pod its addresses and routes, and
// returns the link's Identity there, which DEL needs to find it again. It
// runs inside pod and may be repeated.
func Configure(spec Spec, pod ns.NetNS, ifname string) (Identity, error) {
	var id Identity
	err := pod.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find %s: %w", ifname, err)
		}
		if macOf(l) != spec.MAC {
			return fmt.Errorf("link %s has MAC %s, not the ENI's %s", ifname, macOf(l), spec.MAC)
		}
		id = IdentityOf(l)
		for _, a := range spec.Addresses {
			addr := &netlink.Addr{IPNet: prefixToIPNet(a)}
			if a.Addr().Is6() {
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := netlink.AddrReplace(l, addr); err != nil {
				return fmt.Errorf("add address %v to %s: %w", a, ifname, err)
			}
		}
		for _, r := range spec.PodRoutes() {
			route := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixToIPNet(r.Dst), Gw: net.IP(r.GW.AsSlice()), Scope: netlink.SCOPE_UNIVERSE}
			if err := netlink.RouteReplace(route); err != nil {
				return fmt.Errorf("add route %v via %v: %w", r.Dst, r.GW, err)
			}
		}
		return nil
	})
	return id, err
}

// MoveOut returns the ENI's link from pod to host, but only the link id
// describes: the link with id's ifindex, if pod still has one, must match
// id, else it stays where it is and the error wraps ErrForeignLink. Links
// the pod stacked on the ENI (VLANs, macvlans: they would stay in the pod,
// riding on the ENI when it serves its next pod) are deleted first. The
// link arrives down, without addresses or alias, named spec.HostName (the
// name the agent registered, never one the pod chose) and with spec.MAC.
// It reports false when pod has no link with id's ifindex.
func MoveOut(spec Spec, id Identity, pod, host ns.NetNS) (bool, error) {
	moved := false
	err := pod.Do(func(ns.NetNS) error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return fmt.Errorf("list links in %s: %w", pod.Path(), err)
		}
		var l netlink.Link
		for _, x := range links {
			if x.Attrs().Index == id.Index {
				l = x
			}
		}
		if l == nil {
			return nil
		}
		if err := id.Match(IdentityOf(l)); err != nil {
			return fmt.Errorf("link %s (index %d, MAC %s) in %s: %w", l.Attrs().Name, id.Index, macOf(l), pod.Path(), err)
		}
		for _, x := range links {
			if a := x.Attrs(); a.ParentIndex == id.Index && a.NetNsID < 0 && a.Index != id.Index {
				if err := netlink.LinkDel(x); err != nil {
					return fmt.Errorf("delete link %s stacked on the ENI in %s: %w", a.Name, pod.Path(), err)
				}
			}
		}
		if err := moveBack(l, host, spec); err != nil {
			return err
		}
		moved = true
		return nil
	})
	return moved, err
}

// MoveOutByMAC is MoveOut for an ADD that fails before it learned the
// link's Identity: it finds the link by the ENI's MAC. Only ADD's own undo
// may use it, as the pod's containers do not run before ADD succeeds.
func MoveOutByMAC(spec Spec, pod, host ns.NetNS) (bool, error) {
	moved := false
	err := pod.Do(func(ns.NetNS) error {
		l, err := FindByMAC(spec.MAC, "")
		if errors.Is(err, ErrLinkNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := moveBack(l, host, spec); err != nil {
			return err
		}
		moved = true
		return nil
	})
	return moved, err
}

// moveBack moves l from the current namespace to host as spec.HostName,
// down, without its alias and with spec.MAC; the kernel drops its
// addresses and routes. When the name l has in the pod is taken in host,
// the kernel names it spec.HostName at once.
func moveBack(l netlink.Link, host ns.NetNS, spec Spec) error {
	noAlias := ""
	c := linkChange{nsFD: int(host.Fd()), name: spec.HostName, alias: &noAlias}
	if macOf(l) != spec.MAC {
		mac, err := net.ParseMAC(spec.MAC)
		if err != nil {
			return fmt.Errorf("ENI MAC %q: %w", spec.MAC, err)
		}
		c.mac = mac
	}
	if err := setLink(l.Attrs().Index, c); err != nil {
		return fmt.Errorf("move link %s (%s) back to the node as %s: %w", l.Attrs().Name, macOf(l), spec.HostName, err)
	}
	return nil
}

// Verify compares the link ifname in pod with spec and returns an error
// wrapping ErrDrift that lists every difference.
func Verify(spec Spec, pod ns.NetNS, ifname string) error {
	var drift []string
	err := pod.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifname)
		if err != nil {
			drift = append(drift, fmt.Sprintf("link %s is missing", ifname))
			return nil
		}
		a := l.Attrs()
		if macOf(l) != spec.MAC {
			drift = append(drift, fmt.Sprintf("link %s has MAC %s, want %s", ifname, macOf(l), spec.MAC))
		}
		if a.Flags&net.FlagUp == 0 {
			drift = append(drift, fmt.Sprintf("link %s is down", ifname))
		}
		if spec.MTU > 0 && a.MTU != spec.MTU {
			drift = append(drift, fmt.Sprintf("link %s has MTU %d, want %d", ifname, a.MTU, spec.MTU))
		}
		addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", ifname, err)
		}
		have := map[netip.Prefix]bool{}
		for _, ad := range addrs {
			if p, ok := ipNetToPrefix(ad.IPNet); ok {
				have[p] = true
			}
		}
		for _, want := range spec.Addresses {
			if !have[want] {
				drift = append(drift, fmt.Sprintf("link %s lacks address %v", ifname, want))
			}
		}
		routes, err := netlinksafe.RouteList(l, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list routes of %s: %w", ifname, err)
		}
		for _, want := range spec.PodRoutes() {
			found := false
			for _, r := range routes {
				dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
				if want.Dst.Addr().Is6() {
					dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
				}
				if r.Dst != nil {
					if p, ok := ipNetToPrefix(r.Dst); ok {
						dst = p
					}
				}
				gw, _ := netip.AddrFromSlice(r.Gw)
				if dst == want.Dst && gw.Unmap() == want.GW {
					found = true
					break
				}
			}
			if !found {
				drift = append(drift, fmt.Sprintf("route %v via %v is missing", want.Dst, want.GW))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(drift) > 0 {
		return fmt.Errorf("%s: %w", strings.Join(drift, "; "), ErrDrift)
	}
	return nil
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// Quiesce brings the link with index in the current namespace down, names
// it name and removes every address it has.
func Quiesce(index int, name string) error {
	if err := setLink(index, linkChange{nsFD: -1, name: name}); err != nil {
		return fmt.Errorf("set link %d down as %s: %w", index, name, err)
	}
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return fmt.Errorf("find link %d: %w", index, err)
	}
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", name, err)
	}
	for i := range addrs {
		if err := netlink.AddrDel(l, &addrs[i]); err != nil {
			return fmt.Errorf("remove address %v from %s: %w", addrs[i].IPNet, name, err)
		}
	}
	return nil
}
