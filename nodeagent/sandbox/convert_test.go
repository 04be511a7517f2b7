package sandbox

import (
	"testing"

	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
)

// The guest gets the pod's routes, then its route back to the agent's
// prober: once, and only for a pod the prober can reach (IPv4, not using
// the prober's own address).
func TestGuestNetConfigProberRoute(t *testing.T) {
	prober := "169.254.1.1/32"
	count := func(c podnet.Config) (n int, last string) {
		g := guestNetConfig(c)
		for _, r := range g.Routes {
			if r.Dst == prober {
				n++
			}
			last = r.Dst
		}
		return n, last
	}
	v4 := podnet.Config{Interface: "eth0", MAC: "02:00:00:00:00:01", MTU: 1500, Tap: "tap0",
		Addresses: []string{"10.1.0.11/24"}, Routes: []podnet.Route{{Dst: "0.0.0.0/0", Gateway: "10.1.0.1"}}}
	if n, last := count(v4); n != 1 || last != prober {
		t.Errorf("IPv4 pod: prober route %d times, last route %s; want once, last", n, last)
	}
	have := v4
	have.Routes = append([]podnet.Route{{Dst: prober, Scope: podnet.ScopeLink}}, v4.Routes...)
	if n, _ := count(have); n != 1 {
		t.Errorf("pod that has the route: %d times, want once", n)
	}
	v6 := podnet.Config{Interface: "eth0", MAC: "02:00:00:00:00:01", MTU: 1500, Tap: "tap0",
		Addresses: []string{"fd00::11/64"}, Routes: []podnet.Route{{Dst: "::/0", Gateway: "fd00::1"}}}
	if n, _ := count(v6); n != 0 {
		t.Errorf("IPv6-only pod: prober route %d times, want none", n)
	}
	gw := v4
	gw.Routes = []podnet.Route{{Dst: prober, Scope: podnet.ScopeLink}, {Dst: "0.0.0.0/0", Gateway: "169.254.1.1", OnLink: true}}
	if _, ok := gw.ProberRoute(); ok {
		t.Error("a pod whose gateway is 169.254.1.1 gets the prober route")
	}
	if len(v4.Routes) != 1 {
		t.Errorf("guestNetConfig changed the pod's routes: %v", v4.Routes)
	}
}
