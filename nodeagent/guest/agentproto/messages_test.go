package agentproto

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestNetConfigValidate(t *testing.T) {
	eth0 := Interface{MAC: "02:00:00:00:00:01", Name: "eth0", MTU: 9001, Addresses: []string{"10.1.0.11/24", "fd00::b/64"}}
	for _, tc := range []struct {
		name string
		cfg  NetConfig
		ok   bool
	}{
		{"empty", NetConfig{}, true},
		{"one interface, default route", NetConfig{Interfaces: []Interface{eth0}, Routes: []Route{{Gateway: "10.1.0.1"}}}, true},
		{"v6 default", NetConfig{Interfaces: []Interface{eth0}, Routes: []Route{{Gateway: "fd00::1", Interface: "eth0"}}}, true},
		{"link route", NetConfig{Interfaces: []Interface{eth0}, Routes: []Route{{Dst: "169.254.1.1/32", Scope: ScopeLink}, {Dst: "0.0.0.0/0", Gateway: "169.254.1.1", OnLink: true}}}, true},
		{"default without gateway", NetConfig{Interfaces: []Interface{eth0}, Routes: []Route{{Dst: "0.0.0.0/0"}}}, true},
		{"bad mac", NetConfig{Interfaces: []Interface{{MAC: "nope"}}}, false},
		{"long name", NetConfig{Interfaces: []Interface{{MAC: eth0.MAC, Name: "a-very-long-name0"}}}, false},
		{"slash in name", NetConfig{Interfaces: []Interface{{MAC: eth0.MAC, Name: "a/b"}}}, false},
		{"tiny mtu", NetConfig{Interfaces: []Interface{{MAC: eth0.MAC, MTU: 10}}}, false},
		{"address without prefix", NetConfig{Interfaces: []Interface{{MAC: eth0.MAC, Addresses: []string{"10.1.0.11"}}}}, false},
		{"name twice", NetConfig{Interfaces: []Interface{eth0, eth0}}, false},
		{"route without gateway or dst", NetConfig{Interfaces: []Interface{eth0}, Routes: []Route{{}}}, false},
		{"mixed families", NetConfig{Interfaces: []Interface{eth0}, Routes: []Route{{Dst: "10.0.0.0/8", Gateway: "fd00::1"}}}, false},
		{"unknown interface", NetConfig{Interfaces: []Interface{eth0}, Routes: []Route{{Gateway: "10.1.0.1", Interface: "eth1"}}}, false},
		{"no interface to pick", NetConfig{Routes: []Route{{Gateway: "10.1.0.1"}}}, false},
		{"bad scope", NetConfig{Interfaces: []Interface{eth0}, Routes: []Route{{Gateway: "10.1.0.1", Scope: "site"}}}, false},
		{"bad src", NetConfig{Interfaces: []Interface{eth0}, Routes: []Route{{Gateway: "10.1.0.1", Src: "x"}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestRouteParse(t *testing.T) {
	for _, tc := range []struct {
		r       Route
		dst, gw string
	}{
		{Route{Gateway: "10.1.0.1"}, "0.0.0.0/0", "10.1.0.1"},
		{Route{Gateway: "fd00::1"}, "::/0", "fd00::1"},
		{Route{Dst: "::/0"}, "::/0", "invalid IP"},
		{Route{Dst: "10.2.3.4/16", Gateway: "10.1.0.1"}, "10.2.0.0/16", "10.1.0.1"},
	} {
		dst, gw, err := tc.r.Parse()
		if err != nil || dst.String() != tc.dst || gw.String() != tc.gw {
			t.Errorf("%+v: got %s %s %v, want %s %s", tc.r, dst, gw, err, tc.dst, tc.gw)
		}
	}
}

func TestExecSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		spec ExecSpec
		ok   bool
	}{
		{ExecSpec{Argv: []string{"sh", "-c", "true"}, Env: []string{"A=1", "B="}}, true},
		{ExecSpec{}, false},
		{ExecSpec{Argv: []string{""}}, false},
		{ExecSpec{Argv: []string{"a\x00b"}}, false},
		{ExecSpec{Argv: []string{"sh"}, Env: []string{"NOEQUALS"}}, false},
		{ExecSpec{Argv: []string{"sh"}, Env: []string{"=x"}}, false},
	} {
		if err := tc.spec.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: Validate() = %v, want ok=%v", tc.spec, err, tc.ok)
		}
	}
}

// The JSON field names are the wire format: changing one is a protocol
// change.
func TestJSONNames(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{Hello{ProtocolVersion: 1, AgentVersion: "x"}, `{"protocolVersion":1,"agentVersion":"x"}`},
		{Response{Error: "boom", Code: CodeNotFound}, `{"error":"boom","code":"NotFound"}`},
		{ExitStatus{Code: 137, Signal: "SIGKILL"}, `{"code":137,"signal":"SIGKILL"}`},
		{BlockDevice{Name: "vda", Serial: "vol1", SizeBytes: 512, ReadOnly: true}, `{"name":"vda","serial":"vol1","sizeBytes":512,"readOnly":true}`},
		{Route{Dst: "0.0.0.0/0", Gateway: "10.1.0.1", Interface: "eth0", OnLink: true}, `{"dst":"0.0.0.0/0","gateway":"10.1.0.1","interface":"eth0","onLink":true}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil || string(b) != tc.want {
			t.Errorf("%T: %s, %v; want %s", tc.v, b, err, tc.want)
		}
		back := reflect.New(reflect.TypeOf(tc.v))
		if err := json.Unmarshal(b, back.Interface()); err != nil || !reflect.DeepEqual(back.Elem().Interface(), tc.v) {
			t.Errorf("%T: round trip gave %+v, %v", tc.v, back.Elem().Interface(), err)
		}
	}
}

// FuzzNetConfig: whatever JSON the host sends, Validate does not panic,
// and a config it accepts has routes that parse.
func FuzzNetConfig(f *testing.F) {
	f.Add([]byte(`{"interfaces":[{"mac":"02:00:00:00:00:01","name":"eth0","mtu":1500,"addresses":["10.1.0.11/24"]}],"routes":[{"gateway":"10.1.0.1"}]}`))
	f.Add([]byte(`{"interfaces":[{"mac":"02:00:00:00:00:01"}],"routes":[{"dst":"::/0","scope":"link"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var cfg NetConfig
		if json.Unmarshal(data, &cfg) != nil {
			return
		}
		if cfg.Validate() != nil {
			return
		}
		for _, r := range cfg.Routes {
			dst, _, err := r.Parse()
			if err != nil || !dst.IsValid() {
				t.Fatalf("valid config, bad route %+v: %v", r, err)
			}
		}
	})
}

func TestIdentityValidate(t *testing.T) {
	ok := Identity{Hostname: "pod-123.sandbox", MachineID: "0123456789abcdef0123456789abcdef", Entropy: make([]byte, 32), UnixNano: 1}
	with := func(f func(*Identity)) Identity { i := ok; f(&i); return i }
	for _, tc := range []struct {
		name string
		id   Identity
		want string // in the error; "" for none
	}{
		{"valid", ok, ""},
		{"no clock", with(func(i *Identity) { i.UnixNano = 0 }), ""},
		{"longest", with(func(i *Identity) { i.Hostname = strings.Repeat("a", 64); i.Entropy = make([]byte, MaxEntropy) }), ""},
		{"one-char hostname", with(func(i *Identity) { i.Hostname = "a" }), ""},
		{"no hostname", with(func(i *Identity) { i.Hostname = "" }), "hostname of 0 bytes"},
		{"long hostname", with(func(i *Identity) { i.Hostname = strings.Repeat("a", 65) }), "hostname of 65 bytes"},
		{"underscore", with(func(i *Identity) { i.Hostname = "a_b" }), `hostname "a_b"`},
		{"NUL", with(func(i *Identity) { i.Hostname = "a\x00b" }), "hostname"},
		{"bad UTF-8", with(func(i *Identity) { i.Hostname = "a\xffb" }), "hostname"},
		{"leading dash", with(func(i *Identity) { i.Hostname = "-a" }), `hostname "-a"`},
		{"trailing dot", with(func(i *Identity) { i.Hostname = "a." }), `hostname "a."`},
		{"lone dot", with(func(i *Identity) { i.Hostname = "." }), `hostname "."`},
		{"short machine id", with(func(i *Identity) { i.MachineID = "0123" }), "machine id of 4 bytes"},
		{"non-hex machine id", with(func(i *Identity) { i.MachineID = "0123456789abcdef0123456789abcdeg" }), `machine id "0123456789abcdef0123456789abcdeg"`},
		{"uppercase machine id", with(func(i *Identity) { i.MachineID = "0123456789ABCDEF0123456789ABCDEF" }), `machine id "0123456789ABCDEF0123456789ABCDEF"`},
		{"zero machine id", with(func(i *Identity) { i.MachineID = strings.Repeat("0", 32) }), "all zeros"},
		{"no entropy", with(func(i *Identity) { i.Entropy = nil }), "entropy of 0 bytes"},
		{"little entropy", with(func(i *Identity) { i.Entropy = make([]byte, MinEntropy-1) }), "entropy of 31 bytes"},
		{"oversize entropy", with(func(i *Identity) { i.Entropy = make([]byte, MaxEntropy+1) }), "entropy of 513 bytes"},
		{"negative clock", with(func(i *Identity) { i.UnixNano = -1 }), "unix nano -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.id.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

// The wire format of Identity: entropy is base64.
func TestIdentityJSON(t *testing.T) {
	id := Identity{Hostname: "h", MachineID: "0123456789abcdef0123456789abcdef", Entropy: []byte{1, 2, 3}, UnixNano: 5}
	want := `{"hostname":"h","machineId":"0123456789abcdef0123456789abcdef","entropy":"AQID","unixNano":5}`
	b, err := json.Marshal(id)
	if err != nil || string(b) != want {
		t.Fatalf("%s, %v; want %s", b, err, want)
	}
	var back Identity
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, id) {
		t.Fatalf("round trip gave %+v, %v", back, err)
	}
}

// FuzzIdentity: whatever JSON the host sends, Validate does not panic, and
// an identity it accepts keeps the documented bounds.
func FuzzIdentity(f *testing.F) {
	f.Add([]byte(`{"hostname":"pod-1","machineId":"0123456789abcdef0123456789abcdef","entropy":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","unixNano":1}`))
	f.Add([]byte(`{"hostname":"-","machineId":"","entropy":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var id Identity
		if json.Unmarshal(data, &id) != nil || id.Validate() != nil {
			return
		}
		if len(id.Hostname) < 1 || len(id.Hostname) > 64 || len(id.MachineID) != 32 || len(id.Entropy) < MinEntropy || len(id.Entropy) > MaxEntropy || id.UnixNano < 0 {
			t.Fatalf("accepted %+v", id)
		}
	})
}
