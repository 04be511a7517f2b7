package mapper

import (
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// MapOptions are a StorageClass's mapOptions (or unmapOptions) in
// ceph-csi's syntax: "krbd:opt1,opt2;nbd:opt3". Options without a mapper
// prefix are krbd's, as in ceph-csi. rbd-fuse takes none.
type MapOptions struct {
	Krbd []string
	NBD  []string
}

// For returns the options of one mapper.
func (o MapOptions) For(mapper string) []string {
	switch mapper {
	case KRBD:
		return o.Krbd
	case RBDNBD:
		return o.NBD
	}
	return nil
}

// optionOwned are option names the mapper sets itself from the target
// (credentials, monitors, the device, read-only); a StorageClass may not
// set them.
var optionOwned = map[string][]string{
	KRBD: {"name", "secret", "key", "mon_addr", "fsid"},
	// rbd-nbd flags, without the leading "--".
	RBDNBD: {"id", "name", "user", "keyfile", "keyring", "key", "m", "mon-host", "mon_host", "c", "conf", "device", "cookie", "show-cookie", "read-only", "format"},
}

// msModes are the kernel client's ms_mode values.
var msModes = []string{"legacy", "crc", "secure", "prefer-crc", "prefer-secure"}

// ParseMapOptions parses mapOptions; unmap selects the stricter rules of
// unmapOptions (krbd knows only "force" there). Errors wrap
// errdefs.ErrInvalidArgument.
func ParseMapOptions(s string, unmap bool) (MapOptions, error) {
	var o MapOptions
	what := "mapOptions"
	if unmap {
		what = "unmapOptions"
	}
	bad := func(f string, a ...any) (MapOptions, error) {
		return MapOptions{}, fmt.Errorf("%s %q: %s: %w", what, s, fmt.Sprintf(f, a...), errdefs.ErrInvalidArgument)
	}
	seen := map[string]bool{}
	for _, group := range strings.Split(s, ";") {
		group = strings.TrimSpace(group)
		if group == "" {
			continue
		}
		mapper, list, ok := strings.Cut(group, ":")
		if !ok || strings.Contains(mapper, ",") || strings.Contains(mapper, "=") {
			mapper, list = KRBD, group // no prefix: krbd's, as in ceph-csi
		}
		mapper = strings.TrimSpace(mapper)
		if mapper == "nbd" {
			mapper = RBDNBD
		}
		if mapper != KRBD && mapper != RBDNBD {
			return bad("mapper %q: want krbd or nbd", mapper)
		}
		if seen[mapper] {
			return bad("options for %s given twice", mapper)
		}
		seen[mapper] = true
		var opts []string
		names := map[string]bool{}
		for _, opt := range strings.Split(list, ",") {
			opt = strings.TrimSpace(opt)
			if opt == "" {
				return bad("an empty option")
			}
			name, val, hasVal := strings.Cut(opt, "=")
			if !validOptionName(name) || (hasVal && (val == "" || strings.ContainsAny(val, " \t\n;,"))) {
				return bad("option %q: want name or name=value (letters, digits, '_', '-')", opt)
			}
			if slices.Contains(optionOwned[mapper], name) {
				return bad("option %q is set by the driver", name)
			}
			if names[name] {
				return bad("option %q given twice", name)
			}
			names[name] = true
			if mapper == KRBD && name == "ms_mode" && !slices.Contains(msModes, val) {
				return bad("ms_mode %q: want one of %v", val, msModes)
			}
			if unmap && mapper == KRBD && opt != "force" {
				return bad("krbd unmap option %q: only force", opt)
			}
			opts = append(opts, opt)
		}
		if mapper == KRBD {
			o.Krbd = opts
		} else {
			o.NBD = opts
		}
	}
	return o, nil
}

func validOptionName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return n[0] != '-'
}

// nbdFlags turns rbd-nbd options ("try-netlink", "io-timeout=30") into its
// flags ("--try-netlink", "--io-timeout", "30").
func nbdFlags(opts []string) []string {
	var out []string
	for _, o := range opts {
		name, val, ok := strings.Cut(o, "=")
		out = append(out, "--"+name)
		if ok {
			out = append(out, val)
		}
	}
	return out
}

// withDefaults returns defaults with every option whose name opts also
// sets replaced, then the rest of opts.
func withDefaults(defaults, opts []string) []string {
	name := func(o string) string { n, _, _ := strings.Cut(o, "="); return n }
	var out []string
	for _, d := range defaults {
		if !slices.ContainsFunc(opts, func(o string) bool { return name(o) == name(d) }) {
			out = append(out, d)
		}
	}
	return append(out, opts...)
}

// KrbdAddresses chooses the monitor addresses the kernel client is given
// and the ms_mode option that goes with them. The kernel client speaks
// msgr1 unless ms_mode asks for msgr2 (crc, secure, prefer-crc,
// prefer-secure; kernel 5.11 and later), and it must be given addresses
// of the protocol it speaks:
//
//   - ms_mode=legacy: the msgr1 addresses;
//   - another ms_mode: the msgr2 addresses;
//   - no ms_mode: the msgr1 addresses when the cluster runs msgr1 (every
//     kernel speaks it), else the msgr2 ones with ms_mode=prefer-crc
//     added.
//
// opts are the krbd map options; the second result is the ms_mode option
// to add ("" when opts set it or none is needed).
func KrbdAddresses(mons []MonAddr, opts []string) (addrs []string, msMode string, err error) {
	mode := ""
	for _, o := range opts {
		if v, ok := strings.CutPrefix(o, "ms_mode="); ok {
			mode = v
		}
	}
	var v1, v2 []string
	for _, m := range mons {
		if m.V1 != "" {
			v1 = append(v1, m.V1)
		}
		if m.V2 != "" {
			v2 = append(v2, m.V2)
		}
	}
	switch {
	case mode == "legacy" || (mode == "" && len(v1) > 0):
		if len(v1) == 0 {
			return nil, "", fmt.Errorf("ms_mode=legacy, but the monitors %v run no msgr1", mons)
		}
		return v1, "", nil
	case mode == "":
		if len(v2) == 0 {
			return nil, "", fmt.Errorf("no monitor address in %v", mons)
		}
		return v2, "ms_mode=prefer-crc", nil
	default:
		if len(v2) == 0 {
			return nil, "", fmt.Errorf("ms_mode=%s needs msgr2, but the monitors %v run only msgr1", mode, mons)
		}
		return v2, "", nil
	}
}

// ConfigMonitor reads a monitor as the cluster config gives it ("v2:ip:port",
// "v1:ip:port" or a bare "ip:port", which is msgr2 unless it is on the
// msgr1 port 6789, as Ceph reads a bare address): the fallback when the
// cluster's monitor map cannot be read.
func ConfigMonitor(m string) MonAddr {
	if a, ok := strings.CutPrefix(m, "v2:"); ok {
		return MonAddr{V2: a}
	}
	if a, ok := strings.CutPrefix(m, "v1:"); ok {
		return MonAddr{V1: a}
	}
	if _, port, err := net.SplitHostPort(m); err == nil {
		if p, _ := strconv.Atoi(port); p == 6789 {
			return MonAddr{V1: m}
		}
	}
	return MonAddr{V2: m}
}
