package eniconfig

import (
	"errors"
	"net/netip"
	"reflect"
	"testing"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestRoundTrip(t *testing.T) {
	s := enilink.Spec{
		MAC: "02:aa:bb:cc:dd:ee", HostName: "eth7", MTU: 9001,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.0.1.10/24"), netip.MustParsePrefix("2001:db8::10/64")},
		Gateways:  []netip.Addr{netip.MustParseAddr("10.0.1.1")},
		Routes:    []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")},
	}
	vpc, got, err := FromProto(ToProto("vpc-a", s))
	if err != nil || vpc != "vpc-a" || !reflect.DeepEqual(got, s) {
		t.Fatalf("round trip: %q %+v %v; want vpc-a %+v", vpc, got, err, s)
	}
}

func TestFromProtoRefuses(t *testing.T) {
	for _, p := range []*apiv1.ENIConfig{
		nil,
		{Mac: "02:aa:bb:cc:dd:ee", Addresses: []string{"10.0.0.1"}},
		{Mac: "02:aa:bb:cc:dd:ee", Gateways: []string{"nope"}},
		{Mac: "02:aa:bb:cc:dd:ee", Routes: []string{"10.0.0.0"}},
	} {
		if _, _, err := FromProto(p); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%v: got %v, want invalid argument", p, err)
		}
	}
}

func TestIdentityRoundTrip(t *testing.T) {
	for _, id := range []enilink.Identity{
		{Index: 7, Kind: "veth", PeerIndex: 3, PeerNetnsID: 0},
		{Index: 4, Kind: "device", PermAddr: "0a:00:00:00:00:05", ParentBus: "pci", ParentDev: "0000:00:05.0", PeerNetnsID: -1},
	} {
		got, ok := IdentityFromProto(IdentityToProto(&id))
		if !ok || got != id {
			t.Errorf("round trip of %+v: %+v, %v", id, got, ok)
		}
	}
	if _, ok := IdentityFromProto(IdentityToProto(nil)); ok {
		t.Error("nil identity came back")
	}
}
