package eni

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// NetlinkLinks is Links on the agent's own network namespace.
type NetlinkLinks struct{}

var _ Links = NetlinkLinks{}

func info(l netlink.Link, addrs int) LinkInfo {
	a := l.Attrs()
	return LinkInfo{Index: a.Index, Name: a.Name, Up: a.Flags&net.FlagUp != 0, Addrs: addrs}
}

// Lookup implements Links.
func (NetlinkLinks) Lookup(mac, hint string) (LinkInfo, error) {
	l, err := enilink.FindByMAC(mac, hint)
	if errors.Is(err, enilink.ErrLinkNotFound) {
		return LinkInfo{}, fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	}
	if err != nil {
		return LinkInfo{}, err
	}
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return LinkInfo{}, fmt.Errorf("list addresses: %w", err)
	}
	return info(l, len(addrs)), nil
}

// Snapshot implements Links.
func (NetlinkLinks) Snapshot() (map[string]LinkInfo, error) {
	links, err := netlinksafe.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	count := map[int]int{}
	for _, a := range addrs {
		count[a.LinkIndex]++
	}
	out := make(map[string]LinkInfo, len(links))
	for _, l := range links {
		if mac := l.Attrs().HardwareAddr.String(); mac != "" {
			out[mac] = info(l, count[l.Attrs().Index])
		}
	}
	return out, nil
}

// Quiesce implements Links.
func (NetlinkLinks) Quiesce(l LinkInfo, name string) error {
	if l.Quiet(name) {
		return nil
	}
	return enilink.Quiesce(l.Index, name)
}

// InNetns implements Links.
func (NetlinkLinks) InNetns(path string, link *enilink.Identity) (bool, bool, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if errors.As(err, &notExist) || errors.As(err, &notNS) {
			return false, false, nil
		}
		return false, false, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer n.Close()
	if link == nil {
		return true, false, nil
	}
	// A netlink socket in the pod's namespace: namespace IDs in the
	// identity are that namespace's.
	h, err := netlinksafe.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		return true, false, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	l, err := h.LinkByIndex(link.Index)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return true, false, nil
	}
	if err != nil {
		return true, false, fmt.Errorf("find link %d in %s: %w", link.Index, path, err)
	}
	return true, link.Match(enilink.IdentityOf(l)) == nil, nil
}
