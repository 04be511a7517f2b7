package k8s_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// vpc is a tenant network simulated as in the CNI e2e (e2e/fabric): a
// namespace with a bridge holding the gateway; its ENIs are veths whose
// node ends are in the machine's own namespace, where the kubelet and the
// agent are.
type vpc struct {
	*fabric.VPC
	f *fabric.Fabric
}

func newVPC(t *testing.T, name, gw string) *vpc {
	t.Helper()
	f, err := fabric.OnHost()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	v, err := f.AddVPC(name, netip.MustParsePrefix(gw))
	if err != nil {
		t.Fatal(err)
	}
	return &vpc{VPC: v, f: f}
}

// eni plugs an ENI of v into the machine and registers it with the agent
// with address ip (ADDR/PREFIX); it returns its MAC.
func (v *vpc) eni(t *testing.T, ip string) string {
	t.Helper()
	e, err := v.f.AddENI(v.VPC, "ke"+randHex(4))
	if err != nil {
		t.Fatal(err)
	}
	k8s.agentCLI(t, "eni", "add", e.MAC, "--vpc", v.Name, "--ip", ip, "--gateway", v.Gateway.Addr().String())
	t.Cleanup(func() {
		_, _ = exec.Command(k8s.bin+"/nodeagent", "eni", "remove", e.MAC, "--socket", "/run/nodeagent/nodeagent.sock").CombinedOutput()
	})
	return e.MAC
}

// ping reports whether addr answers a ping sent from the namespace at
// path.
func ping(netns, addr string) error {
	out, err := exec.Command("nsenter", "--net="+netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v: %s", addr, netns, err, tail(string(out), 2))
	}
	return nil
}

// pod is what the tests need of a pod.
type pod struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Status struct {
		Phase             string `json:"phase"`
		PodIP             string `json:"podIP"`
		ContainerStatuses []struct {
			ContainerID string `json:"containerID"`
			Ready       bool   `json:"ready"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

// netnsOf is the network namespace of a running pod, through its
// container's process (containerd's task).
func netnsOf(t *testing.T, p pod) string {
	t.Helper()
	if len(p.Status.ContainerStatuses) == 0 {
		t.Fatalf("pod %s has no container", p.Metadata.Name)
	}
	id := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	out, err := exec.Command("ctr", "-a", k8s.env["CONTAINERD_SOCKET"], "-n", "k8s.io", "tasks", "ls").Output()
	if err != nil {
		t.Fatalf("ctr tasks ls: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == id {
			return "/proc/" + f[1] + "/ns/net"
		}
	}
	t.Fatalf("no task for container %s of pod %s", id, p.Metadata.Name)
	return ""
}

// tenantPod runs a pod of the cluster's own kind: on the pod network, so
// that cni-eni gives it its ENI; the image is ours (nothing can be
// pulled), sleeping.
func tenantPod(name string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
    - name: main
      image: %s
      imagePullPolicy: Never
      command: ["sleep", "infinity"]
`, name, tenantImage)
}

// tenantImage is an image with a shell and coreutils.
const tenantImage = "ghcr.io/nodeinfra/csi-ceph:v0.1.0"

func (c *cluster) pod(t *testing.T, name string) pod {
	t.Helper()
	var p pod
	c.jsonOf(t, &p, "-n", "default", "get", "pod", name)
	return p
}

func (c *cluster) waitRunning(t *testing.T, name string) pod {
	t.Helper()
	c.k(t, "-n", "default", "wait", "--for=condition=Ready", "pod/"+name, "--timeout=3m")
	return c.pod(t, name)
}

type eniJSON struct {
	Config struct {
		Mac string `json:"mac"`
	} `json:"config"`
	State string `json:"state"`
}

func (c *cluster) eniState(t *testing.T, mac string) string {
	t.Helper()
	var l struct {
		Enis []eniJSON `json:"enis"`
	}
	if err := json.Unmarshal([]byte(c.agentCLI(t, "eni", "list", "-o", "json")), &l); err != nil {
		t.Fatal(err)
	}
	for _, e := range l.Enis {
		if strings.EqualFold(e.Config.Mac, mac) {
			return e.State
		}
	}
	return "unknown"
}

// TestSuite installs the suite and runs the scenarios on it, in order.
func TestSuite(t *testing.T) {
	cl := testutil.Ceph(t)
	defer k8s.debug(t, "kube-system", "csi-ceph", "default")
	install(t, cl)

	t.Run("ENIs through the kubelet", func(t *testing.T) {
		a := newVPC(t, "vpc-a", "10.60.0.1/24")
		b := newVPC(t, "vpc-b", "10.60.0.1/24") // the same CIDR
		macA1 := a.eni(t, "10.60.0.11/24")
		a.eni(t, "10.60.0.12/24")
		b.eni(t, "10.60.0.13/24")
		for pod, v := range map[string]string{"a1": "vpc-a", "a2": "vpc-a", "b1": "vpc-b"} {
			k8s.agentCLI(t, "eni", "assign", "default/"+pod, "--vpc", v)
			k8s.apply(t, tenantPod(pod))
			defer k8s.k(t, "-n", "default", "delete", "pod", pod, "--ignore-not-found", "--wait=true")
		}
		start := time.Now()
		pods := map[string]pod{}
		for _, name := range []string{"a1", "a2", "b1"} {
			pods[name] = k8s.waitRunning(t, name)
		}
		t.Logf("three tenant pods Running with their ENIs in %v", time.Since(start).Round(time.Millisecond))
		ips := map[string]string{}
		for name, p := range pods {
			ips[name] = p.Status.PodIP
		}
		if ips["a1"] == "" || ips["a2"] == "" || ips["b1"] == "" || ips["a1"] == ips["a2"] {
			t.Fatalf("pod IPs %v", ips)
		}
		// The VPC reaches its pods; a pod reaches its VPC's other pod,
		// not the other VPC's, not the node.
		for _, name := range []string{"a1", "a2"} {
			if err := ping(a.NS.Path(), ips[name]); err != nil {
				t.Errorf("vpc-a to %s: %v", name, err)
			}
		}
		if err := ping(b.NS.Path(), ips["b1"]); err != nil {
			t.Errorf("vpc-b to b1: %v", err)
		}
		nsA1 := netnsOf(t, pods["a1"])
		if err := ping(nsA1, ips["a2"]); err != nil {
			t.Errorf("a1 to a2 (same VPC): %v", err)
		}
		if err := ping(nsA1, ips["b1"]); err == nil {
			t.Errorf("a1 reached b1's address %s: another VPC", ips["b1"])
		}
		if node := k8s.nodeIP(t); node != "" {
			if err := ping(nsA1, node); err == nil {
				t.Errorf("a1 reached the node at %s", node)
			}
		}
		// Deleting a pod frees its ENI.
		k8s.k(t, "-n", "default", "delete", "pod", "a1", "--wait=true", "--timeout=2m")
		eventually(t, time.Minute, "a1's ENI free after its pod's deletion", func() error {
			if s := k8s.eniState(t, macA1); s != "ENI_STATE_FREE" {
				return fmt.Errorf("ENI %s is %s", macA1, s)
			}
			return nil
		})
	})

	t.Run("database on an RBD volume", func(t *testing.T) { testDatabase(t) })
	t.Run("volumes", func(t *testing.T) { testVolumes(t) })
	t.Run("probes through the agent", func(t *testing.T) { testProbes(t) })
}

// nodeIP is the node's InternalIP.
func (c *cluster) nodeIP(t *testing.T) string {
	t.Helper()
	out := c.k(t, "get", "nodes", "-o", `jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address}`)
	return strings.TrimSpace(out)
}
