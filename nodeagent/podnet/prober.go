package podnet

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The prober's path. The node's prober (package probe) makes its socket in
// the pod's namespace and connects to the pod's own address. Once a VM has
// the pod's network, that address lives in the guest, eth0 has none, and
// every frame the guest sends is redirected to eth0, so nothing would come
// back. The path the namespace's stack gets instead:
//
//   - the tap holds proberAddr, a link-local /32, and for each IPv4 pod
//     address a /32 route through the tap from proberAddr plus a permanent
//     neighbour entry with cfg.MAC (the guest's NIC has it), so a probe
//     leaves the tap addressed to the guest without an ARP exchange;
//   - on the tap's ingress, ahead of the redirect to eth0, two u32 filters
//     without an action (classid :1 ends the classification and passes the
//     frame on; this kernel has no gact) hand the namespace's stack the
//     IPv4 packets to proberAddr and the ARP packets asking for it; every
//     other frame still goes out through eth0;
//   - the guest has an on-link route to proberAddr (ProberRoute), so its
//     answers come back through the tap, after it has resolved proberAddr
//     to the tap's MAC through the ARP filter.
//
// Only frames for proberAddr reach the stack, so the VPC never sees a
// probe and the guest reaches nothing new but proberAddr: the namespace
// has no route to the node or anywhere else. Everything lives on the tap,
// so deleting the tap (Teardown) removes it all, also after a crash.
//
// IPv4 only. An IPv6 probe of a sandboxed pod finds no route and fails at
// once: an IPv6 twin (a link-local fe80:: prober address) would need IPv6
// on the tap, which is off so that the host side never speaks to the guest
// unasked (router and multicast listener messages, duplicate address
// detection), and a neighbour-discovery filter in place of the ARP one.
//
// The namespace's own ARP settings apply on the tap: arp_ignore 2 or
// higher (inherited from the node's "all" setting) makes the stack ignore
// the guest's requests, since the pod's address is not on proberAddr's /32.

// proberAddr is the tap's address, the source of the probes. It is link-
// local, so no VPC routes it; but some pod networks use this very address
// as their gateway (Calico's and the AWS VPC CNI's 169.254.1.1): a pod whose
// Config does gets no prober path (see Config.prober). Never change it: a
// running guest was given a route to it.
var proberAddr = netip.MustParseAddr("169.254.1.1")

// Priorities of the prober's filters on the tap's ingress, before
// tapRedirectPriority.
const (
	proberIPPriority  = 1
	proberARPPriority = 2
)

// proberClassID is the class (tc's flowid ":1") of the prober's filters. A
// u32 filter with a class and no action is terminal: a frame it matches is
// passed on to the stack and meets no later filter.
var proberClassID = netlink.MakeHandle(0, 1)

// prober returns the prober's address for c and the pod's IPv4 addresses
// it probes; ok is false when c gets no prober path: c has no IPv4 address,
// or it uses proberAddr itself (as an address, a gateway, or a host behind
// a gateway), which the tap's filters or the guest's route to the prober
// would then take away from the pod.
func (c Config) prober() (addr netip.Addr, pods []netip.Addr, ok bool) {
	for _, s := range c.Addresses {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, nil, false // validate refuses c anyway
		}
		if p.Contains(proberAddr) {
			return netip.Addr{}, nil, false
		}
		if p.Addr().Is4() && !slices.Contains(pods, p.Addr()) {
			pods = append(pods, p.Addr())
		}
	}
	own := netip.PrefixFrom(proberAddr, proberAddr.BitLen())
	for _, r := range c.Routes {
		if r.Gateway == "" {
			continue
		}
		gw, err := netip.ParseAddr(r.Gateway)
		dst, _ := netip.ParsePrefix(r.Dst)
		if err != nil || gw == proberAddr || dst == own {
			return netip.Addr{}, nil, false
		}
	}
	if len(pods) == 0 {
		return netip.Addr{}, nil, false
	}
	return proberAddr, pods, true
}

// ProberRoute returns the route the guest needs for its answers to the
// node's prober to come back through the tap: the prober's address, on the
// pod's link. ok is false when c gets no prober path (IPv6 only, or a pod
// network that uses the prober's address itself); the guest needs no
// route then. The route belongs to the guest only: it is not one of
// c.Routes, which go back to eth0 on Teardown.
func (c Config) ProberRoute() (r Route, ok bool) {
	addr, _, ok := c.prober()
	if !ok {
		return Route{}, false
	}
	return Route{Dst: netip.PrefixFrom(addr, addr.BitLen()).String(), Scope: ScopeLink}, true
}

// ensureProber gives tap the prober's path to the guest (see above), doing
// what is not done yet. The tap must be up, and its redirect at
// tapRedirectPriority already: an older agent's redirect would hold the
// priority the IPv4 filter needs.
func ensureProber(tap netlink.Link, cfg Config, p plan) error {
	addr, pods, ok := cfg.prober()
	if !ok {
		return nil
	}
	name := tap.Attrs().Name
	a := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(addr, 32)), Scope: unix.RT_SCOPE_LINK}
	if err := netlink.AddrReplace(tap, a); err != nil {
		return fmt.Errorf("add prober address %s to %s: %w", addr, name, err)
	}
	for _, pod := range pods {
		r := &netlink.Route{LinkIndex: tap.Attrs().Index, Dst: prefixToIPNet(netip.PrefixFrom(pod, 32)),
			Src: addr.AsSlice(), Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("add route to %s through %s: %w", pod, name, err)
		}
		n := &netlink.Neigh{LinkIndex: tap.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: pod.AsSlice(), HardwareAddr: p.mac}
		if err := netlink.NeighSet(n); err != nil {
			return fmt.Errorf("add neighbour %s (%s) on %s: %w", pod, p.mac, name, err)
		}
	}
	return ensureProberFilters(tap, addr)
}

// proberFilters are the tap's ingress filters that hand frames for addr
// to the stack: IPv4 packets to it, and ARP packets asking for it.
func proberFilters(tap netlink.Link, addr netip.Addr) []*netlink.U32 {
	v := binary.BigEndian.Uint32(addr.AsSlice()) // netlink turns it to network order
	filter := func(prio uint16, proto uint16, off int32) *netlink.U32 {
		return &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: tap.Attrs().Index, Parent: ingressHandle, Priority: prio, Protocol: proto},
			ClassId:     proberClassID,
			Sel: &nl.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Nkeys: 1,
				Keys: []nl.TcU32Key{{Mask: 0xffffffff, Val: v, Off: off}}},
		}
	}
	return []*netlink.U32{
		// The destination address, 16 bytes into the IPv4 header.
		filter(proberIPPriority, unix.ETH_P_IP, 16),
		// The target protocol address, 24 bytes into an Ethernet/IPv4 ARP
		// packet (after op, sender MAC and IP, target MAC).
		filter(proberARPPriority, unix.ETH_P_ARP, 24),
	}
}

// sameProberFilter reports whether f, a listed filter, is want.
func sameProberFilter(f netlink.Filter, want *netlink.U32) bool {
	u, ok := f.(*netlink.U32)
	if !ok || u.Priority != want.Priority || u.Protocol != want.Protocol || u.ClassId != want.ClassId ||
		len(u.Actions) > 0 || u.Sel == nil || len(u.Sel.Keys) != 1 {
		return false
	}
	k, w := u.Sel.Keys[0], want.Sel.Keys[0]
	return k.Mask == w.Mask && k.Val == w.Val && k.Off == w.Off && k.OffMask == w.OffMask
}

// ensureProberFilters puts the prober's filters for addr on tap's ingress,
// each alone at its priority, replacing whatever else is there (the tap is
// ours).
func ensureProberFilters(tap netlink.Link, addr netip.Addr) error {
	if err := ensureIngress(tap); err != nil {
		return err
	}
	fs, err := ingressFilters(tap)
	if err != nil {
		return err
	}
	for _, want := range proberFilters(tap, addr) {
		var at []netlink.Filter
		for _, f := range fs {
			if f.Attrs().Priority == want.Priority {
				at = append(at, f)
			}
		}
		if len(at) == 1 && sameProberFilter(at[0], want) {
			continue
		}
		// Also when nothing is listed: an emptied priority may still be
		// there, holding another protocol (see deleteFilters).
		if err := deletePriority(tap, want.Priority); err != nil {
			return err
		}
		if err := netlink.FilterAdd(want); err != nil {
			return fmt.Errorf("add prober filter at priority %d to %s: %w", want.Priority, tap.Attrs().Name, err)
		}
	}
	return nil
}
