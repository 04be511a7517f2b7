// Package cni_test is the end-to-end test of cni-eni and nodeagent on real
// kernel objects: a node namespace with simulated ENIs, VPC namespaces,
// pod namespaces, the real binaries, driven through libcni.
package cni_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

var binDir string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("SKIP e2e/cni: needs root to create network namespaces")
		os.Exit(0)
	}
	binDir = os.Getenv("NODEINFRA_BIN")
	if binDir == "" {
		dir, err := os.MkdirTemp("", "nodeinfra-bin-")
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		for _, b := range []string{"cni-eni", "nodeagent"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b), "github.com/nodeinfra/nodeinfra/"+b)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Println("build", b, err)
				os.Exit(1)
			}
		}
		binDir = dir
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// env is one node with its agent and a runtime per CNI version.
type env struct {
	*fabric.TestNode
	t    *testing.T
	rt   *fabric.Runtime // cniVersion 1.1.0
	rt10 *fabric.Runtime // cniVersion 1.0.0
	ctx  context.Context
}

func newEnv(t *testing.T) *env {
	t.Helper()
	n := fabric.NewTestNode(t, filepath.Join(binDir, "nodeagent"))
	rt, err := fabric.NewRuntime(n.Fabric.Node, binDir, t.TempDir(), fabric.Conflist("1.1.0", n.Agent.Socket))
	if err != nil {
		t.Fatal(err)
	}
	rt10, err := fabric.NewRuntime(n.Fabric.Node, binDir, t.TempDir(), fabric.Conflist("1.0.0", n.Agent.Socket))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return &env{TestNode: n, t: t, rt: rt, rt10: rt10, ctx: ctx}
}

func (e *env) add(rt *fabric.Runtime, p *fabric.Pod) types.Result {
	e.t.Helper()
	res, err := rt.Add(e.ctx, p)
	if err != nil {
		e.t.Fatalf("ADD %s/%s: %v", p.Namespace, p.Name, err)
	}
	return res
}

// listENIs returns the agent's ENIs by MAC, from `eni list -o json`.
func (e *env) listENIs() map[string]eniJSON {
	e.t.Helper()
	var out struct {
		ENIs []eniJSON `json:"enis"`
	}
	if err := json.Unmarshal([]byte(e.CLI("eni", "list", "-o", "json")), &out); err != nil {
		e.t.Fatal(err)
	}
	m := map[string]eniJSON{}
	for _, x := range out.ENIs {
		m[x.Config.MAC] = x
	}
	return m
}

type eniJSON struct {
	Config struct {
		MAC      string `json:"mac"`
		HostName string `json:"hostName"`
	} `json:"config"`
	State      string `json:"state"`
	Attachment *struct {
		ContainerID string `json:"containerId"`
	} `json:"attachment"`
}

func (e *env) attachments() []string {
	e.t.Helper()
	var out struct {
		Attachments []struct {
			ContainerID string `json:"containerId"`
			MAC         string `json:"mac"`
		} `json:"attachments"`
	}
	if err := json.Unmarshal([]byte(e.CLI("attachments", "-o", "json")), &out); err != nil {
		e.t.Fatal(err)
	}
	var ids []string
	for _, a := range out.Attachments {
		ids = append(ids, a.ContainerID)
	}
	return ids
}

// requireFreeInNode asserts that the ENI is back in the node namespace,
// under its registered name, down and without addresses.
func (e *env) requireFreeInNode(n fabric.ENI) {
	e.t.Helper()
	st, ok, err := fabric.FindLink(e.Fabric.Node, n.MAC)
	if err != nil {
		e.t.Fatal(err)
	}
	if !ok {
		e.t.Fatalf("ENI %s is not in the node namespace", n.MAC)
	}
	if st.Name != n.HostName || st.Up || len(st.Addrs) != 0 {
		e.t.Fatalf("ENI %s in node: %+v, want name %s, down, no addresses", n.MAC, st, n.HostName)
	}
}

func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// ping runs ping from inside a pod namespace.
func ping(p *fabric.Pod, addr string) error {
	out, err := exec.Command("ip", "netns", "exec", fabric.Name(p.NS), "ping", "-c", "2", "-i", "0.2", "-W", "1", addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %w: %s", addr, p.Name, err, out)
	}
	return nil
}

// serveIdentity makes a pod answer TCP connections on port with its name.
func serveIdentity(t *testing.T, n ns.NetNS, port int, name string) {
	t.Helper()
	var l net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, name)
			c.Close()
		}
	}()
}

// dialFrom connects from inside n to addr and returns what it says.
func dialFrom(n ns.NetNS, addr string) (string, error) {
	var got string
	err := n.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	return got, err
}

// eventually polls cond for up to d.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cond()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// httpGet fetches url from inside namespace n.
func httpGet(n ns.NetNS, url string) (int, string, error) { return fabric.HTTPGet(n, url) }
