package mapper

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestParseMapOptions(t *testing.T) {
	for _, tc := range []struct {
		in         string
		krbd, nbd  []string
		unmap      bool
		wantErrSub string
	}{
		{in: ""},
		{in: "krbd:lock_on_read,queue_depth=1024", krbd: []string{"lock_on_read", "queue_depth=1024"}},
		{in: "krbd:ms_mode=secure;nbd:try-netlink,io-timeout=30", krbd: []string{"ms_mode=secure"}, nbd: []string{"try-netlink", "io-timeout=30"}},
		{in: " nbd: timeout=60 ; krbd:noshare ", krbd: []string{"noshare"}, nbd: []string{"timeout=60"}},
		// ceph-csi: options without a prefix are krbd's.
		{in: "lock_on_read,alloc_size=65536", krbd: []string{"lock_on_read", "alloc_size=65536"}},
		{in: "krbd:force", unmap: true, krbd: []string{"force"}},
		{in: "nbd:force", unmap: true, nbd: []string{"force"}},

		{in: "krbd:a;krbd:b", wantErrSub: "given twice"},
		{in: "krbd:a,a", wantErrSub: "given twice"},
		{in: "ceph-fuse:x", wantErrSub: "want krbd or nbd"},
		{in: "krbd:", wantErrSub: "empty option"},
		{in: "krbd:a,,b", wantErrSub: "empty option"},
		{in: "krbd:name=admin", wantErrSub: "set by the driver"},
		{in: "krbd:secret=AQB", wantErrSub: "set by the driver"},
		{in: "nbd:keyfile=/etc/passwd", wantErrSub: "set by the driver"},
		{in: "nbd:device=/dev/nbd3", wantErrSub: "set by the driver"},
		{in: "nbd:m=10.0.0.1", wantErrSub: "set by the driver"},
		{in: "krbd:ms_mode=fast", wantErrSub: "ms_mode"},
		{in: "krbd:a b", wantErrSub: "want name"},
		{in: "krbd:a=", wantErrSub: "want name"},
		{in: "krbd:--x", wantErrSub: "want name"},
		{in: "krbd:noshare", unmap: true, wantErrSub: "only force"},
	} {
		got, err := ParseMapOptions(tc.in, tc.unmap)
		if tc.wantErrSub != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErrSub) || !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("ParseMapOptions(%q) = %+v, %v; want an InvalidArgument error with %q", tc.in, got, err, tc.wantErrSub)
			}
			continue
		}
		if err != nil || !slices.Equal(got.Krbd, tc.krbd) || !slices.Equal(got.NBD, tc.nbd) {
			t.Errorf("ParseMapOptions(%q) = %+v, %v; want krbd %v, nbd %v", tc.in, got, err, tc.krbd, tc.nbd)
		}
	}
	o, _ := ParseMapOptions("krbd:a;nbd:b", false)
	if !slices.Equal(o.For(KRBD), []string{"a"}) || !slices.Equal(o.For(RBDNBD), []string{"b"}) || o.For(Fuse) != nil {
		t.Errorf("For: %+v", o)
	}
}

func FuzzParseMapOptions(f *testing.F) {
	f.Add("krbd:lock_on_read,queue_depth=1024;nbd:try-netlink", false)
	f.Add("krbd:force", true)
	f.Fuzz(func(t *testing.T, s string, unmap bool) {
		o, err := ParseMapOptions(s, unmap)
		if err != nil {
			return
		}
		for _, opt := range append(o.Krbd, o.NBD...) {
			name, _, _ := strings.Cut(opt, "=")
			if opt == "" || strings.ContainsAny(opt, " \t\n,;") || !validOptionName(name) {
				t.Fatalf("accepted option %q from %q", opt, s)
			}
		}
		for _, opt := range o.Krbd {
			name, _, _ := strings.Cut(opt, "=")
			if slices.Contains(optionOwned[KRBD], name) {
				t.Fatalf("accepted driver-owned option %q", opt)
			}
		}
	})
}

func TestNBDFlags(t *testing.T) {
	got := nbdFlags(withDefaults(nbdDefaults, []string{"reattach-timeout=60", "io-timeout=30"}))
	want := []string{"--try-netlink", "--reattach-timeout", "60", "--io-timeout", "30"}
	if !slices.Equal(got, want) {
		t.Errorf("nbdFlags = %v, want %v", got, want)
	}
}

// The kernel client gets the addresses of the protocol it will speak.
func TestKrbdAddresses(t *testing.T) {
	both := []MonAddr{{V2: "10.0.0.1:3300", V1: "10.0.0.1:6789"}, {V2: "10.0.0.2:3300", V1: "10.0.0.2:6789"}}
	v2only := []MonAddr{{V2: "10.0.0.1:3300"}, {V2: "10.0.0.2:3300"}}
	v1only := []MonAddr{{V1: "10.0.0.1:6789"}}
	for _, tc := range []struct {
		name   string
		mons   []MonAddr
		opts   []string
		addrs  string
		msMode string
		err    bool
	}{
		{name: "both, no ms_mode: msgr1, which every kernel speaks", mons: both, addrs: "10.0.0.1:6789,10.0.0.2:6789"},
		{name: "msgr2 only: msgr2 with prefer-crc", mons: v2only, addrs: "10.0.0.1:3300,10.0.0.2:3300", msMode: "ms_mode=prefer-crc"},
		{name: "msgr1 only", mons: v1only, addrs: "10.0.0.1:6789"},
		{name: "ms_mode=secure asks for msgr2", mons: both, opts: []string{"ms_mode=secure"}, addrs: "10.0.0.1:3300,10.0.0.2:3300"},
		{name: "ms_mode=prefer-crc", mons: v2only, opts: []string{"queue_depth=128", "ms_mode=prefer-crc"}, addrs: "10.0.0.1:3300,10.0.0.2:3300"},
		{name: "ms_mode=legacy asks for msgr1", mons: both, opts: []string{"ms_mode=legacy"}, addrs: "10.0.0.1:6789,10.0.0.2:6789"},
		{name: "ms_mode=legacy without msgr1", mons: v2only, opts: []string{"ms_mode=legacy"}, err: true},
		{name: "ms_mode=crc without msgr2", mons: v1only, opts: []string{"ms_mode=crc"}, err: true},
		{name: "no monitors", err: true},
	} {
		addrs, mode, err := KrbdAddresses(tc.mons, tc.opts)
		if tc.err {
			if err == nil {
				t.Errorf("%s: %v %q, want an error", tc.name, addrs, mode)
			}
			continue
		}
		if err != nil || strings.Join(addrs, ",") != tc.addrs || mode != tc.msMode {
			t.Errorf("%s: %v %q %v; want %s %q", tc.name, addrs, mode, err, tc.addrs, tc.msMode)
		}
	}
}

// The cluster config's forms, read as Ceph reads them (the fallback when
// the monitor map cannot be read).
func TestConfigMonitor(t *testing.T) {
	for in, want := range map[string]MonAddr{
		"v2:10.0.0.1:3300":   {V2: "10.0.0.1:3300"},
		"v1:10.0.0.1:6789":   {V1: "10.0.0.1:6789"},
		"10.0.0.1:3300":      {V2: "10.0.0.1:3300"},
		"10.0.0.1:6789":      {V1: "10.0.0.1:6789"},
		"[fd00::1]:6789":     {V1: "[fd00::1]:6789"},
		"mon.example:20000":  {V2: "mon.example:20000"},
		"v2:[fd00::1]:3300":  {V2: "[fd00::1]:3300"},
		"v1:mon.example:789": {V1: "mon.example:789"},
	} {
		if got := ConfigMonitor(in); got != want {
			t.Errorf("ConfigMonitor(%q) = %+v, want %+v", in, got, want)
		}
	}
}
