package podnet

import (
	"errors"
	"fmt"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Priorities of the u32 filters that redirect every frame arriving on one
// link to the other. A u32 filter at either on an ingress qdisc whose
// action is a mirred egress redirect is ours.
const (
	// linkRedirectPriority is the pod link's (eth0's): where it has always
	// been, so that an older agent's Teardown still finds it.
	linkRedirectPriority = 1
	// tapRedirectPriority is the tap's: after the prober's filters
	// (proberIPPriority, proberARPPriority), which see a frame first. An
	// older agent put it at linkRedirectPriority: Resume moves it there,
	// Teardown deletes it with the tap.
	tapRedirectPriority = 3
)

// ingressHandle is the handle of a link's ingress qdisc (tc's "ffff:"),
// which is also the parent of its filters.
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// ingressQdisc returns l's ingress qdisc, or nil.
func ingressQdisc(l netlink.Link) (netlink.Qdisc, error) {
	qs, err := netlinksafe.QdiscList(l)
	if err != nil {
		return nil, fmt.Errorf("list qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_INGRESS {
			return q, nil
		}
	}
	return nil, nil
}

// ensureIngress gives l an ingress qdisc unless it has one.
func ensureIngress(l netlink.Link) error {
	if q, err := ingressQdisc(l); err != nil || q != nil {
		return err
	}
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add ingress qdisc to %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// ingressFilters lists the filters on l's ingress qdisc, if it has one.
func ingressFilters(l netlink.Link) ([]netlink.Filter, error) {
	q, err := ingressQdisc(l)
	if err != nil || q == nil {
		return nil, err
	}
	fs, err := netlinksafe.FilterList(l, ingressHandle)
	if err != nil {
		return nil, fmt.Errorf("list ingress filters of %s: %w", l.Attrs().Name, err)
	}
	return fs, nil
}

// redirectTarget returns the index of the link that f, one of our
// filters, redirects to; ok is false when f is not ours.
func redirectTarget(f netlink.Filter) (index int, ok bool) {
	u, isU32 := f.(*netlink.U32)
	if !isU32 || (u.Priority != linkRedirectPriority && u.Priority != tapRedirectPriority) || len(u.Actions) != 1 {
		return 0, false
	}
	m, isMirred := u.Actions[0].(*netlink.MirredAction)
	if !isMirred || m.MirredAction != netlink.TCA_EGRESS_REDIR {
		return 0, false
	}
	return m.Ifindex, true
}

// redirects returns our filters on l's ingress.
func redirects(l netlink.Link) ([]netlink.Filter, error) {
	fs, err := ingressFilters(l)
	if err != nil {
		return nil, err
	}
	var ours []netlink.Filter
	for _, f := range fs {
		if _, ok := redirectTarget(f); ok {
			ours = append(ours, f)
		}
	}
	return ours, nil
}

// ensureRedirect makes every frame that arrives on from leave through to,
// by a filter at prio, replacing a redirect of ours to another link or at
// another priority. The new filter comes before the old ones go, so no
// frame slips through to the namespace's stack in between.
func ensureRedirect(from, to netlink.Link, prio uint16) error {
	if err := ensureIngress(from); err != nil {
		return err
	}
	fs, err := redirects(from)
	if err != nil {
		return err
	}
	if len(fs) == 1 {
		if idx, _ := redirectTarget(fs[0]); idx == to.Attrs().Index && fs[0].Attrs().Priority == prio {
			return nil
		}
	}
	if err := netlink.FilterAdd(redirectFilter(from, to, prio)); err != nil {
		return fmt.Errorf("add filter redirecting %s to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return deleteFilters(from, fs)
}

// redirectFilter is the filter at prio on from's ingress that redirects
// every frame out through to.
func redirectFilter(from, to netlink.Link, prio uint16) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from.Attrs().Index,
			Parent:    ingressHandle,
			Priority:  prio,
			Protocol:  unix.ETH_P_ALL,
		},
		// No selector: u32 matches every frame.
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
}

// deleteFilters deletes fs, filters on l's ingress, and then each of their
// priorities that has no filter left: while a qdisc has u32 filters at
// other priorities (they share their hash tables' bookkeeping), the kernel
// keeps a priority whose last filter went, empty but still holding its
// protocol, which a filter of another protocol then cannot take.
func deleteFilters(l netlink.Link, fs []netlink.Filter) error {
	emptied := map[uint16]bool{}
	for _, f := range fs {
		a := f.Attrs()
		// A bare filter: a listed U32 carries its actions and would send them again.
		del := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: a.LinkIndex, Parent: a.Parent, Handle: a.Handle, Priority: a.Priority, Protocol: a.Protocol}}
		if err := netlink.FilterDel(del); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete filter %x of %s: %w", a.Handle, l.Attrs().Name, err)
		}
		emptied[a.Priority] = true
	}
	if len(emptied) == 0 {
		return nil
	}
	rest, err := ingressFilters(l)
	if err != nil {
		return err
	}
	for _, f := range rest {
		delete(emptied, f.Attrs().Priority)
	}
	for prio := range emptied {
		if err := deletePriority(l, prio); err != nil {
			return err
		}
	}
	return nil
}

// deletePriority deletes the filter priority prio from l's ingress, with
// whatever filters it holds.
func deletePriority(l netlink.Link, prio uint16) error {
	// No handle and no protocol: the whole priority, of any protocol.
	del := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: ingressHandle, Priority: prio}}
	if err := netlink.FilterDel(del); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete filter priority %d of %s: %w", prio, l.Attrs().Name, err)
	}
	return nil
}

// removeRedirects deletes our filters from l's ingress, and the ingress
// qdisc itself when no other filter is left on it.
func removeRedirects(l netlink.Link) error {
	fs, err := redirects(l)
	if err != nil {
		return err
	}
	if err := deleteFilters(l, fs); err != nil {
		return err
	}
	q, err := ingressQdisc(l)
	if err != nil || q == nil {
		return err
	}
	rest, err := ingressFilters(l)
	if err != nil || len(rest) > 0 {
		return err
	}
	if err := netlink.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete ingress qdisc of %s: %w", l.Attrs().Name, err)
	}
	return nil
}
