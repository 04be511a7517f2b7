package agentproto

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Hello is the guest's first frame of a session.
type Hello struct {
	ProtocolVersion int    `json:"protocolVersion"`
	AgentVersion    string `json:"agentVersion"`
}

// Request calls a method; Params is the method's JSON argument, if any.
type Request struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
}

// Response answers a Request: Result on success, else Error (and Code).
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
	Code   ErrorCode       `json:"code,omitempty"`
}

// ErrorCode classifies a failed request, so that the host can map it to its
// own error kinds.
type ErrorCode string

// Error codes.
const (
	CodeInvalidArgument    ErrorCode = "InvalidArgument"
	CodeNotFound           ErrorCode = "NotFound"
	CodeAlreadyExists      ErrorCode = "AlreadyExists"
	CodeFailedPrecondition ErrorCode = "FailedPrecondition"
	CodeUnavailable        ErrorCode = "Unavailable"
	CodeInternal           ErrorCode = "Internal"
)

// Methods. The comment gives params → result.
const (
	// MethodPing: none → PingResult.
	MethodPing = "Ping"
	// MethodConfigureNetwork: NetConfig → none.
	MethodConfigureNetwork = "ConfigureNetwork"
	// MethodExec: ExecSpec → ExecStarted, then stdio frames and Exit.
	MethodExec = "Exec"
	// MethodBlockDevices: none → []BlockDevice.
	MethodBlockDevices = "BlockDevices"
	// MethodShutdown: none → none; the guest powers off after answering.
	MethodShutdown = "Shutdown"
	// MethodSetIdentity: Identity → none.
	MethodSetIdentity = "SetIdentity"
)

// PingResult answers Ping.
type PingResult struct {
	ProtocolVersion int    `json:"protocolVersion"`
	AgentVersion    string `json:"agentVersion"`
	// UptimeSeconds is the guest kernel's uptime.
	UptimeSeconds float64 `json:"uptimeSeconds"`
}

// NetConfig is the guest's network: links found by MAC, renamed and
// addressed, then routes. Applying the same config again changes nothing.
type NetConfig struct {
	Interfaces []Interface `json:"interfaces"`
	Routes     []Route     `json:"routes,omitempty"`
}

// Interface is one guest NIC.
type Interface struct {
	// MAC finds the link.
	MAC string `json:"mac"`
	// FromMAC, when set, finds the link when none has MAC yet: that link
	// is given MAC (a VM template's clone has its template's card).
	FromMAC string `json:"fromMac,omitempty"`
	// Name, when set, is what the link is renamed to (e.g. "eth0").
	Name string `json:"name,omitempty"`
	// MTU, when not 0, is set on the link.
	MTU int `json:"mtu,omitempty"`
	// Addresses in CIDR form ("10.1.0.11/24", "fd00::b/64").
	Addresses []string `json:"addresses,omitempty"`
}

// Route is one main-table route.
type Route struct {
	// Dst in CIDR form; "" is the default route of Gateway's family, as
	// are "0.0.0.0/0" and "::/0".
	Dst string `json:"dst,omitempty"`
	// Gateway is the next hop; "" means Dst is on the link.
	Gateway string `json:"gateway,omitempty"`
	// Interface is the link's name after renaming; "" means the only
	// interface of the config.
	Interface string `json:"interface,omitempty"`
	// Scope is "link", "host" or "" (global).
	Scope string `json:"scope,omitempty"`
	// OnLink: Gateway is on the link although no address covers it.
	OnLink bool `json:"onLink,omitempty"`
	// Metric is the route's priority (0: the kernel's default).
	Metric int `json:"metric,omitempty"`
	// Src is the preferred source address.
	Src string `json:"src,omitempty"`
}

// Route scopes.
const (
	ScopeLink = "link"
	ScopeHost = "host"
)

// maxIfname is the longest Linux link name (IFNAMSIZ - 1).
const maxIfname = 15

// Validate checks c without touching the kernel.
func (c NetConfig) Validate() error {
	names := map[string]bool{}
	for i, ifc := range c.Interfaces {
		if _, err := net.ParseMAC(ifc.MAC); err != nil {
			return fmt.Errorf("interface %d: bad mac %q", i, ifc.MAC)
		}
		if _, err := net.ParseMAC(ifc.FromMAC); ifc.FromMAC != "" && err != nil {
			return fmt.Errorf("interface %d: bad from mac %q", i, ifc.FromMAC)
		}
		if len(ifc.Name) > maxIfname || strings.ContainsAny(ifc.Name, "/: \t\n\x00") || ifc.Name == "." || ifc.Name == ".." {
			return fmt.Errorf("interface %d: bad name %q", i, ifc.Name)
		}
		if ifc.MTU < 0 || ifc.MTU > 65535 || (ifc.MTU != 0 && ifc.MTU < 68) {
			return fmt.Errorf("interface %d: bad mtu %d", i, ifc.MTU)
		}
		for _, a := range ifc.Addresses {
			if _, err := netip.ParsePrefix(a); err != nil {
				return fmt.Errorf("interface %d: bad address %q: want CIDR form", i, a)
			}
		}
		if ifc.Name != "" {
			if names[ifc.Name] {
				return fmt.Errorf("interface %d: name %q used twice", i, ifc.Name)
			}
			names[ifc.Name] = true
		}
	}
	for i, r := range c.Routes {
		if _, _, err := r.Parse(); err != nil {
			return fmt.Errorf("route %d: %w", i, err)
		}
		switch r.Scope {
		case "", ScopeLink, ScopeHost:
		default:
			return fmt.Errorf("route %d: bad scope %q", i, r.Scope)
		}
		if r.Src != "" {
			if _, err := netip.ParseAddr(r.Src); err != nil {
				return fmt.Errorf("route %d: bad src %q", i, r.Src)
			}
		}
		if r.Metric < 0 {
			return fmt.Errorf("route %d: bad metric %d", i, r.Metric)
		}
		switch {
		case r.Interface == "" && len(c.Interfaces) != 1:
			return fmt.Errorf("route %d: no interface, and the config has %d", i, len(c.Interfaces))
		case r.Interface != "" && !names[r.Interface]:
			return fmt.Errorf("route %d: interface %q is not in the config", i, r.Interface)
		}
	}
	return nil
}

// Parse returns the route's destination (a default route of the right
// family when Dst is empty) and gateway (invalid when empty).
func (r Route) Parse() (dst netip.Prefix, gw netip.Addr, err error) {
	if r.Gateway != "" {
		if gw, err = netip.ParseAddr(r.Gateway); err != nil {
			return dst, gw, fmt.Errorf("bad gateway %q", r.Gateway)
		}
	}
	switch {
	case r.Dst != "":
		if dst, err = netip.ParsePrefix(r.Dst); err != nil {
			return dst, gw, fmt.Errorf("bad dst %q: want CIDR form", r.Dst)
		}
		dst = dst.Masked()
	case gw.Is6() && !gw.Is4In6():
		dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	case gw.IsValid():
		dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	default:
		return dst, gw, errors.New("default route needs a gateway, or dst 0.0.0.0/0 or ::/0")
	}
	if gw.IsValid() && gw.Is4() != dst.Addr().Is4() {
		return dst, gw, fmt.Errorf("gateway %s and dst %s differ in family", gw, dst)
	}
	return dst, gw, nil
}

// Identity is what makes one guest itself rather than any of the clones
// of the VM template it may have been restored from: those share memory
// state, so the host sends it on every start, cold or restored.
type Identity struct {
	// Hostname is 1 to 64 of [A-Za-z0-9.-], neither starting nor ending
	// with '-' or '.'.
	Hostname string `json:"hostname"`
	// MachineID is /etc/machine-id: 32 lowercase hex digits, not all 0.
	MachineID string `json:"machineId"`
	// Entropy, MinEntropy to MaxEntropy bytes from the host's CSPRNG, is
	// mixed into the guest kernel's pool (credited in full) before its
	// CRNG reseeds.
	Entropy []byte `json:"entropy"`
	// UnixNano is the host's wall clock when it sent the request; 0 leaves
	// the guest's clock alone.
	UnixNano int64 `json:"unixNano,omitempty"`
}

// Bounds of Identity.Entropy, in bytes.
const (
	MinEntropy = 32
	MaxEntropy = 512
)

// maxHostname is the longest Linux hostname (__NEW_UTS_LEN).
const maxHostname = 64

// Validate checks i. Errors name the field and its value (the entropy's
// length only: it is secret).
func (i Identity) Validate() error {
	h := i.Hostname
	switch {
	case len(h) == 0 || len(h) > maxHostname:
		return fmt.Errorf("hostname of %d bytes: want 1 to %d", len(h), maxHostname)
	case strings.IndexFunc(h, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.')
	}) >= 0:
		return fmt.Errorf("hostname %q: want only letters, digits, '-' and '.'", h)
	case strings.ContainsAny(h[:1], "-.") || strings.ContainsAny(h[len(h)-1:], "-."):
		return fmt.Errorf("hostname %q starts or ends with '-' or '.'", h)
	}
	m := i.MachineID
	switch {
	case len(m) != 32:
		return fmt.Errorf("machine id of %d bytes: want 32 lowercase hex digits", len(m))
	case strings.IndexFunc(m, func(r rune) bool { return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') }) >= 0:
		return fmt.Errorf("machine id %q: want 32 lowercase hex digits", m)
	case strings.Trim(m, "0") == "":
		return fmt.Errorf("machine id %q is all zeros", m)
	}
	if len(i.Entropy) < MinEntropy || len(i.Entropy) > MaxEntropy {
		return fmt.Errorf("entropy of %d bytes: want %d to %d", len(i.Entropy), MinEntropy, MaxEntropy)
	}
	if i.UnixNano < 0 {
		return fmt.Errorf("unix nano %d is before 1970", i.UnixNano)
	}
	return nil
}

// ExecSpec is a process to run in the guest.
type ExecSpec struct {
	Argv []string `json:"argv"`
	// Env is KEY=VALUE; PATH defaults to DefaultPath.
	Env []string `json:"env,omitempty"`
	// Dir defaults to "/".
	Dir string `json:"dir,omitempty"`
}

// DefaultPath is an exec's PATH when its Env has none.
const DefaultPath = "/bin:/sbin:/usr/bin:/usr/sbin"

// Validate checks s.
func (s ExecSpec) Validate() error {
	if len(s.Argv) == 0 || s.Argv[0] == "" {
		return errors.New("empty argv")
	}
	for _, a := range s.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("argv holds a NUL byte")
		}
	}
	for _, e := range s.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" || strings.IndexByte(e, 0) >= 0 {
			return fmt.Errorf("bad env entry %q: want KEY=VALUE", e)
		}
	}
	if strings.IndexByte(s.Dir, 0) >= 0 {
		return errors.New("dir holds a NUL byte")
	}
	return nil
}

// ExecStarted answers a successful Exec.
type ExecStarted struct {
	PID int `json:"pid"`
}

// ExitStatus is how an exec ended.
type ExitStatus struct {
	// Code is the exit code, or 128+signal number.
	Code int `json:"code"`
	// Signal names the signal that killed the process ("SIGKILL").
	Signal string `json:"signal,omitempty"`
}

// Signal is a FrameSignal payload.
type Signal struct {
	// Signal is a name ("SIGTERM" or "TERM") or a number ("15").
	Signal string `json:"signal"`
}

// BlockDevice is a guest virtio-blk disk.
type BlockDevice struct {
	Name      string `json:"name"` // "vda"
	Serial    string `json:"serial,omitempty"`
	SizeBytes uint64 `json:"sizeBytes"`
	ReadOnly  bool   `json:"readOnly,omitempty"`
}
