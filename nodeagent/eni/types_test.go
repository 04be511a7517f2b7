package eni

import (
	"errors"
	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestNormalizeMAC(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"02:aa:bb:cc:dd:ee", "02:aa:bb:cc:dd:ee", true},
		{"02:AA:BB:CC:DD:EE", "02:aa:bb:cc:dd:ee", true},
		{"02-aa-bb-cc-dd-ee", "02:aa:bb:cc:dd:ee", true},
		{"02aa.bbcc.ddee", "02:aa:bb:cc:dd:ee", true},
		{"", "", false},
		{"zz:zz:zz:zz:zz:zz", "", false},
		{"02:aa:bb:cc:dd", "", false},
		{"02:00:00:00:00:00:00:01", "", false}, // EUI-64: parses, but is not 6 bytes
		{"02:aa:bb:cc:dd:ee ", "", false},
	} {
		got, err := NormalizeMAC(tc.in)
		if tc.ok {
			if err != nil || got != tc.want {
				t.Errorf("NormalizeMAC(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			continue
		}
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("NormalizeMAC(%q) = %q, %v; want ErrInvalidArgument", tc.in, got, err)
		}
	}
}

func TestValidateVPC(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"vpc-a", true},
		{"A", true},
		{"vpc_1.prod-eu", true},
		{"0vpc", true},
		{strings.Repeat("v", 63), true},
		{"", false},
		{strings.Repeat("v", 64), false},
		{"-vpc", false},
		{".vpc", false},
		{"vpc/a", false},
		{"vpc a", false},
		{"vpc:a", false},
	} {
		err := ValidateVPC(tc.in)
		if tc.ok && err != nil {
			t.Errorf("ValidateVPC(%q) = %v, want nil", tc.in, err)
		}
		if !tc.ok && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidateVPC(%q) = %v, want ErrInvalidArgument", tc.in, err)
		}
	}
}

func TestConfigNormalizeValid(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Config
		want Config
	}{
		{
			name: "ipv4",
			in:   Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:AA:BB:CC:DD:EE", Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1")}},
			want: Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1")}},
		},
		{
			name: "ipv4 dashed MAC, MTU and masked routes",
			in:   Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02-aa-bb-cc-dd-ee", MTU: 9001, Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1"), Routes: prefixes("10.1.2.3/16", "0.0.0.0/0"), HostName: "ens5"}},
			want: Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", MTU: 9001, Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1"), Routes: prefixes("10.1.0.0/16", "0.0.0.0/0"), HostName: "ens5"}},
		},
		{
			name: "ipv4 and ipv6",
			in:   Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", MTU: 1500, Addresses: prefixes("10.0.1.10/24", "2001:db8:1::10/64"), Gateways: addrs("2001:db8:1::1", "10.0.1.1"), Routes: prefixes("2001:db8:ffff::1/48", "192.168.0.0/16")}},
			want: Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", MTU: 1500, Addresses: prefixes("10.0.1.10/24", "2001:db8:1::10/64"), Gateways: addrs("2001:db8:1::1", "10.0.1.1"), Routes: prefixes("2001:db8:ffff::/48", "192.168.0.0/16")}},
		},
		{
			name: "ipv6 only",
			in:   Config{VPC: "v6", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", Addresses: prefixes("2001:db8:1::10/64"), Gateways: addrs("2001:db8:1::1")}},
			want: Config{VPC: "v6", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", Addresses: prefixes("2001:db8:1::10/64"), Gateways: addrs("2001:db8:1::1")}},
		},
		{
			name: "MTU lower bound",
			in:   Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", MTU: 576, Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1")}},
			want: Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", MTU: 576, Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1")}},
		},
		{
			name: "MTU upper bound",
			in:   Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", MTU: 65535, Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1")}},
			want: Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", MTU: 65535, Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1")}},
		},
		{
			name: "two addresses in one family share the gateway",
			in:   Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", Addresses: prefixes("10.0.1.10/24", "10.0.1.11/24"), Gateways: addrs("10.0.1.1")}},
			want: Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", Addresses: prefixes("10.0.1.10/24", "10.0.1.11/24"), Gateways: addrs("10.0.1.1")}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.in.Normalize()
			if err != nil {
				t.Fatalf("Normalize: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Normalize =\n %+v\nwant\n %+v", got, tc.want)
			}
			// Normalizing again changes nothing.
			again, err := got.Normalize()
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("Normalize is not idempotent: %+v, %v", again, err)
			}
		})
	}
}

func TestConfigNormalizeInvalid(t *testing.T) {
	base := func() Config {
		return Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1")}}
	}
	dual := func() Config {
		c := base()
		c.Addresses = prefixes("10.0.1.10/24", "2001:db8:1::10/64")
		c.Gateways = addrs("10.0.1.1", "2001:db8:1::1")
		return c
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
	}{
		{"bad MAC", func(c *Config) { c.MAC = "not-a-mac" }},
		{"empty MAC", func(c *Config) { c.MAC = "" }},
		{"EUI-64 MAC", func(c *Config) { c.MAC = "02:00:00:00:00:00:00:01" }},
		{"empty VPC", func(c *Config) { c.VPC = "" }},
		{"bad VPC", func(c *Config) { c.VPC = "vpc/a" }},
		{"VPC too long", func(c *Config) { c.VPC = strings.Repeat("v", 64) }},
		{"no address", func(c *Config) { c.Addresses = nil }},
		{"zero address", func(c *Config) { c.Addresses = []netip.Prefix{{}} }},
		{"unspecified address", func(c *Config) { c.Addresses = prefixes("0.0.0.0/24") }},
		{"loopback address", func(c *Config) { c.Addresses = prefixes("127.0.0.1/8") }},
		{"multicast address", func(c *Config) { c.Addresses = prefixes("224.0.0.5/24") }},
		{"gateway outside subnet", func(c *Config) { c.Gateways = addrs("10.0.2.1") }},
		{"gateway is the address", func(c *Config) { c.Gateways = addrs("10.0.1.10") }},
		{"host prefix has no neighbour", func(c *Config) { c.Addresses = prefixes("10.0.1.10/32") }},
		{"no gateway at all", func(c *Config) { c.Gateways = nil }},
		{"gateway of the other family only", func(c *Config) { c.Gateways = addrs("2001:db8:1::1") }},
		{"ipv6 gateway missing", func(c *Config) {
			c.Addresses = prefixes("10.0.1.10/24", "2001:db8:1::10/64")
			c.Gateways = addrs("10.0.1.1")
		}},
		{"ipv4 gateway missing", func(c *Config) {
			c.Addresses = prefixes("10.0.1.10/24", "2001:db8:1::10/64")
			c.Gateways = addrs("2001:db8:1::1")
		}},
		{"ipv6 gateway outside subnet", func(c *Config) {
			*c = dual()
			c.Gateways = addrs("10.0.1.1", "2001:db8:2::1")
		}},
		{"two gateways of one family", func(c *Config) { c.Gateways = addrs("10.0.1.1", "10.0.1.2") }},
		{"invalid extra gateway", func(c *Config) { c.Gateways = []netip.Addr{netip.MustParseAddr("10.0.1.1"), {}} }},
		{"MTU too small", func(c *Config) { c.MTU = 575 }},
		{"MTU too big", func(c *Config) { c.MTU = 65536 }},
		{"MTU negative", func(c *Config) { c.MTU = -1 }},
		{"invalid route", func(c *Config) { c.Routes = []netip.Prefix{{}} }},
		{"ipv6 route without ipv6 gateway", func(c *Config) { c.Routes = prefixes("2001:db8::/32") }},
		{"ipv4 route without ipv4 gateway", func(c *Config) {
			c.Addresses = prefixes("2001:db8:1::10/64")
			c.Gateways = addrs("2001:db8:1::1")
			c.Routes = prefixes("2001:db8:ff::/48", "192.168.0.0/16")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.mutate(&c)
			_, err := c.Normalize()
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Normalize(%+v) = %v, want ErrInvalidArgument", c, err)
			}
		})
	}
}

// Normalize has a value receiver and returns the canonical config; it
// should leave the caller's config alone.
func TestConfigNormalizeDoesNotModifyInput(t *testing.T) {
	routes := prefixes("10.1.2.3/16")
	c := Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", Addresses: prefixes("10.0.1.10/24"), Gateways: addrs("10.0.1.1"), Routes: routes}}
	if _, err := c.Normalize(); err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("10.1.2.3/16"); routes[0] != want {
		t.Fatalf("caller's route changed to %v, want %v", routes[0], want)
	}
	// The same config normalized concurrently must not race (go test -race).
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { _, _ = c.Normalize() })
	}
	wg.Wait()
}

func TestConfigGatewayAndSameSpec(t *testing.T) {
	c := Config{VPC: "vpc-a", Spec: enilink.Spec{MAC: "02:aa:bb:cc:dd:ee", MTU: 1500, Addresses: prefixes("10.0.1.10/24", "2001:db8:1::10/64"), Gateways: addrs("10.0.1.1", "2001:db8:1::1"), Routes: prefixes("192.168.0.0/16"), HostName: "ens5"}}
	if g, ok := c.Gateway(netip.MustParseAddr("10.9.9.9")); !ok || g != netip.MustParseAddr("10.0.1.1") {
		t.Errorf("Gateway(v4) = %v, %v", g, ok)
	}
	if g, ok := c.Gateway(netip.MustParseAddr("2001:db8::5")); !ok || g != netip.MustParseAddr("2001:db8:1::1") {
		t.Errorf("Gateway(v6) = %v, %v", g, ok)
	}
	if _, ok := (Config{Spec: enilink.Spec{Gateways: addrs("10.0.1.1")}}).Gateway(netip.MustParseAddr("::1")); ok {
		t.Error("Gateway(v6) found a gateway in a v4-only config")
	}

	clone := func() Config {
		o := c
		o.Addresses = append([]netip.Prefix(nil), c.Addresses...)
		o.Gateways = append([]netip.Addr(nil), c.Gateways...)
		o.Routes = append([]netip.Prefix(nil), c.Routes...)
		return o
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		same   bool
	}{
		{"identical", func(*Config) {}, true},
		{"other host name", func(o *Config) { o.HostName = "eth9" }, true},
		{"other MAC", func(o *Config) { o.MAC = "02:aa:bb:cc:dd:ef" }, false},
		{"other VPC", func(o *Config) { o.VPC = "vpc-b" }, false},
		{"other MTU", func(o *Config) { o.MTU = 9001 }, false},
		{"other address", func(o *Config) { o.Addresses[0] = netip.MustParsePrefix("10.0.1.11/24") }, false},
		{"fewer addresses", func(o *Config) { o.Addresses = o.Addresses[:1] }, false},
		{"other gateway", func(o *Config) { o.Gateways[0] = netip.MustParseAddr("10.0.1.2") }, false},
		{"no routes", func(o *Config) { o.Routes = nil }, false},
		{"other route", func(o *Config) { o.Routes[0] = netip.MustParsePrefix("172.16.0.0/12") }, false},
	} {
		o := clone()
		tc.mutate(&o)
		if got := c.SameSpec(o); got != tc.same {
			t.Errorf("%s: SameSpec = %v, want %v", tc.name, got, tc.same)
		}
		if got := o.SameSpec(c); got != tc.same {
			t.Errorf("%s: SameSpec is not symmetric", tc.name)
		}
	}
}

func TestParsePod(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want k8sname.Pod
		ok   bool
	}{
		{"default/nginx", k8sname.Pod{Namespace: "default", Name: "nginx"}, true},
		{"kube-system/coredns-5d78c9869d-x2v7q", k8sname.Pod{Namespace: "kube-system", Name: "coredns-5d78c9869d-x2v7q"}, true},
		{"a/b", k8sname.Pod{Namespace: "a", Name: "b"}, true},
		{"ns1/web.example.com", k8sname.Pod{Namespace: "ns1", Name: "web.example.com"}, true},
		{"0/0", k8sname.Pod{Namespace: "0", Name: "0"}, true},
		{strings.Repeat("n", 63) + "/" + strings.Repeat("p", 253), k8sname.Pod{Namespace: strings.Repeat("n", 63), Name: strings.Repeat("p", 253)}, true},
		{"", k8sname.Pod{}, false},
		{"nginx", k8sname.Pod{}, false},
		{"/nginx", k8sname.Pod{}, false},
		{"default/", k8sname.Pod{}, false},
		{"/", k8sname.Pod{}, false},
		{"Default/nginx", k8sname.Pod{}, false},
		{"default/Nginx", k8sname.Pod{}, false},
		{"default/nginx/extra", k8sname.Pod{}, false},
		{"-ns/pod", k8sname.Pod{}, false},
		{"ns-/pod", k8sname.Pod{}, false},
		{"ns.a/pod", k8sname.Pod{}, false},
		{"ns/pod-", k8sname.Pod{}, false},
		{"ns/.pod", k8sname.Pod{}, false},
		{"ns/pod_1", k8sname.Pod{}, false},
		{"ns /pod", k8sname.Pod{}, false},
		{strings.Repeat("n", 64) + "/pod", k8sname.Pod{}, false},
		{"ns/" + strings.Repeat("p", 254), k8sname.Pod{}, false},
	} {
		got, err := k8sname.ParsePod(tc.in)
		if tc.ok {
			if err != nil || got != tc.want {
				t.Errorf("k8sname.ParsePod(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			if err == nil && got.String() != tc.in {
				t.Errorf("k8sname.ParsePod(%q).String() = %q", tc.in, got.String())
			}
			continue
		}
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("k8sname.ParsePod(%q) = %+v, %v; want ErrInvalidArgument", tc.in, got, err)
		}
	}
}

func TestValidatePod(t *testing.T) {
	for _, tc := range []struct {
		pod k8sname.Pod
		ok  bool
	}{
		{k8sname.Pod{Namespace: "default", Name: "nginx"}, true},
		{k8sname.Pod{Namespace: "team-a", Name: "api-0"}, true},
		{k8sname.Pod{Namespace: "x", Name: "a.b-c.d"}, true},
		{k8sname.Pod{Namespace: "", Name: "nginx"}, false},
		{k8sname.Pod{Namespace: "default", Name: ""}, false},
		{k8sname.Pod{Namespace: "", Name: ""}, false},
		{k8sname.Pod{Namespace: "Default", Name: "nginx"}, false},
		{k8sname.Pod{Namespace: "default", Name: "NGINX"}, false},
		{k8sname.Pod{Namespace: "default", Name: "a/b"}, false},
		{k8sname.Pod{Namespace: "de/fault", Name: "nginx"}, false},
		{k8sname.Pod{Namespace: "default", Name: "nginx-"}, false},
		{k8sname.Pod{Namespace: "default", Name: "-nginx"}, false},
		{k8sname.Pod{Namespace: "default.svc", Name: "nginx"}, false},
		{k8sname.Pod{Namespace: strings.Repeat("a", 64), Name: "nginx"}, false},
	} {
		err := tc.pod.Validate()
		if tc.ok && err != nil {
			t.Errorf("%+v.Validate() = %v, want nil", tc.pod, err)
		}
		if !tc.ok && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%+v.Validate() = %v, want ErrInvalidArgument", tc.pod, err)
		}
	}
}

func TestLinkInfoQuiet(t *testing.T) {
	for _, tc := range []struct {
		l    LinkInfo
		name string
		want bool
	}{
		{LinkInfo{Name: "ens5"}, "ens5", true},
		{LinkInfo{Name: "ens5", Up: true}, "ens5", false},
		{LinkInfo{Name: "ens5", Addrs: 1}, "ens5", false},
		{LinkInfo{Name: "eth0"}, "ens5", false},
	} {
		if got := tc.l.Quiet(tc.name); got != tc.want {
			t.Errorf("%+v.Quiet(%q) = %v, want %v", tc.l, tc.name, got, tc.want)
		}
	}
}
