package sandbox_test

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// probeCode GETs a path of the agent's probe endpoint from the node's
// namespace and returns the status.
func (e *env) probeCode(path string) int {
	e.t.Helper()
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := e.Fabric.Node.Do(func(ns.NetNS) error {
				var d net.Dialer
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	resp, err := c.Get("http://" + e.Agent.ProbeAddr + path)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// routes reports whether the namespace n has a route to addr.
func routes(n ns.NetNS, addr string) bool {
	ok := false
	_ = n.Do(func(ns.NetNS) error {
		_, err := netlink.RouteGet(net.ParseIP(addr))
		ok = err == nil
		return nil
	})
	return ok
}

// The kubelet's probes of a pod whose sandbox took its network over reach
// the guest, where the pod's address now lives, through the agent's probe
// endpoint and its Probe RPC: the agent's socket in the pod's namespace
// goes out through the tap from the prober's link-local address, and the
// guest's answers come back to it. The pod's namespace still has no route
// to the node. Once the sandbox is gone, eth0 has the address again and
// probes see that.
func TestProbeReachesTheGuest(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-pr", "10.67.0.1/24")
	n := e.ENI(v, "10.67.0.11/24")
	p := e.podOn(e.runtime(), "probed", n)
	e.create(&apiv1.SandboxSpec{Id: "vm-probe", Vcpus: 1, MemoryMib: 128, Netns: p.NS.Path()})
	e.sh("vm-probe", "mkdir -p /tmp/www && echo ok >/tmp/www/healthz && httpd -p 8080 -h /tmp/www")
	if !routes(p.NS, "10.67.0.11") {
		t.Fatal("the pod's namespace has no route to its address once the sandbox took it over")
	}
	if routes(p.NS, fabric.NodeAddr.Addr().String()) {
		t.Errorf("the pod's namespace has a route to the node's %s", fabric.NodeAddr.Addr())
	}
	for path, want := range map[string]int{
		"/probe/tenant/probed/tcp/8080":               http.StatusOK,
		"/probe/tenant/probed/http/8080/healthz":      http.StatusOK,
		"/probe/tenant/probed/http/8080/nothing":      http.StatusNotFound,
		"/probe/tenant/probed/tcp/8081?timeout=500ms": http.StatusServiceUnavailable,
	} {
		if got := e.probeCode(path); got != want {
			t.Errorf("GET %s = %d, want %d", path, got, want)
		}
	}
	for _, tc := range []struct {
		port    uint32
		path    string
		success bool
		status  int32
	}{
		{8080, "", true, 0},
		{8080, "/healthz", true, http.StatusOK},
		{8080, "/nothing", false, http.StatusNotFound},
		{8081, "", false, 0},
	} {
		r, err := e.cl.Probe(e.ctx, &apiv1.ProbeRequest{PodNamespace: "tenant", PodName: "probed",
			Port: tc.port, HttpPath: tc.path, TimeoutMs: 2000})
		if err != nil || r.Success != tc.success || r.HttpStatus != tc.status {
			t.Errorf("Probe RPC of %d%s = %v, %v; want success %v, HTTP status %d", tc.port, tc.path, r, err, tc.success, tc.status)
		}
	}
	e.deleteSandbox("vm-probe")
	if got := e.probeCode("/probe/tenant/probed/tcp/8080?timeout=500ms"); got != http.StatusServiceUnavailable {
		t.Errorf("probe after the sandbox ended = %d, want 503 (eth0 back, nothing listening)", got)
	}
}
