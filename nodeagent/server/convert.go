package server

import (
	"fmt"
	"net/netip"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/eni"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// ConfigFromProto parses the text forms of an ENIConfig.
func ConfigFromProto(p *apiv1.ENIConfig) (eni.Config, error) {
	if p == nil {
		return eni.Config{}, fmt.Errorf("ENI config is required: %w", errdefs.ErrInvalidArgument)
	}
	c := eni.Config{MAC: p.GetMac(), VPC: p.GetVpc(), MTU: int(p.GetMtu()), HostName: p.GetHostName()}
	for _, s := range p.GetAddresses() {
		a, err := netip.ParsePrefix(s)
		if err != nil {
			return c, fmt.Errorf("address %q: want ADDR/PREFIX: %w", s, errdefs.ErrInvalidArgument)
		}
		c.Addresses = append(c.Addresses, a)
	}
	for _, s := range p.GetGateways() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return c, fmt.Errorf("gateway %q: %w", s, errdefs.ErrInvalidArgument)
		}
		c.Gateways = append(c.Gateways, a)
	}
	for _, s := range p.GetRoutes() {
		r, err := netip.ParsePrefix(s)
		if err != nil {
			return c, fmt.Errorf("route %q: want CIDR: %w", s, errdefs.ErrInvalidArgument)
		}
		c.Routes = append(c.Routes, r)
	}
	return c, nil
}

// ConfigToProto renders a Config.
func ConfigToProto(c eni.Config) *apiv1.ENIConfig {
	p := &apiv1.ENIConfig{Mac: c.MAC, Vpc: c.VPC, Mtu: uint32(c.MTU), HostName: c.HostName}
	for _, a := range c.Addresses {
		p.Addresses = append(p.Addresses, a.String())
	}
	for _, g := range c.Gateways {
		p.Gateways = append(p.Gateways, g.String())
	}
	for _, r := range c.Routes {
		p.Routes = append(p.Routes, r.String())
	}
	return p
}

var stateToProto = map[eni.State]apiv1.ENIState{
	eni.StateFree:      apiv1.ENIState_ENI_STATE_FREE,
	eni.StateAttaching: apiv1.ENIState_ENI_STATE_ATTACHING,
	eni.StateAttached:  apiv1.ENIState_ENI_STATE_ATTACHED,
	eni.StateMissing:   apiv1.ENIState_ENI_STATE_MISSING,
}

func attachmentToProto(a eni.Attachment) *apiv1.Attachment {
	return &apiv1.Attachment{
		ContainerId: a.ContainerID, Ifname: a.IfName, Netns: a.Netns,
		PodNamespace: a.Pod.Namespace, PodName: a.Pod.Name, Mac: a.MAC,
		Confirmed: a.Confirmed, CreatedUnixNano: a.Created.UnixNano(),
	}
}

func eniToProto(e eni.ENI) *apiv1.ENI {
	p := &apiv1.ENI{Config: ConfigToProto(e.Config), State: stateToProto[e.State]}
	if e.AssignedPod != nil {
		p.AssignedPod = e.AssignedPod.String()
	}
	if e.Attachment != nil {
		p.Attachment = attachmentToProto(*e.Attachment)
	}
	return p
}

func assignmentToProto(a eni.Assignment) *apiv1.Assignment {
	p := &apiv1.Assignment{PodNamespace: a.Pod.Namespace, PodName: a.Pod.Name}
	if a.MAC != "" {
		p.Target = &apiv1.Assignment_Mac{Mac: a.MAC}
	} else {
		p.Target = &apiv1.Assignment_Vpc{Vpc: a.VPC}
	}
	return p
}
