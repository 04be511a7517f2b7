// Package eni keeps the node's ENI inventory: which ENIs the control plane
// attached to the node, which pod each one is assigned to, and which pod
// sandbox holds it now. It persists its state atomically and reconciles it
// with the links that really exist. It knows nothing of gRPC.
package eni

import (
	"fmt"
	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"net"
	"net/netip"
	"regexp"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

// Config is what the control plane tells the agent about one ENI: its VPC
// and what its link looks like in a pod (the same Spec cni-eni applies).
// Spec.HostName is the link's name in the node namespace; the agent fills
// it in at registration and restores it on detach.
type Config struct {
	VPC string `json:"vpc"`
	enilink.Spec
}

// State is where an ENI is in its life on this node.
type State string

const (
	StateFree      State = "free"
	StateAttaching State = "attaching"
	StateAttached  State = "attached"
	StateMissing   State = "missing"
)

// Assignment binds a pod to one ENI (MAC) or to a VPC's pool (VPC).
type Assignment struct {
	Pod k8sname.Pod `json:"pod"`
	MAC string      `json:"mac,omitempty"`
	VPC string      `json:"vpc,omitempty"`
}

// AttachmentKey identifies a CNI attachment, as in cni.dev/valid-attachments.
type AttachmentKey struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifname"`
}

// Attachment records that one pod sandbox holds one ENI.
type Attachment struct {
	AttachmentKey
	Netns     string      `json:"netns"`
	Pod       k8sname.Pod `json:"pod"`
	MAC       string      `json:"mac"`
	Confirmed bool        `json:"confirmed"`
	Created   time.Time   `json:"created"`
	// Link identifies the ENI's link in the pod's namespace, as ADD saw it
	// there; set by Confirm. DEL moves back only the link it describes.
	Link *enilink.Identity `json:"link,omitempty"`
}

// ENI is the inventory's view of one ENI.
type ENI struct {
	Config
	State       State
	AssignedPod *k8sname.Pod
	Attachment  *Attachment
}

// Pool counts the ENIs of one VPC.
type Pool struct {
	VPC      string
	Free     int
	Attached int
	Missing  int
	// Pending counts the pods assigned to the VPC (or to one of its ENIs)
	// that hold no ENI yet: their next ADD needs a free one.
	Pending int
}

var (
	vpcRe = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$`)
)

// NormalizeMAC parses a MAC address and returns its canonical lower-case
// colon form.
func NormalizeMAC(s string) (string, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return "", fmt.Errorf("invalid MAC %q: %w", s, errdefs.ErrInvalidArgument)
	}
	return hw.String(), nil
}

// ValidateVPC checks a VPC name.
func ValidateVPC(v string) error {
	if !vpcRe.MatchString(v) {
		return fmt.Errorf("invalid VPC name %q (letters, digits, '.', '_', '-'; at most 63): %w", v, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Normalize validates c and returns it in canonical form.
func (c Config) Normalize() (Config, error) {
	mac, err := NormalizeMAC(c.MAC)
	if err != nil {
		return c, err
	}
	c.MAC = mac
	if err := ValidateVPC(c.VPC); err != nil {
		return c, err
	}
	if len(c.Addresses) == 0 {
		return c, fmt.Errorf("ENI %s: at least one address is needed: %w", mac, errdefs.ErrInvalidArgument)
	}
	for _, a := range c.Addresses {
		if !a.IsValid() || a.Addr().IsUnspecified() || a.Addr().IsMulticast() || a.Addr().IsLoopback() {
			return c, fmt.Errorf("ENI %s: invalid address %v: %w", mac, a, errdefs.ErrInvalidArgument)
		}
		gw, ok := c.Gateway(a.Addr())
		if !ok {
			return c, fmt.Errorf("ENI %s: no gateway for address %v: %w", mac, a, errdefs.ErrInvalidArgument)
		}
		if !a.Masked().Contains(gw) || gw == a.Addr() {
			return c, fmt.Errorf("ENI %s: gateway %v is not a neighbour in %v: %w", mac, gw, a, errdefs.ErrInvalidArgument)
		}
	}
	seen := map[bool]bool{}
	for _, g := range c.Gateways {
		if !g.IsValid() || seen[g.Is4()] {
			return c, fmt.Errorf("ENI %s: gateways need one valid address per family: %w", mac, errdefs.ErrInvalidArgument)
		}
		seen[g.Is4()] = true
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535) {
		return c, fmt.Errorf("ENI %s: MTU %d out of range 576-65535: %w", mac, c.MTU, errdefs.ErrInvalidArgument)
	}
	c.Addresses = append([]netip.Prefix(nil), c.Addresses...)
	c.Gateways = append([]netip.Addr(nil), c.Gateways...)
	c.Routes = append([]netip.Prefix(nil), c.Routes...)
	for i, r := range c.Routes {
		if !r.IsValid() {
			return c, fmt.Errorf("ENI %s: invalid route: %w", mac, errdefs.ErrInvalidArgument)
		}
		c.Routes[i] = r.Masked()
		if _, ok := c.Gateway(r.Addr()); !ok {
			return c, fmt.Errorf("ENI %s: no gateway of the family of route %v: %w", mac, r, errdefs.ErrInvalidArgument)
		}
	}
	return c, nil
}

// SameSpec reports whether two configs describe the same ENI (the host name
// is the agent's, not the caller's).
func (c Config) SameSpec(o Config) bool {
	return c.MAC == o.MAC && c.VPC == o.VPC && c.MTU == o.MTU &&
		eqSlice(c.Addresses, o.Addresses) && eqSlice(c.Gateways, o.Gateways) && eqSlice(c.Routes, o.Routes)
}

func eqSlice[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
