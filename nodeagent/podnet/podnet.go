// Package podnet plugs a pod's network namespace into a sandbox VM the way
// Kata's tcfilter model does. The pod's link (cni-eni's eth0) gives its
// identity to the VM: the VM's NIC gets its MAC and the guest its MTU,
// addresses and routes, while a tap in the pod's namespace carries the
// frames. Two u32 match-all filters on ingress qdiscs redirect (tc mirred)
// every frame that arrives on eth0 out through the tap, to QEMU, and every
// frame QEMU writes into the tap out through eth0. The host side keeps no
// address and no route, so the pod namespace's own stack never answers for
// the pod's addresses; eth0 stays up. The one exception is the node's
// prober, which probes the pod from its namespace: the tap holds a
// link-local address for it, routes to the pod's IPv4 addresses through
// the tap, and filters ahead of the redirect that hand the stack the
// frames for that address (see prober.go; ProberRoute is the guest's half).
//
// The Config that Inspect and Setup return is the only record of what eth0
// had, since eth0 loses it: the caller keeps it and gives it back to Resume
// (finish a Setup cut short) or Teardown (give eth0 its addresses and routes
// back, so that cni-eni's CHECK and DEL see what they left). The crash-safe
// order is Inspect, persist the Config, Resume. Setup is Inspect followed by
// Resume; it refuses a namespace that is already plugged (the error wraps
// errdefs.ErrAlreadyExists), because what eth0 had is no longer there to
// read: Resume or Teardown it with the kept Config.
package podnet

import (
	"errors"
	"fmt"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Setup hands the link ifname of the network namespace at netnsPath over to
// a VM through the tap tapName there, and returns what ifname had: it is
// Inspect followed by Resume. A missing namespace or link gives an error
// wrapping errdefs.ErrNotFound and changes nothing; a failure halfway is
// undone.
func Setup(netnsPath, ifname, tapName string) (Config, error) {
	cfg, err := Inspect(netnsPath, ifname, tapName)
	if err != nil {
		return Config{}, err
	}
	if err := Resume(netnsPath, cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Inspect reads the link ifname of the network namespace at netnsPath (its
// MAC, MTU, global addresses and the routes through it) into the Config
// that plugs it into a VM through the tap tapName. It changes nothing. The
// error wraps errdefs.ErrNotFound when the namespace or the link is
// missing, and errdefs.ErrAlreadyExists when ifname already redirects to a
// tap (its addresses may be gone: use the Config kept from before).
func Inspect(netnsPath, ifname, tapName string) (Config, error) {
	cfg := Config{Interface: ifname, Tap: tapName}
	for _, n := range []string{ifname, tapName} {
		if err := validIfname(n); err != nil {
			return Config{}, fmt.Errorf("inspect pod network: %v: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	err := inNetNS(netnsPath, func() error {
		l, err := netlinksafe.LinkByName(ifname)
		if isLinkNotFound(err) {
			return fmt.Errorf("no link %s: %w", ifname, errdefs.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("find %s: %w", ifname, err)
		}
		fs, err := redirects(l)
		if err != nil {
			return err
		}
		if len(fs) > 0 {
			return fmt.Errorf("%s already redirects to a tap and may have lost its addresses: resume or tear down with the Config kept from the first setup: %w",
				ifname, errdefs.ErrAlreadyExists)
		}
		cfg.MAC = l.Attrs().HardwareAddr.String()
		cfg.MTU = l.Attrs().MTU
		cfg.Addresses, err = globalAddrs(l)
		if err != nil {
			return err
		}
		cfg.Routes, err = linkRoutes(l)
		return err
	})
	if err != nil {
		return Config{}, fmt.Errorf("inspect %s in %s: %w", ifname, netnsPath, err)
	}
	if _, err := cfg.validate(); err != nil {
		return Config{}, fmt.Errorf("inspect %s in %s: %w", ifname, netnsPath, err)
	}
	return cfg, nil
}

// Resume brings the network namespace at netnsPath to the plugged state cfg
// describes, doing what is not done yet: the tap (cfg.MTU, up, no IPv6),
// ingress qdiscs and redirect filters on both links, the prober's path on
// the tap, and no global address and no route left on cfg.Interface. It
// may be repeated, also on a link plugged by an older agent (it moves the
// tap's redirect behind the prober's filters and adds them). On a
// failure it leaves the namespace unplugged, as Teardown does. The error
// wraps errdefs.ErrNotFound when the namespace or the link with cfg.MAC is
// missing (nothing is changed then) and errdefs.ErrFailedPrecondition when
// that link is not named cfg.Interface.
func Resume(netnsPath string, cfg Config) error {
	p, err := cfg.validate()
	if err != nil {
		return err
	}
	err = inNetNS(netnsPath, func() error { return plug(cfg, p) })
	if err != nil {
		return fmt.Errorf("plug %s into %s in %s: %w", cfg.Interface, cfg.Tap, netnsPath, err)
	}
	return nil
}

// Teardown undoes Setup in the network namespace at netnsPath: it removes
// the redirect filters (and ingress qdisc) from cfg.Interface, deletes the
// tap (and with it the prober's address, routes, neighbours and filters),
// and gives cfg.Interface its addresses and routes back. It may be
// repeated, also after a Setup or Teardown cut short. A namespace that is
// gone, or a cfg.Interface that has left it, is no error.
func Teardown(netnsPath string, cfg Config) error {
	p, err := cfg.validate()
	if err != nil {
		return err
	}
	err = inNetNS(netnsPath, func() error { return unplug(cfg, p) })
	if errors.Is(err, errNoNetNS) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unplug %s from %s in %s: %w", cfg.Interface, cfg.Tap, netnsPath, err)
	}
	return nil
}

// plug does Resume's work in the pod's namespace.
func plug(cfg Config, p plan) (err error) {
	l, err := podLink(cfg, p)
	if err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("link %s (%s): %w", cfg.Interface, cfg.MAC, errdefs.ErrNotFound)
	}
	if l.Attrs().Name != cfg.Interface {
		return fmt.Errorf("link %s is named %s: %w", cfg.MAC, l.Attrs().Name, errdefs.ErrFailedPrecondition)
	}
	defer func() {
		if err != nil {
			if uerr := unplug(cfg, p); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", uerr))
			}
		}
	}()
	tap, err := ensureTap(cfg.Tap, cfg.MTU)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", cfg.Interface, err)
	}
	// The tap's side first: once eth0 redirects, the path is whole.
	if err := ensureRedirect(tap, l, tapRedirectPriority); err != nil {
		return err
	}
	if err := ensureProber(tap, cfg, p); err != nil {
		return err
	}
	if err := ensureRedirect(l, tap, linkRedirectPriority); err != nil {
		return err
	}
	return strip(l)
}

// unplug does Teardown's work in the pod's namespace.
func unplug(cfg Config, p plan) error {
	l, err := podLink(cfg, p)
	if err != nil {
		return err
	}
	if l != nil {
		if err := removeRedirects(l); err != nil {
			return err
		}
	}
	if err := deleteTap(cfg.Tap); err != nil {
		return err
	}
	if l == nil {
		return nil // the link left with its namespace or went back to the node
	}
	return restore(l, p)
}

// podLink finds the pod's link by its MAC, trying cfg.Interface first; it
// returns nil when there is none.
func podLink(cfg Config, p plan) (netlink.Link, error) {
	l, err := enilink.FindByMAC(p.mac.String(), cfg.Interface)
	if errors.Is(err, enilink.ErrLinkNotFound) {
		return nil, nil
	}
	return l, err
}

// strip removes l's global addresses, then the routes through l that are
// left (IPv4 ones go with the last IPv4 address, IPv6 ones do not).
func strip(l netlink.Link) error {
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	for i := range addrs {
		if addrs[i].Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		if err := netlink.AddrDel(l, &addrs[i]); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove address %v from %s: %w", addrs[i].IPNet, l.Attrs().Name, err)
		}
	}
	routes, err := netlinksafe.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", l.Attrs().Name, err)
	}
	for i := range routes {
		if !handedOver(routes[i]) {
			continue
		}
		if err := netlink.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("remove route to %v from %s: %w", routes[i].Dst, l.Attrs().Name, err)
		}
	}
	return nil
}

// restore gives l the addresses and routes of p.
func restore(l netlink.Link, p plan) error {
	for _, a := range p.addrs {
		addr := &netlink.Addr{IPNet: prefixToIPNet(a)}
		if a.Addr().Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("give address %v back to %s: %w", a, l.Attrs().Name, err)
		}
	}
	for _, r := range p.routes {
		r.LinkIndex = l.Attrs().Index
		if err := netlink.RouteReplace(&r); err != nil {
			return fmt.Errorf("give route to %v back to %s: %w", r.Dst, l.Attrs().Name, err)
		}
	}
	return nil
}

// globalAddrs lists l's global addresses in CIDR form.
func globalAddrs(l netlink.Link) ([]string, error) {
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
	}
	var out []string
	for _, a := range addrs {
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		p, ok := ipNetToPrefix(a.IPNet)
		if !ok {
			return nil, fmt.Errorf("address %v of %s is not a prefix", a.IPNet, l.Attrs().Name)
		}
		out = append(out, p.String())
	}
	return out, nil
}

// handedOver reports whether r, a route through the pod's link, is one the
// guest takes over: a main-table unicast route that the kernel did not make
// for an address (the guest's kernel makes those).
func handedOver(r netlink.Route) bool {
	if r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST || len(r.MultiPath) > 0 {
		return false
	}
	if r.Dst != nil {
		if p, ok := ipNetToPrefix(r.Dst); ok && p.Addr().IsMulticast() {
			return false
		}
	}
	return true
}

// linkRoutes lists the routes through l the guest takes over.
func linkRoutes(l netlink.Link) ([]Route, error) {
	routes, err := netlinksafe.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list routes of %s: %w", l.Attrs().Name, err)
	}
	var out []Route
	for _, nr := range routes {
		if !handedOver(nr) {
			continue
		}
		r, err := routeFromNetlink(nr)
		if err != nil {
			return nil, fmt.Errorf("route through %s: %w", l.Attrs().Name, err)
		}
		out = append(out, r)
	}
	sortRoutes(out)
	return out, nil
}

// errNoNetNS marks a network namespace path that holds no namespace.
var errNoNetNS = fmt.Errorf("no network namespace: %w", errdefs.ErrNotFound)

// inNetNS runs f on a thread in the network namespace at path. A path that
// holds no namespace gives an error wrapping errNoNetNS.
func inNetNS(path string, f func() error) error {
	if path == "" {
		return fmt.Errorf("empty network namespace path: %w", errdefs.ErrInvalidArgument)
	}
	n, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if errors.As(err, &notExist) || errors.As(err, &notNS) {
			return fmt.Errorf("%v: %w", err, errNoNetNS)
		}
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return f() })
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// TapStats returns the bytes the tap of cfg in netnsPath has received
// from the pod's side and sent to it: rx is what the VM sent (the tap's
// receive counter counts frames QEMU wrote), tx what it was given.
func TapStats(netnsPath string, cfg Config) (rx, tx uint64, err error) {
	err = inNetNS(netnsPath, func() error {
		l, err := netlink.LinkByName(cfg.Tap)
		if err != nil {
			return fmt.Errorf("tap %s: %w", cfg.Tap, err)
		}
		if s := l.Attrs().Statistics; s != nil {
			rx, tx = s.RxBytes, s.TxBytes
		}
		return nil
	})
	return rx, tx, err
}
