package cni_test

import (
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

// ipIn runs ip(8) in n, as the pod's own NET_ADMIN can.
func ipIn(t *testing.T, n ns.NetNS, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", fabric.Name(n)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// linkSet renders n's links, sorted, for comparing before and after.
func linkSet(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	links, err := fabric.Links(n)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		out = append(out, fmt.Sprintf("%s %s %s", l.Name, l.Kind, l.MAC))
	}
	sort.Strings(out)
	return out
}

func plus(set []string, more ...string) []string {
	out := append(append([]string(nil), set...), more...)
	sort.Strings(out)
	return out
}

// A pod holds NET_ADMIN in its own namespace: before its sandbox goes, it
// hides its ENI, plants look-alikes with the ENI's name, MAC and an alias
// naming a node link, renames the ENI to a node link's name or deletes it.
// DEL never brings a link the pod made into the node, always succeeds, and
// leaves the inventory right: the real ENI back under its registered name
// and free when it can be found, missing when it is gone.
func TestHostilePodAtDEL(t *testing.T) {
	for _, tc := range []struct {
		name string
		// do tampers with the pod's namespace; n is the ENI, index its
		// ifindex in the pod.
		do        func(t *testing.T, p *fabric.Pod, n fabric.ENI, index int)
		wantState string
		podLeft   []string // links the pod keeps, besides lo
	}{
		{
			name: "ENI renamed away, impostor eth0 with its MAC and a forged alias",
			do: func(t *testing.T, p *fabric.Pod, n fabric.ENI, _ int) {
				ipIn(t, p.NS, "link", "set", "eth0", "down")
				ipIn(t, p.NS, "link", "set", "eth0", "name", "hide0")
				ipIn(t, p.NS, "link", "add", "eth0", "address", n.MAC, "type", "veth", "peer", "name", "eth0p")
				ipIn(t, p.NS, "link", "set", "eth0", "alias", "cni-eni:mgmt0", "up")
			},
			wantState: "ENI_STATE_FREE", podLeft: []string{"eth0", "eth0p"},
		},
		{
			name: "ENI renamed to a node link's name, new MAC, alias naming that link",
			do: func(t *testing.T, p *fabric.Pod, n fabric.ENI, _ int) {
				ipIn(t, p.NS, "link", "set", "eth0", "down")
				ipIn(t, p.NS, "link", "set", "eth0", "name", "mgmt0", "address", "02:66:66:66:66:66", "alias", "cni-eni:mgmt0")
			},
			wantState: "ENI_STATE_FREE",
		},
		{
			name: "ENI's alias names a node link (the old DEL failed on the name clash for ever)",
			do: func(t *testing.T, p *fabric.Pod, n fabric.ENI, _ int) {
				ipIn(t, p.NS, "link", "set", "eth0", "alias", "cni-eni:mgmt0")
			},
			wantState: "ENI_STATE_FREE",
		},
		{
			name: "ENI deleted, impostor at its ifindex with its MAC and alias",
			do: func(t *testing.T, p *fabric.Pod, n fabric.ENI, index int) {
				ipIn(t, p.NS, "link", "del", "eth0")
				args := []string{"-n", fabric.Name(p.NS), "link", "add", "eth0", "index", fmt.Sprint(index), "address", n.MAC, "type", "veth", "peer", "name", "eth0p"}
				// The kernel frees an ifindex a moment after the delete.
				if !eventually(5*time.Second, func() bool { return exec.Command("ip", args...).Run() == nil }) {
					t.Fatalf("could not plant a link at ifindex %d", index)
				}
				ipIn(t, p.NS, "link", "set", "eth0", "alias", "cni-eni:"+n.HostName, "up")
			},
			wantState: "ENI_STATE_MISSING", podLeft: []string{"eth0", "eth0p"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.LogLines = 40
			v := e.VPC("vpc-h", "10.20.0.1/24")
			n := e.ENI(v, "10.20.0.5/24")
			p := e.Pod("tenant", "hostile")
			e.CLI("eni", "assign", "tenant/hostile", "--mac", n.MAC)
			e.add(e.rt, p)
			before := linkSet(t, e.Fabric.Node)
			index := 0
			links, err := fabric.Links(p.NS)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range links {
				if l.MAC == n.MAC {
					index = l.Index
				}
			}
			tc.do(t, p, n, index)

			if err := e.rt.Del(e.ctx, p, true); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if err := e.rt.Del(e.ctx, p, false); err != nil {
				t.Fatalf("second DEL (no netns): %v", err)
			}
			if err := e.rt.Del(e.ctx, p, true); err != nil {
				t.Fatalf("third DEL: %v", err)
			}
			want := before
			if tc.wantState == "ENI_STATE_FREE" {
				want = plus(before, n.HostName+" veth "+n.MAC)
				e.requireFreeInNode(n)
			}
			if got := linkSet(t, e.Fabric.Node); strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("node links after DEL:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if st := e.listENIs()[n.MAC].State; st != tc.wantState {
				t.Errorf("ENI state %s, want %s", st, tc.wantState)
			}
			if got := e.attachments(); len(got) != 0 {
				t.Errorf("attachments left: %v", got)
			}
			var left []string
			for _, l := range linkSet(t, p.NS) {
				if name, _, _ := strings.Cut(l, " "); name != "lo" {
					left = append(left, name)
				}
			}
			if strings.Join(left, ",") != strings.Join(tc.podLeft, ",") {
				t.Errorf("pod keeps %v, want %v", left, tc.podLeft)
			}
			// A reclaimed ENI serves its next pod.
			if tc.wantState == "ENI_STATE_FREE" {
				p2 := e.Pod("tenant", "next")
				e.CLI("eni", "unassign", "tenant/hostile")
				e.CLI("eni", "assign", "tenant/next", "--mac", n.MAC)
				e.add(e.rt, p2)
				if err := e.rt.Check(e.ctx, p2); err != nil {
					t.Errorf("CHECK of the ENI's next pod: %v", err)
				}
				if err := e.rt.Del(e.ctx, p2, true); err != nil {
					t.Fatal(err)
				}
				e.requireFreeInNode(n)
			}
		})
	}
}
