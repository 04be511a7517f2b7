package server

import (
	"errors"
	"testing"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// An ENI registration from the control plane either normalizes into a
// config whose round trip through the API is stable, or is refused as an
// invalid argument: never a panic, never another kind of error.
func FuzzENIConfig(f *testing.F) {
	f.Add("02:00:00:00:00:01", "vpc-a", "10.0.0.2/24", "10.0.0.1", uint32(1500), "192.168.0.0/16")
	f.Add("02:00:00:00:00:01", "vpc-a", "fd00::2/64", "fd00::1", uint32(0), "")
	f.Add("zz", "", "x", "y", uint32(1), "z")
	f.Fuzz(func(t *testing.T, mac, vpc, addr, gw string, mtu uint32, route string) {
		p := &apiv1.ENIConfig{Mac: mac, Vpc: vpc, Addresses: []string{addr}, Gateways: []string{gw}, Mtu: mtu}
		if route != "" {
			p.Routes = []string{route}
		}
		c, err := ConfigFromProto(p)
		if err == nil {
			c, err = c.Normalize()
		}
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		back, err := ConfigFromProto(ConfigToProto(c))
		if err != nil {
			t.Fatalf("round trip: %v", err)
		}
		if again, err := back.Normalize(); err != nil || !again.SameSpec(c) {
			t.Fatalf("round trip changed %+v into %+v (%v)", c, again, err)
		}
	})
}
