package sandbox

import (
	"slices"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
)

// guestNetConfig is what the guest agent needs to take over the pod's
// identity: the ENI's MAC (the VM's NIC has it), name, MTU, addresses and
// routes; and the route back to the node's prober through the tap, which
// is the guest's alone (eth0 never had it, so it is not one of n.Routes).
func guestNetConfig(n podnet.Config) agentproto.NetConfig {
	c := agentproto.NetConfig{Interfaces: []agentproto.Interface{{
		MAC: n.MAC, Name: podIfname, MTU: n.MTU, Addresses: n.Addresses}}}
	routes := n.Routes
	if r, ok := n.ProberRoute(); ok && !slices.Contains(routes, r) {
		routes = append(routes[:len(routes):len(routes)], r)
	}
	for _, r := range routes {
		// In order: a gateway may be reachable only through an earlier
		// route without one.
		c.Routes = append(c.Routes, agentproto.Route{Dst: r.Dst, Gateway: r.Gateway, Interface: podIfname,
			Scope: r.Scope, OnLink: r.OnLink, Metric: r.Metric, Src: r.Src})
	}
	return c
}

func execSpec(r ExecRequest) agentproto.ExecSpec {
	return agentproto.ExecSpec{Argv: r.Argv, Env: r.Env, Dir: r.Dir}
}
