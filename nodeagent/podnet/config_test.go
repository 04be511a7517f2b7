package podnet

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func validConfig() Config {
	return Config{
		Interface: "eth0", MAC: "02:00:00:00:00:01", MTU: 1500, Tap: "tap0",
		Addresses: []string{"10.9.0.11/24", "fd00:9::11/64"},
		Routes: []Route{
			{Dst: "169.254.1.1/32", Scope: ScopeLink},
			{Gateway: "10.9.0.1"},
			{Dst: "172.16.0.0/12", Gateway: "169.254.1.1", OnLink: true, Metric: 100, Src: "10.9.0.11"},
			{Gateway: "fe80::1", Metric: 1024},
			{Dst: "::/0", Metric: 2048},
		},
	}
}

func TestValidate(t *testing.T) {
	if _, err := validConfig().validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"no interface", func(c *Config) { c.Interface = "" }},
		{"long tap name", func(c *Config) { c.Tap = "tap-of-sixteen-b" }},
		{"slash in name", func(c *Config) { c.Tap = "tap/0" }},
		{"tap is the interface", func(c *Config) { c.Tap = c.Interface }},
		{"no MAC", func(c *Config) { c.MAC = "" }},
		{"long MAC", func(c *Config) { c.MAC = "02:00:00:00:00:00:00:01" }},
		{"MTU 0", func(c *Config) { c.MTU = 0 }},
		{"MTU too big", func(c *Config) { c.MTU = 65536 }},
		{"bare address", func(c *Config) { c.Addresses = []string{"10.9.0.11"} }},
		{"mapped address", func(c *Config) { c.Addresses = []string{"::ffff:10.9.0.11/120"} }},
		{"zoned address", func(c *Config) { c.Addresses = []string{"fe80::1%eth0/64"} }},
		{"default without gateway", func(c *Config) { c.Routes = []Route{{}} }},
		{"bad destination", func(c *Config) { c.Routes = []Route{{Dst: "10.0.0.0", Gateway: "10.9.0.1"}} }},
		{"bad gateway", func(c *Config) { c.Routes = []Route{{Gateway: "gw"}} }},
		{"gateway of another family", func(c *Config) { c.Routes = []Route{{Dst: "10.0.0.0/8", Gateway: "fd00::1"}} }},
		{"unknown scope", func(c *Config) { c.Routes = []Route{{Dst: "10.0.0.0/8", Scope: "site"}} }},
		{"onlink without gateway", func(c *Config) { c.Routes = []Route{{Dst: "10.0.0.0/8", OnLink: true}} }},
		{"negative metric", func(c *Config) { c.Routes = []Route{{Gateway: "10.9.0.1", Metric: -1}} }},
		{"source of another family", func(c *Config) { c.Routes = []Route{{Gateway: "10.9.0.1", Src: "fd00::1"}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.edit(&c)
			if _, err := c.validate(); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("validate = %v, want invalid argument", err)
			}
		})
	}
}

func TestRouteRoundTrip(t *testing.T) {
	for _, tc := range []struct{ in, want Route }{
		{Route{Gateway: "10.9.0.1"}, Route{Gateway: "10.9.0.1"}},
		{Route{Dst: "0.0.0.0/0", Gateway: "10.9.0.1"}, Route{Gateway: "10.9.0.1"}},
		{Route{Dst: "::/0"}, Route{Dst: "::/0"}},
		{Route{Dst: "10.1.2.3/16", Scope: ScopeLink}, Route{Dst: "10.1.0.0/16", Scope: ScopeLink}},
		{Route{Dst: "fd00::/8", Gateway: "fe80::1", Metric: 5, Src: "fd00::2"}, Route{Dst: "fd00::/8", Gateway: "fe80::1", Metric: 5, Src: "fd00::2"}},
	} {
		nr, err := tc.in.toNetlink()
		if err != nil {
			t.Errorf("%+v: %v", tc.in, err)
			continue
		}
		got, err := routeFromNetlink(nr)
		if err != nil || got != tc.want {
			t.Errorf("%+v came back as %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestSortRoutes(t *testing.T) {
	rs := []Route{{Gateway: "10.0.0.1"}, {Dst: "10.0.0.1/32", Scope: ScopeLink}, {Dst: "1.0.0.0/8", Gateway: "10.0.0.1"}, {Dst: "::/0"}}
	sortRoutes(rs)
	want := []Route{{Dst: "10.0.0.1/32", Scope: ScopeLink}, {Dst: "::/0"}, {Gateway: "10.0.0.1"}, {Dst: "1.0.0.0/8", Gateway: "10.0.0.1"}}
	if !reflect.DeepEqual(rs, want) {
		t.Errorf("sorted %+v, want %+v", rs, want)
	}
}

// FuzzConfig feeds Teardown's and Resume's parser what a caller may have
// stored: it must not panic, and a valid route must keep its meaning
// through the kernel's form and back.
func FuzzConfig(f *testing.F) {
	b, _ := json.Marshal(validConfig())
	f.Add(b)
	f.Add([]byte(`{"interface":"eth0","mac":"02:00:00:00:00:01","mtu":9001,"tap":"t","routes":[{"dst":"1.2.3.4/33"}]}`))
	f.Add([]byte(`{"interface":"eth0","mac":"02:00:00:00:00:01","mtu":1500,"tap":"t","routes":[{"dst":"::ffff:1.2.3.4/128","gateway":"1.2.3.4"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Config
		if json.Unmarshal(data, &c) != nil {
			return
		}
		p, err := c.validate()
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("validate error %v is not invalid argument", err)
			}
			return
		}
		if len(p.addrs) != len(c.Addresses) || len(p.routes) != len(c.Routes) {
			t.Fatalf("plan %+v lost parts of %+v", p, c)
		}
		for i, nr := range p.routes {
			r, err := routeFromNetlink(nr)
			if err != nil {
				t.Fatalf("route %+v: back from the kernel's form: %v", c.Routes[i], err)
			}
			nr2, err := r.toNetlink()
			if err != nil {
				t.Fatalf("route %+v came back as %+v, which does not parse: %v", c.Routes[i], r, err)
			}
			if !reflect.DeepEqual(nr2, nr) {
				t.Fatalf("route %+v: %+v became %+v", c.Routes[i], nr, nr2)
			}
		}
	})
}
