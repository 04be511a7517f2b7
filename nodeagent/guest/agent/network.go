//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
)

// configureNetwork applies cfg: each link, found by MAC, is renamed, gets
// its MTU and addresses and is set up; then the routes are added. Every
// step replaces rather than adds, so applying cfg again is harmless.
func configureNetwork(cfg agentproto.NetConfig) error {
	if err := cfg.Validate(); err != nil {
		return coded(agentproto.CodeInvalidArgument, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	byName := map[string]netlink.Link{}
	var only netlink.Link
	for _, ifc := range cfg.Interfaces {
		link, err := configureInterface(links, ifc)
		if err != nil {
			return err
		}
		byName[link.Attrs().Name] = link
		only = link
	}
	for _, r := range cfg.Routes {
		link := only
		if r.Interface != "" {
			link = byName[r.Interface]
		}
		if err := replaceRoute(link, r); err != nil {
			return err
		}
	}
	return nil
}

// configureInterface sets up the link with ifc's MAC and returns it, under
// its new name.
func configureInterface(links []netlink.Link, ifc agentproto.Interface) (netlink.Link, error) {
	mac, _ := net.ParseMAC(ifc.MAC) // validated
	link := linkByMAC(links, mac)
	if link == nil && ifc.FromMAC != "" {
		from, _ := net.ParseMAC(ifc.FromMAC)
		if link = linkByMAC(links, from); link != nil {
			if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
				return nil, fmt.Errorf("set %s mac %s: %w", link.Attrs().Name, ifc.MAC, err)
			}
			link.Attrs().HardwareAddr = mac
		}
	}
	if link == nil {
		return nil, coded(agentproto.CodeNotFound, fmt.Errorf("no link with mac %s", ifc.MAC))
	}
	cur := link.Attrs().Name
	if ifc.Name != "" && cur != ifc.Name {
		if other, err := netlink.LinkByName(ifc.Name); err == nil && other.Attrs().Index != link.Attrs().Index {
			return nil, coded(agentproto.CodeFailedPrecondition, fmt.Errorf("rename %s to %s: the name is taken by another link", cur, ifc.Name))
		}
		// The kernel renames only links that are down.
		if err := netlink.LinkSetDown(link); err != nil {
			return nil, fmt.Errorf("set %s down: %w", cur, err)
		}
		if err := netlink.LinkSetName(link, ifc.Name); err != nil {
			return nil, fmt.Errorf("rename %s to %s: %w", cur, ifc.Name, err)
		}
		link.Attrs().Name = ifc.Name
	}
	name := link.Attrs().Name
	if ifc.MTU != 0 && link.Attrs().MTU != ifc.MTU {
		if err := netlink.LinkSetMTU(link, ifc.MTU); err != nil {
			return nil, fmt.Errorf("set %s mtu %d: %w", name, ifc.MTU, err)
		}
	}
	for _, a := range ifc.Addresses {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return nil, coded(agentproto.CodeInvalidArgument, fmt.Errorf("address %q: %w", a, err))
		}
		if addr.IP.To4() == nil {
			// The VM takes over an address that was already in use
			// by the pod: duplicate detection would only hold it back.
			addr.Flags |= unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return nil, fmt.Errorf("add %s to %s: %w", a, name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return link, nil
}

func replaceRoute(link netlink.Link, r agentproto.Route) error {
	dst, gw, err := r.Parse()
	if err != nil {
		return coded(agentproto.CodeInvalidArgument, err)
	}
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())},
		Priority:  r.Metric,
	}
	if gw.IsValid() {
		route.Gw = gw.AsSlice()
	}
	switch r.Scope {
	case agentproto.ScopeLink:
		route.Scope = netlink.SCOPE_LINK
	case agentproto.ScopeHost:
		route.Scope = netlink.SCOPE_HOST
	default:
		if !gw.IsValid() && dst.Addr().Is4() {
			route.Scope = netlink.SCOPE_LINK // as ip route does for routes without a gateway
		}
	}
	if r.OnLink {
		route.Flags |= int(netlink.FLAG_ONLINK)
	}
	if r.Src != "" {
		route.Src = net.ParseIP(r.Src)
	}
	if err := netlink.RouteReplace(route); err != nil {
		desc := dst.String()
		if gw.IsValid() {
			desc += " via " + gw.String()
		}
		if errors.Is(err, unix.ENETUNREACH) {
			return coded(agentproto.CodeFailedPrecondition, fmt.Errorf("add route %s dev %s: %w", desc, link.Attrs().Name, err))
		}
		return fmt.Errorf("add route %s dev %s: %w", desc, link.Attrs().Name, err)
	}
	return nil
}

func linkByMAC(links []netlink.Link, mac net.HardwareAddr) netlink.Link {
	for _, l := range links {
		if bytes.Equal(l.Attrs().HardwareAddr, mac) {
			return l
		}
	}
	return nil
}
