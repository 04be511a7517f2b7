package enilink

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// ErrForeignLink means the link found where the ENI should be is not the
// ENI: a pod made it, or renumbered its links.
var ErrForeignLink = errors.New("link is not the ENI")

// Identity tells the link ADD moved into a pod apart from any link the pod
// can make. It is read inside the pod's namespace right after the move,
// before the pod's containers run. A pod holds NET_ADMIN in its namespace:
// it can rename links and change their MACs and aliases, and create veths
// with any name, MAC and even a chosen ifindex. It cannot make:
//
//   - a hardware NIC: kind "device" (a link made over rtnetlink always has
//     a kind), with the NIC's parent device (bus and address) and its
//     permanent MAC (IFLA_PERM_ADDRESS, which drivers set and veths lack);
//   - a veth whose peer lives in a namespace the pod cannot reach: the
//     peer's ifindex and that namespace's ID as the pod's namespace numbers
//     it (a veth a pod makes has its peer beside it, with no such ID).
//
// With the link's ifindex, unique in the namespace while the link lives,
// that singles out the ENI. The current MAC, name and alias are the pod's
// to change and are not part of it.
type Identity struct {
	// Index is the link's ifindex in the pod's namespace.
	Index int `json:"index"`
	// Kind is the rtnetlink kind ("veth", ...), or "device" for a link
	// without one: a hardware NIC.
	Kind string `json:"kind"`
	// PermAddr is the permanent MAC, when the driver has one.
	PermAddr string `json:"permAddr,omitempty"`
	// ParentBus and ParentDev name the device behind a hardware NIC
	// ("pci", "0000:00:05.0").
	ParentBus string `json:"parentBus,omitempty"`
	ParentDev string `json:"parentDev,omitempty"`
	// PeerIndex is IFLA_LINK: a veth's peer, or the link a VLAN or macvlan
	// sits on; 0 when none.
	PeerIndex int `json:"peerIndex,omitempty"`
	// PeerNetnsID is the ID, as the pod's namespace numbers it, of the
	// namespace PeerIndex lives in; -1 when that is the pod's own.
	PeerNetnsID int `json:"peerNetnsID"`
}

// IdentityOf reads l's identity. l must come from a netlink socket in the
// namespace that holds it (namespace IDs are relative to the asker).
func IdentityOf(l netlink.Link) Identity {
	a := l.Attrs()
	id := Identity{Index: a.Index, Kind: l.Type(), ParentBus: a.ParentDevBus, ParentDev: a.ParentDev,
		PeerIndex: a.ParentIndex, PeerNetnsID: a.NetNsID}
	for _, b := range a.PermHWAddr {
		if b != 0 {
			id.PermAddr = a.PermHWAddr.String()
			break
		}
	}
	if id.PeerNetnsID < 0 {
		id.PeerNetnsID = -1
	}
	return id
}

// Validate checks that id was read from a link.
func (id Identity) Validate() error {
	if id.Index <= 0 || id.Kind == "" {
		return fmt.Errorf("link identity needs an ifindex and a kind (got %d, %q): %w", id.Index, id.Kind, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Match returns nil when got is the link id describes, else an error
// wrapping ErrForeignLink that lists the differences.
func (id Identity) Match(got Identity) error {
	var diff []string
	check := func(what string, want, have any) {
		if want != have {
			diff = append(diff, fmt.Sprintf("%s %v, want %v", what, have, want))
		}
	}
	check("ifindex", id.Index, got.Index)
	check("kind", id.Kind, got.Kind)
	check("permanent MAC", id.PermAddr, got.PermAddr)
	check("parent bus", id.ParentBus, got.ParentBus)
	check("parent device", id.ParentDev, got.ParentDev)
	check("peer ifindex", id.PeerIndex, got.PeerIndex)
	check("peer netns ID", id.PeerNetnsID, got.PeerNetnsID)
	if len(diff) > 0 {
		return fmt.Errorf("%s: %w", strings.Join(diff, ", "), ErrForeignLink)
	}
	return nil
}
