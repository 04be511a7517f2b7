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

// aliasPrefix marks a pod link as an ENI; the rest of the alias is the
// link's name in the node namespace (host-device keeps it there too), so
// that DEL can give the link back without asking the agent first.
const aliasPrefix = "cni-eni:"

// setLink sends one RTM_SETLINK for the link with index in the current
// namespace: move it to the namespace nsFD (if >= 0), name it (if name is
// not empty), set its MTU (if > 0), set its alias (if alias is not nil; ""
// removes it) and bring it up or down.
func setLink(index, nsFD int, name string, mtu int, up bool, alias *string) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	msg.Change = unix.IFF_UP
	if up {
		msg.Flags = unix.IFF_UP
	}
	req.AddData(msg)
	if nsFD >= 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(nsFD))))
	}
	if name != "" {
		req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	}
	if mtu > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu))))
	}
	if alias != nil {
		req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(*alias)))
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
		if err := setLink(l.Attrs().Index, int(pod.Fd()), ifname, spec.MTU, true, &alias); err != nil {
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
		if err := setLink(l.Attrs().Index, -1, ifname, spec.MTU, true, &alias); err != nil {
			return fmt.Errorf("set up link %s in %s as %s: %w", l.Attrs().Name, pod.Path(), ifname, err)
		}
		return nil
	})
}

// Configure gives the link ifname in pod its addresses and routes. It runs
// inside pod and may be repeated.
func Configure(spec Spec, pod ns.NetNS, ifname string) error {
	return pod.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifname)
		if err != nil {
			return fmt.Errorf("find %s: %w", ifname, err)
		}
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
}

// MoveOut returns the ENI's link from pod to host, down, without addresses
// and named hostName. It reports false when pod holds no such link.
func MoveOut(spec Spec, pod, host ns.NetNS) (bool, error) {
	moved := false
	err := pod.Do(func(ns.NetNS) error {
		l, err := FindByMAC(spec.MAC, "")
		if errors.Is(err, ErrLinkNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := moveBack(l, host, spec.HostName); err != nil {
			return err
		}
		moved = true
		return nil
	})
	return moved, err
}

// MoveOutByName returns the pod link ifname to host under the node name
// kept in its alias, when it is an ENI link. It returns the link's MAC,
// or "" when pod has no such link.
func MoveOutByName(pod, host ns.NetNS, ifname string) (string, error) {
	mac := ""
	err := pod.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifname)
		if err != nil {
			return nil // gone, or never there: the caller falls back
		}
		hostName, ok := strings.CutPrefix(l.Attrs().Alias, aliasPrefix)
		if !ok || hostName == "" {
			return nil
		}
		if err := moveBack(l, host, hostName); err != nil {
			return err
		}
		mac = macOf(l)
		return nil
	})
	return mac, err
}

// moveBack moves l from the current namespace to host, named name, down
// and without its alias; the kernel drops its addresses and routes.
func moveBack(l netlink.Link, host ns.NetNS, name string) error {
	noAlias := ""
	if err := setLink(l.Attrs().Index, int(host.Fd()), name, 0, false, &noAlias); err != nil {
		return fmt.Errorf("move link %s (%s) back to the node as %s: %w", l.Attrs().Name, macOf(l), name, err)
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
	if err := setLink(index, -1, name, 0, false, nil); err != nil {
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
