package fabric

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNode is a fabric with nodeagent running on it, for one test: its
// methods fail the test on error, and the agent and every namespace are
// gone when the test ends.
type TestNode struct {
	Fabric *Fabric
	Agent  *Agent
	// LogLines is how many of the agent's last log lines a failed test
	// shows; 0 shows the whole log.
	LogLines int
	t        testing.TB
}

// NewTestNode builds a fabric and starts bin (nodeagent) in its node
// namespace with extra flags (see StartAgent), its socket, state and log
// in a temporary directory of t.
func NewTestNode(t testing.TB, bin string, extra ...string) *TestNode {
	t.Helper()
	return newTestNode(t, bin, true, extra)
}

// NewTestNodeOnHost is NewTestNode with the agent in the machine's own
// network namespace (where a Ceph cluster's monitors listen, for one),
// without HTTP endpoints.
func NewTestNodeOnHost(t testing.TB, bin string, extra ...string) *TestNode {
	t.Helper()
	return newTestNode(t, bin, false, extra)
}

func newTestNode(t testing.TB, bin string, inNode bool, extra []string) *TestNode {
	t.Helper()
	f, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	dir := t.TempDir()
	node := f.Node
	if !inNode {
		node = nil
	}
	a, err := StartAgent(bin, node, dir, extra...)
	if err != nil {
		t.Fatal(err)
	}
	n := &TestNode{Fabric: f, Agent: a, t: t}
	t.Cleanup(func() {
		a.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
			t.Logf("agent log:\n%s", lastLines(string(b), n.LogLines))
		}
	})
	return n
}

// lastLines returns the last n lines of s (all of them when n is 0).
func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if n > 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// VPC adds VPC name whose gateway is gw (ADDR/PREFIX).
func (n *TestNode) VPC(name, gw string) *VPC {
	n.t.Helper()
	v, err := n.Fabric.AddVPC(name, netip.MustParsePrefix(gw))
	if err != nil {
		n.t.Fatal(err)
	}
	return v
}

// ENI plugs an ENI of v into the node and registers it with the agent's
// CLI: `nodeagent eni add MAC --vpc V --ip ip --gateway GW --mtu 1400`,
// then extra.
func (n *TestNode) ENI(v *VPC, ip string, extra ...string) ENI {
	n.t.Helper()
	e, err := n.Fabric.AddENI(v, "")
	if err != nil {
		n.t.Fatal(err)
	}
	args := append([]string{"eni", "add", e.MAC, "--vpc", v.Name, "--ip", ip,
		"--gateway", v.Gateway.Addr().String(), "--mtu", "1400"}, extra...)
	n.CLI(args...)
	return e
}

// CLI runs a client verb of nodeagent against the agent and returns what
// it printed.
func (n *TestNode) CLI(args ...string) string {
	n.t.Helper()
	out, err := n.Agent.CLI(args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return out
}

// Pod creates the namespace of pod namespace/name's sandbox.
func (n *TestNode) Pod(namespace, name string) *Pod {
	n.t.Helper()
	p, err := n.Fabric.NewPod(namespace, name)
	if err != nil {
		n.t.Fatal(err)
	}
	return p
}
