// Package eniconfig converts an ENI's network config between the node
// agent's API (apiv1.ENIConfig, text fields) and its Go shape (the VPC and
// the enilink.Spec that cni-eni applies in the pod). The agent's server and
// cni-eni both use it, so the two sides read the wire the same way.
package eniconfig

import (
	"fmt"
	"net/netip"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// FromProto parses p. A malformed address, gateway or route wraps
// errdefs.ErrInvalidArgument; the values are not otherwise validated.
func FromProto(p *apiv1.ENIConfig) (vpc string, s enilink.Spec, err error) {
	if p == nil {
		return "", s, fmt.Errorf("ENI config is required: %w", errdefs.ErrInvalidArgument)
	}
	s = enilink.Spec{MAC: p.GetMac(), HostName: p.GetHostName(), MTU: int(p.GetMtu())}
	for _, a := range p.GetAddresses() {
		pf, err := netip.ParsePrefix(a)
		if err != nil {
			return "", s, fmt.Errorf("address %q: want ADDR/PREFIX: %w", a, errdefs.ErrInvalidArgument)
		}
		s.Addresses = append(s.Addresses, pf)
	}
	for _, g := range p.GetGateways() {
		ad, err := netip.ParseAddr(g)
		if err != nil {
			return "", s, fmt.Errorf("gateway %q: %w", g, errdefs.ErrInvalidArgument)
		}
		s.Gateways = append(s.Gateways, ad)
	}
	for _, r := range p.GetRoutes() {
		pf, err := netip.ParsePrefix(r)
		if err != nil {
			return "", s, fmt.Errorf("route %q: want CIDR: %w", r, errdefs.ErrInvalidArgument)
		}
		s.Routes = append(s.Routes, pf)
	}
	return p.GetVpc(), s, nil
}

// ToProto renders vpc and s.
func ToProto(vpc string, s enilink.Spec) *apiv1.ENIConfig {
	p := &apiv1.ENIConfig{Mac: s.MAC, Vpc: vpc, Mtu: uint32(s.MTU), HostName: s.HostName}
	for _, a := range s.Addresses {
		p.Addresses = append(p.Addresses, a.String())
	}
	for _, g := range s.Gateways {
		p.Gateways = append(p.Gateways, g.String())
	}
	for _, r := range s.Routes {
		p.Routes = append(p.Routes, r.String())
	}
	return p
}

// IdentityFromProto parses p; nil (an attachment not confirmed) gives
// false.
func IdentityFromProto(p *apiv1.LinkIdentity) (enilink.Identity, bool) {
	if p == nil {
		return enilink.Identity{}, false
	}
	return enilink.Identity{
		Index: int(p.GetIndex()), Kind: p.GetKind(), PermAddr: p.GetPermAddr(),
		ParentBus: p.GetParentBus(), ParentDev: p.GetParentDev(),
		PeerIndex: int(p.GetPeerIndex()), PeerNetnsID: int(p.GetPeerNetnsid()),
	}, true
}

// IdentityToProto renders id; nil renders nil.
func IdentityToProto(id *enilink.Identity) *apiv1.LinkIdentity {
	if id == nil {
		return nil
	}
	return &apiv1.LinkIdentity{
		Index: int32(id.Index), Kind: id.Kind, PermAddr: id.PermAddr,
		ParentBus: id.ParentBus, ParentDev: id.ParentDev,
		PeerIndex: int32(id.PeerIndex), PeerNetnsid: int32(id.PeerNetnsID),
	}
}
