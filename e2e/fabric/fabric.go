// Package fabric builds a simulated cloud on one machine out of network
// namespaces, for the e2e tests, the benchmarks and the demo:
//
//   - a node namespace, standing in for the host, with a management address;
//   - one namespace per VPC with a bridge and the VPC gateway address;
//   - ENIs: veth pairs whose node end is the ENI and whose other end is
//     plugged into the VPC's bridge.
//
// Nothing touches the machine's own network namespace. Beside the fabric:
// nodeagent and its CLI (StartAgent), CNI driven as containerd drives it
// (Runtime), a node with its agent for one test (TestNode), and what a
// sandbox leaves on the machine (QEMUPids, RemoveCgroup).
package fabric

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// NodeAddr is the node's management address in its namespace; pods must
// never reach it.
var NodeAddr = netip.MustParsePrefix("172.31.255.10/24")

// Fabric is a node with its VPCs.
type Fabric struct {
	Node ns.NetNS
	// onHost: Node is the machine's own namespace, which Close keeps.
	onHost bool

	mu   sync.Mutex
	vpcs map[string]*VPC
	all  []ns.NetNS
	enis int
}

// VPC is one tenant network.
type VPC struct {
	Name    string
	NS      ns.NetNS
	Gateway netip.Prefix
	ENIs    []ENI
}

// ENI is a simulated elastic NIC.
type ENI struct {
	VPC      string
	MAC      string
	HostName string
}

// Name returns the namespace's name under /run/netns.
func Name(n ns.NetNS) string { return filepath.Base(n.Path()) }

// NewNS creates a namespace with lo up.
func NewNS() (ns.NetNS, error) {
	n, err := testutils.NewNS()
	if err != nil {
		return nil, fmt.Errorf("create netns: %w", err)
	}
	err = n.Do(func(ns.NetNS) error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		DeleteNS(n)
		return nil, fmt.Errorf("set lo up: %w", err)
	}
	return n, nil
}

// DeleteNS closes and unmounts a namespace.
func DeleteNS(n ns.NetNS) {
	n.Close()
	_ = testutils.UnmountNS(n)
}

// New creates the node namespace with its management address.
func New() (*Fabric, error) {
	node, err := NewNS()
	if err != nil {
		return nil, err
	}
	f := &Fabric{Node: node, vpcs: map[string]*VPC{}, all: []ns.NetNS{node}}
	err = node.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "mgmt0"}, PeerName: "mgmt0p"}); err != nil {
			return err
		}
		l, err := netlinksafe.LinkByName("mgmt0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipnet(NodeAddr)}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		p, err := netlinksafe.LinkByName("mgmt0p")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(p)
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("node management link: %w", err)
	}
	return f, nil
}

// AddVPC creates a VPC namespace with a bridge holding gateway.
func (f *Fabric) AddVPC(name string, gateway netip.Prefix) (*VPC, error) {
	n, err := NewNS()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.all = append(f.all, n)
	f.mu.Unlock()
	err = n.Do(func(ns.NetNS) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		if err := netlink.AddrAdd(br, &netlink.Addr{IPNet: ipnet(gateway)}); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		return nil, fmt.Errorf("VPC %s bridge: %w", name, err)
	}
	v := &VPC{Name: name, NS: n, Gateway: gateway}
	f.mu.Lock()
	f.vpcs[name] = v
	f.mu.Unlock()
	return v, nil
}

// AddENI plugs a new ENI of vpc into the node as a link named hostName
// (generated when empty).
func (f *Fabric) AddENI(vpc *VPC, hostName string) (ENI, error) {
	f.mu.Lock()
	f.enis++
	peer := fmt.Sprintf("p%d", f.enis)
	if hostName == "" {
		hostName = fmt.Sprintf("eni%d", f.enis)
	}
	f.mu.Unlock()
	e := ENI{VPC: vpc.Name, HostName: hostName}
	err := f.Node.Do(func(ns.NetNS) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: peer, PeerNamespace: netlink.NsFd(int(vpc.NS.Fd()))}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		l, err := netlinksafe.LinkByName(hostName)
		if err != nil {
			return err
		}
		e.MAC = l.Attrs().HardwareAddr.String()
		return nil
	})
	if err != nil {
		return e, fmt.Errorf("create ENI %s: %w", hostName, err)
	}
	err = vpc.NS.Do(func(ns.NetNS) error {
		p, err := netlinksafe.LinkByName(peer)
		if err != nil {
			return err
		}
		br, err := netlinksafe.LinkByName("br0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetMaster(p, br); err != nil {
			return err
		}
		return netlink.LinkSetUp(p)
	})
	if err != nil {
		return e, fmt.Errorf("plug ENI %s into VPC %s: %w", hostName, vpc.Name, err)
	}
	f.mu.Lock()
	vpc.ENIs = append(vpc.ENIs, e)
	f.mu.Unlock()
	return e, nil
}

// Track makes Close delete n too.
func (f *Fabric) Track(n ns.NetNS) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.all = append(f.all, n)
}

// OnHost is a fabric whose node is the machine's own network namespace,
// where a real kubelet and the agent's DaemonSet run: VPCs are namespaces
// of their own and ENIs veths whose node ends are in the machine's
// namespace. Close deletes the VPCs, and the ENIs with them (a veth dies
// with its peer), never the machine's namespace. Name the ENIs (AddENI's
// hostName) so that they cannot clash with the machine's own links.
func OnHost() (*Fabric, error) {
	n, err := ns.GetCurrentNS()
	if err != nil {
		return nil, err
	}
	return &Fabric{Node: n, onHost: true, vpcs: map[string]*VPC{}}, nil
}

// Close deletes every namespace of the fabric (and so every link in them).
func (f *Fabric) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := len(f.all) - 1; i >= 0; i-- {
		DeleteNS(f.all[i])
	}
	f.all = nil
	if f.onHost {
		f.Node.Close()
	}
}

// LinkState is what a link in a namespace looks like.
type LinkState struct {
	Name  string
	Up    bool
	Addrs []string
	MTU   int
}

// FindLink looks for the link with mac in n.
func FindLink(n ns.NetNS, mac string) (LinkState, bool, error) {
	var st LinkState
	found := false
	err := n.Do(func(ns.NetNS) error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() != mac {
				continue
			}
			found = true
			st.Name, st.MTU, st.Up = l.Attrs().Name, l.Attrs().MTU, l.Attrs().Flags&net.FlagUp != 0
			addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return err
			}
			for _, a := range addrs {
				st.Addrs = append(st.Addrs, a.IPNet.String())
			}
		}
		return nil
	})
	return st, found, err
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Link is one link of a namespace, as `ip link` lists it.
type Link struct {
	Index int
	Name  string
	MAC   string
	Kind  string
}

// String is "name(index kind mac)".
func (l Link) String() string { return fmt.Sprintf("%s(%d %s %s)", l.Name, l.Index, l.Kind, l.MAC) }

// Links lists the links of n by index.
func Links(n ns.NetNS) ([]Link, error) {
	var out []Link
	err := n.Do(func(ns.NetNS) error {
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			a := l.Attrs()
			out = append(out, Link{Index: a.Index, Name: a.Name, MAC: a.HardwareAddr.String(), Kind: l.Type()})
		}
		return err
	})
	return out, err
}
