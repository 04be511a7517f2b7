package cni_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

// Two VPCs with the same CIDR and two pods in each: pods of one VPC reach
// each other, never the other VPC's pods, never the node. DEL gives the
// ENI back to the node as it was.
func TestTwoVPCsSameCIDR(t *testing.T) {
	e := newEnv(t)
	va, vb := e.VPC("vpc-a", "10.1.0.1/24"), e.VPC("vpc-b", "10.1.0.1/24")
	a1 := e.ENI(va, "10.1.0.11/24", "--route", "192.168.77.0/24")
	a2 := e.ENI(va, "10.1.0.12/24")
	b1 := e.ENI(vb, "10.1.0.11/24")
	b2 := e.ENI(vb, "10.1.0.13/24")

	pa1, pa2 := e.Pod("tenant-a", "a1"), e.Pod("tenant-a", "a2")
	pb1, pb2 := e.Pod("tenant-b", "b1"), e.Pod("tenant-b", "b2")
	e.CLI("eni", "assign", "tenant-a/a1", "--mac", a1.MAC)
	e.CLI("eni", "assign", "tenant-a/a2", "--vpc", "vpc-a")
	e.CLI("eni", "assign", "tenant-b/b1", "--mac", b1.MAC)
	e.CLI("eni", "assign", "tenant-b/b2", "--vpc", "vpc-b")

	// VPC a's pods through a 1.1.0 conflist, VPC b's through 1.0.0.
	for _, c := range []struct {
		rt   *fabric.Runtime
		p    *fabric.Pod
		n    fabric.ENI
		ip   string
		vers string
	}{
		{e.rt, pa1, a1, "10.1.0.11/24", "1.1.0"}, {e.rt, pa2, a2, "10.1.0.12/24", "1.1.0"},
		{e.rt10, pb1, b1, "10.1.0.11/24", "1.0.0"}, {e.rt10, pb2, b2, "10.1.0.13/24", "1.0.0"},
	} {
		raw := e.add(c.rt, c.p)
		if raw.Version() != c.vers {
			t.Errorf("%s: result version %s, want %s", c.p.Name, raw.Version(), c.vers)
		}
		res, err := types100.GetResult(raw)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Interfaces) != 1 || res.Interfaces[0].Name != "eth0" || res.Interfaces[0].Mac != c.n.MAC || res.Interfaces[0].Sandbox != c.p.NS.Path() {
			t.Errorf("%s: interfaces %+v", c.p.Name, res.Interfaces)
		}
		if len(res.IPs) != 1 || res.IPs[0].Address.String() != c.ip || res.IPs[0].Gateway.String() != "10.1.0.1" {
			t.Errorf("%s: IPs %+v", c.p.Name, res.IPs)
		}
		st, ok, err := fabric.FindLink(c.p.NS, c.n.MAC)
		if err != nil || !ok || st.Name != "eth0" || !st.Up || st.MTU != 1400 || !contains(st.Addrs, c.ip) {
			t.Fatalf("%s: pod link %+v found=%v err=%v", c.p.Name, st, ok, err)
		}
		if _, ok, _ := fabric.FindLink(e.Fabric.Node, c.n.MAC); ok {
			t.Errorf("%s: ENI still visible in the node namespace", c.p.Name)
		}
		serveIdentity(t, c.p.NS, 7000, c.p.Name)
	}
	// The extra route of a1's ENI is there.
	err := pa1.NS.Do(func(ns.NetNS) error {
		routes, err := netlinksafe.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == "192.168.77.0/24" && r.Gw.String() == "10.1.0.1" {
				return nil
			}
		}
		return fmt.Errorf("route 192.168.77.0/24 via 10.1.0.1 missing: %v", routes)
	})
	if err != nil {
		t.Error(err)
	}

	// Same VPC: reachable, and it is the right pod that answers.
	if err := ping(pa1, "10.1.0.12"); err != nil {
		t.Error(err)
	}
	if err := ping(pb1, "10.1.0.13"); err != nil {
		t.Error(err)
	}
	if got, err := dialFrom(pa1.NS, "10.1.0.12:7000"); err != nil || got != "a2" {
		t.Errorf("a1 -> 10.1.0.12: %q, %v; want a2", got, err)
	}
	if got, err := dialFrom(pb2.NS, "10.1.0.11:7000"); err != nil || got != "b1" {
		t.Errorf("b2 -> 10.1.0.11: %q, %v; want b1 (not a1 with the same address)", got, err)
	}
	// Other VPC: 10.1.0.13 exists only in VPC b, 10.1.0.12 only in VPC a.
	if err := ping(pa1, "10.1.0.13"); err == nil {
		t.Error("a1 reached 10.1.0.13 in VPC b")
	}
	if err := ping(pb1, "10.1.0.12"); err == nil {
		t.Error("b1 reached 10.1.0.12 in VPC a")
	}
	if got, err := dialFrom(pa2.NS, "10.1.0.13:7000"); err == nil {
		t.Errorf("a2 connected to VPC b's pod: %q", got)
	}

	// Pod to node: the node's address and a service listening on it are
	// out of reach, while the node itself reaches that service.
	node := fabric.NodeAddr.Addr().String()
	serveIdentity(t, e.Fabric.Node, 7777, "node")
	if got, err := dialFrom(e.Fabric.Node, node+":7777"); err != nil || got != "node" {
		t.Fatalf("control: node cannot reach its own service: %q %v", got, err)
	}
	for _, p := range []*fabric.Pod{pa1, pb2} {
		if err := ping(p, node); err == nil {
			t.Errorf("%s pinged the node at %s", p.Name, node)
		}
		if got, err := dialFrom(p.NS, node+":7777"); err == nil {
			t.Errorf("%s connected to the node's service: %q", p.Name, got)
		}
	}
	// And the node has no path into the pods either.
	if got, err := dialFrom(e.Fabric.Node, "10.1.0.11:7000"); err == nil {
		t.Errorf("node connected to a pod: %q", got)
	}

	for _, p := range []*fabric.Pod{pa1, pa2} {
		if err := e.rt.Check(e.ctx, p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
	}
	for _, p := range []*fabric.Pod{pb1, pb2} {
		if err := e.rt10.Check(e.ctx, p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
	}
	enis := e.listENIs()
	for _, n := range []fabric.ENI{a1, a2, b1, b2} {
		if enis[n.MAC].State != "ENI_STATE_ATTACHED" {
			t.Errorf("ENI %s state %s, want attached", n.MAC, enis[n.MAC].State)
		}
	}

	// DEL as containerd does it: with the netns, then without.
	if err := e.rt.Del(e.ctx, pa1, true); err != nil {
		t.Fatal(err)
	}
	e.requireFreeInNode(a1)
	if err := e.rt.Del(e.ctx, pa1, false); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
	if err := e.rt.Del(e.ctx, pa1, true); err != nil {
		t.Fatalf("third DEL: %v", err)
	}
	if st := e.listENIs()[a1.MAC].State; st != "ENI_STATE_FREE" {
		t.Errorf("after DEL ENI state %s, want free", st)
	}
	if _, ok, _ := fabric.FindLink(pa1.NS, a1.MAC); ok {
		t.Error("ENI still in the pod after DEL")
	}
	// The pod keeps its assignment: a new sandbox gets the same ENI.
	pa1.ContainerID += "-2"
	res, err := types100.GetResult(e.add(e.rt, pa1))
	if err != nil || res.Interfaces[0].Mac != a1.MAC {
		t.Fatalf("re-ADD: %v %+v", err, res)
	}
	for _, p := range []*fabric.Pod{pa1, pa2} {
		if err := e.rt.Del(e.ctx, p, true); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*fabric.Pod{pb1, pb2} {
		if err := e.rt10.Del(e.ctx, p, true); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []fabric.ENI{a1, a2, b1, b2} {
		e.requireFreeInNode(n)
	}
	if got := e.attachments(); len(got) != 0 {
		t.Errorf("attachments left: %v", got)
	}
}

func TestCheckReportsDrift(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-a", "10.2.0.1/24")
	n := e.ENI(v, "10.2.0.5/24")
	p := e.Pod("default", "drifty")
	e.CLI("eni", "assign", "default/drifty", "--vpc", "vpc-a")
	e.add(e.rt, p)
	if err := e.rt.Check(e.ctx, p); err != nil {
		t.Fatalf("CHECK of a fresh pod: %v", err)
	}
	breakages := []struct {
		name  string
		do    func(l netlink.Link) error
		fix   func(l netlink.Link) error
		words string
	}{
		{"down", netlink.LinkSetDown, func(l netlink.Link) error {
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
			_, dst, _ := net.ParseCIDR("0.0.0.0/0")
			return netlink.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: net.ParseIP("10.2.0.1")})
		}, "is down"},
		{"mtu", func(l netlink.Link) error { return netlink.LinkSetMTU(l, 1300) }, func(l netlink.Link) error { return netlink.LinkSetMTU(l, 1400) }, "MTU 1300"},
		{"address", func(l netlink.Link) error {
			a, _ := netlink.ParseAddr("10.2.0.5/24")
			return netlink.AddrDel(l, a)
		}, func(l netlink.Link) error {
			a, _ := netlink.ParseAddr("10.2.0.5/24")
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
			_, dst, _ := net.ParseCIDR("0.0.0.0/0")
			return netlink.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: net.ParseIP("10.2.0.1")})
		}, "lacks address 10.2.0.5/24"},
		{"route", func(l netlink.Link) error {
			_, dst, _ := net.ParseCIDR("0.0.0.0/0")
			return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst})
		}, func(l netlink.Link) error {
			_, dst, _ := net.ParseCIDR("0.0.0.0/0")
			return netlink.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: net.ParseIP("10.2.0.1")})
		}, "route 0.0.0.0/0 via 10.2.0.1 is missing"},
		{"renamed", func(l netlink.Link) error {
			if err := netlink.LinkSetDown(l); err != nil {
				return err
			}
			return netlink.LinkSetName(l, "eth9")
		}, func(l netlink.Link) error {
			if err := netlink.LinkSetName(l, "eth0"); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
			_, dst, _ := net.ParseCIDR("0.0.0.0/0")
			return netlink.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: net.ParseIP("10.2.0.1")})
		}, "link eth0 is missing"},
	}
	for _, b := range breakages {
		withLink := func(f func(netlink.Link) error) {
			err := p.NS.Do(func(ns.NetNS) error {
				links, err := netlinksafe.LinkList()
				if err != nil {
					return err
				}
				for _, l := range links {
					if l.Attrs().HardwareAddr.String() == n.MAC {
						return f(l)
					}
				}
				return fmt.Errorf("no link %s", n.MAC)
			})
			if err != nil {
				t.Fatalf("%s: %v", b.name, err)
			}
		}
		withLink(b.do)
		err := e.rt.Check(e.ctx, p)
		if cniCode(err) != 102 || !strings.Contains(err.Error(), b.words) {
			t.Errorf("%s: CHECK = %v (code %d), want code 102 mentioning %q", b.name, err, cniCode(err), b.words)
		}
		withLink(b.fix)
		if err := e.rt.Check(e.ctx, p); err != nil {
			t.Errorf("%s: CHECK after the fix: %v", b.name, err)
		}
	}
	if err := e.rt.Del(e.ctx, p, true); err != nil {
		t.Fatal(err)
	}
	e.requireFreeInNode(n)
}

func TestGCReclaimsOrphans(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-a", "10.3.0.1/24")
	n1, n2 := e.ENI(v, "10.3.0.11/24"), e.ENI(v, "10.3.0.12/24")
	p1, p2 := e.Pod("default", "kept"), e.Pod("default", "orphan")
	e.CLI("eni", "assign", "default/kept", "--mac", n1.MAC)
	e.CLI("eni", "assign", "default/orphan", "--mac", n2.MAC)
	e.add(e.rt, p1)
	e.add(e.rt, p2)
	if err := e.rt.GC(e.ctx, p1); err != nil {
		t.Fatalf("GC: %v", err)
	}
	e.requireFreeInNode(n2)
	if got := e.attachments(); len(got) != 1 || got[0] != p1.ContainerID {
		t.Fatalf("attachments after GC: %v, want only %s", got, p1.ContainerID)
	}
	if err := e.rt.Check(e.ctx, p1); err != nil {
		t.Fatalf("GC disturbed the valid pod: %v", err)
	}
	// GC with nothing to collect changes nothing.
	if err := e.rt.GC(e.ctx, p1); err != nil {
		t.Fatal(err)
	}
	if got := e.attachments(); len(got) != 1 {
		t.Fatalf("attachments after a no-op GC: %v", got)
	}
}

func TestDelSurvivesAgentRestartAndNetnsLoss(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-a", "10.4.0.1/24")
	n1, n2 := e.ENI(v, "10.4.0.11/24"), e.ENI(v, "10.4.0.12/24")
	p1, p2 := e.Pod("default", "p1"), e.Pod("default", "p2")
	e.CLI("eni", "assign", "default/p1", "--mac", n1.MAC)
	e.CLI("eni", "assign", "default/p2", "--mac", n2.MAC)
	e.add(e.rt, p1)
	e.add(e.rt, p2)

	e.Agent.Stop()
	if err := e.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	if err := e.rt.Del(e.ctx, p1, true); err != nil {
		t.Fatalf("DEL after agent restart: %v", err)
	}
	e.requireFreeInNode(n1)
	if err := e.rt.Del(e.ctx, p1, true); err != nil {
		t.Fatalf("repeated DEL: %v", err)
	}

	// The pod's namespace dies first: the veth ENI dies with it (a PCI ENI
	// would come back to the node instead). DEL still succeeds.
	fabric.DeleteNS(p2.NS)
	if err := e.rt.Del(e.ctx, p2, true); err != nil {
		t.Fatalf("DEL with the netns gone: %v", err)
	}
	if err := e.rt.Del(e.ctx, p2, false); err != nil {
		t.Fatalf("DEL without netns: %v", err)
	}
	if st := e.listENIs()[n2.MAC].State; st != "ENI_STATE_MISSING" {
		t.Errorf("ENI destroyed with its netns: state %s, want missing", st)
	}
	if got := e.attachments(); len(got) != 0 {
		t.Errorf("attachments left: %v", got)
	}
	e.CLI("eni", "unassign", "default/p2")
	e.CLI("eni", "remove", n2.MAC)
	if _, ok := e.listENIs()[n2.MAC]; ok {
		t.Error("removed ENI still listed")
	}
}

// kill -9 of the agent in the middle of a burst of ADDs: after a restart
// and a GC, no ENI is held twice, none is lost, every free one is down.
func TestAgentKilledDuringADDBurst(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-a", "10.5.0.1/24")
	const n = 24
	var enis []fabric.ENI
	var pods []*fabric.Pod
	for i := 0; i < n; i++ {
		enis = append(enis, e.ENI(v, fmt.Sprintf("10.5.0.%d/24", 10+i)))
		p := e.Pod("burst", fmt.Sprintf("pod-%d", i))
		e.CLI("eni", "assign", "burst/"+p.Name, "--vpc", "vpc-a")
		pods = append(pods, p)
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	macs := make([]string, n)
	first := make(chan struct{}, n)
	for i, p := range pods {
		wg.Add(1)
		go func(i int, p *fabric.Pod) {
			defer wg.Done()
			res, err := e.rt.Add(e.ctx, p)
			errs[i] = err
			if err == nil {
				r, _ := types100.GetResult(res)
				macs[i] = r.Interfaces[0].Mac
			}
			first <- struct{}{}
		}(i, p)
	}
	<-first
	e.Agent.Kill()
	wg.Wait()
	if err := e.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	var ok []*fabric.Pod
	held := map[string]string{}
	for i, p := range pods {
		if errs[i] != nil {
			continue
		}
		ok = append(ok, p)
		if other, dup := held[macs[i]]; dup {
			t.Errorf("ENI %s given to %s and %s", macs[i], other, p.Name)
		}
		held[macs[i]] = p.Name
	}
	t.Logf("%d of %d ADDs succeeded before and around the kill", len(ok), n)
	if err := e.rt.GC(e.ctx, ok...); err != nil {
		t.Fatalf("GC: %v", err)
	}
	att := e.attachments()
	if len(att) != len(ok) {
		t.Errorf("%d attachments after GC, want %d", len(att), len(ok))
	}
	for _, p := range ok {
		if !contains(att, p.ContainerID) {
			t.Errorf("attachment of %s lost", p.Name)
		}
		if err := e.rt.Check(e.ctx, p); err != nil {
			t.Errorf("CHECK %s: %v", p.Name, err)
		}
	}
	for _, x := range enis {
		if _, isHeld := held[x.MAC]; !isHeld {
			e.requireFreeInNode(x)
		}
	}
	// The failed pods can now start: every ENI ends up held exactly once.
	for i, p := range pods {
		if errs[i] == nil {
			continue
		}
		p.ContainerID += "-retry"
		res, err := types100.GetResult(e.add(e.rt, p))
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := held[res.Interfaces[0].Mac]; dup {
			t.Errorf("retry of %s got ENI %s held by %s", p.Name, res.Interfaces[0].Mac, other)
		}
		held[res.Interfaces[0].Mac] = p.Name
	}
	if len(held) != n {
		t.Errorf("%d ENIs held, want %d", len(held), n)
	}
}

func TestStatus(t *testing.T) {
	e := newEnv(t)
	if err := e.rt.Status(e.ctx); err != nil {
		t.Fatalf("STATUS with the agent up: %v", err)
	}
	e.Agent.Kill()
	err := e.rt.Status(e.ctx)
	if cniCode(err) != 50 || !strings.Contains(err.Error(), e.Agent.Socket) || !strings.Contains(err.Error(), "nodeagent") {
		t.Fatalf("STATUS with the agent down = %v (code %d), want code 50 naming the socket", err, cniCode(err))
	}
	if err := e.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	if err := e.rt.Status(e.ctx); err != nil {
		t.Fatalf("STATUS after restart: %v", err)
	}
}

func TestADDWithoutAssignmentFails(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-a", "10.6.0.1/24")
	n := e.ENI(v, "10.6.0.5/24")
	p := e.Pod("default", "nobody")
	_, err := e.rt.Add(e.ctx, p)
	if cniCode(err) != 100 || !strings.Contains(err.Error(), "default/nobody") {
		t.Fatalf("ADD without assignment = %v (code %d), want code 100 naming the pod", err, cniCode(err))
	}
	e.requireFreeInNode(n)
	if got := e.attachments(); len(got) != 0 {
		t.Fatalf("attachments after a failed ADD: %v", got)
	}
	// An empty pool is "try again later".
	e.CLI("eni", "assign", "default/nobody", "--vpc", "vpc-empty")
	_, err = e.rt.Add(e.ctx, p)
	if cniCode(err) != 11 {
		t.Fatalf("ADD with an empty pool = %v, want code 11", err)
	}
	// The runtime DELs after a failed ADD: nothing to do, no error.
	if err := e.rt.Del(e.ctx, p, true); err != nil {
		t.Fatal(err)
	}
}

func TestFreeENIsAreKeptDown(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-a", "10.7.0.1/24")
	n := e.ENI(v, "10.7.0.5/24")
	e.requireFreeInNode(n)
	// Someone brings the free ENI up and gives the node an address on it.
	err := e.Fabric.Node.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(n.HostName)
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("10.7.0.99/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool {
		st, ok, _ := fabric.FindLink(e.Fabric.Node, n.MAC)
		return ok && !st.Up && len(st.Addrs) == 0
	}) {
		st, _, _ := fabric.FindLink(e.Fabric.Node, n.MAC)
		t.Fatalf("free ENI not quiesced by the agent: %+v", st)
	}
	// A free ENI that reappears after vanishing is quiesced too.
}

// The kubelet's probes reach a pod through the agent, which opens the
// connection from inside the pod's namespace; the node itself has no path.
func TestProbeThroughAgent(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-a", "10.8.0.1/24")
	n := e.ENI(v, "10.8.0.5/24")
	p := e.Pod("web", "frontend")
	e.CLI("eni", "assign", "web/frontend", "--mac", n.MAC)
	e.add(e.rt, p)
	var l net.Listener
	err := p.NS.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", "10.8.0.5:8080")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "sick", 500) })
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })

	get := func(path string) int {
		t.Helper()
		code, _, err := httpGet(e.Fabric.Node, "http://"+e.Agent.ProbeAddr+path)
		if err != nil {
			t.Fatal(err)
		}
		return code
	}
	for path, want := range map[string]int{
		"/probe/web/frontend/http/8080/healthz": 200,
		"/probe/web/frontend/http/8080/fail":    500,
		"/probe/web/frontend/tcp/8080":          200,
		"/probe/web/frontend/tcp/8081":          503,
		"/probe/web/unknown/tcp/8080":           404,
		"/probe/web/frontend/tcp/0":             400,
	} {
		if got := get(path); got != want {
			t.Errorf("GET %s = %d, want %d", path, got, want)
		}
	}
	if out, err := e.Agent.CLI("probe", "web/frontend", "--port", "8080", "--http-path", "/healthz"); err != nil || !strings.Contains(out, "succeeded") {
		t.Errorf("probe verb: %q %v", out, err)
	}
	if _, err := e.Agent.CLI("probe", "web/frontend", "--port", "8081"); err == nil {
		t.Error("probe verb succeeded against a closed port")
	}
	// Without the agent the node cannot reach the pod at all.
	if got, err := dialFrom(e.Fabric.Node, "10.8.0.5:8080"); err == nil {
		t.Errorf("node reached the pod directly: %q", got)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-m", "10.9.0.1/24")
	n := e.ENI(v, "10.9.0.5/24")
	e.ENI(v, "10.9.0.6/24")
	p := e.Pod("default", "measured")
	e.CLI("eni", "assign", "default/measured", "--mac", n.MAC)
	e.add(e.rt, p)
	if err := e.rt.Del(e.ctx, p, true); err != nil {
		t.Fatal(err)
	}
	// A pod without an assignment: its ADD fails with the plugin's 100.
	if _, err := e.rt.Add(e.ctx, e.Pod("default", "stray")); err == nil {
		t.Fatal("ADD of a pod without an ENI succeeded")
	}
	// Pods assigned that hold no ENI are pending: one assigned to the VPC
	// and "measured", whose ENI went back at its DEL.
	e.CLI("eni", "assign", "default/waiting", "--vpc", "vpc-m")
	_, body, err := httpGet(e.Fabric.Node, "http://"+e.Agent.MetricsAddr+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`nodeagent_cni_duration_seconds_count{code="0",command="ADD"} 1`,
		`nodeagent_cni_duration_seconds_count{code="0",command="DEL"} 1`,
		`nodeagent_cni_duration_seconds_count{code="100",command="ADD"} 1`,
		`nodeagent_eni_pool_size{state="free",vpc="vpc-m"} 2`,
		`nodeagent_eni_pool_size{state="attached",vpc="vpc-m"} 0`,
		`nodeagent_eni_assignments_pending{vpc="vpc-m"} 2`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="ConfirmAttach",grpc_service="nodeinfra.nodeagent.v1.ENIService",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="Attach",grpc_service="nodeinfra.nodeagent.v1.ENIService",grpc_type="unary"} 1`,
		`grpc_server_handling_seconds_bucket{grpc_method="Detach"`,
		`nodeagent_build_info{accel=`,
		`nodeagent_reconcile_runs_total{outcome="ok"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", grepLines(body, "nodeagent_cni|grpc_server_handled|nodeagent_eni"))
	}
}

// grepLines keeps the lines of s that match the regexp re.
func grepLines(s, re string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if ok, _ := regexp.MatchString(re, l); ok {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The plugin binary itself, run as a runtime would, on bad input.
func TestPluginRejectsBadInput(t *testing.T) {
	bin := filepath.Join(binDir, "cni-eni")
	run := func(cmd, stdin string, env ...string) (string, error) {
		c := exec.Command(bin)
		c.Env = append([]string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=c1", "CNI_NETNS=/run/netns/none-such",
			"CNI_IFNAME=eth0", "CNI_PATH=/opt/cni/bin"}, env...)
		c.Stdin = strings.NewReader(stdin)
		out, err := c.Output()
		return string(out), err
	}
	good := `{"cniVersion":"1.1.0","name":"n","type":"cni-eni","agentSocket":"/run/none/agent.sock"}`
	for _, tc := range []struct {
		name, cmd, stdin, args string
		code                   int
	}{
		{"not json", "ADD", "{", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", 6},
		{"no name", "ADD", `{"cniVersion":"1.1.0","type":"cni-eni"}`, "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", 7},
		{"relative socket", "ADD", `{"cniVersion":"1.1.0","name":"n","agentSocket":"agent.sock"}`, "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", 7},
		{"bad timeout", "ADD", `{"cniVersion":"1.1.0","name":"n","timeout":"soon"}`, "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", 7},
		{"old version", "ADD", `{"cniVersion":"0.4.0","name":"n"}`, "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", 1},
		{"no pod", "ADD", good, "IgnoreUnknown=1", 4},
		{"bad pod", "ADD", good, "K8S_POD_NAMESPACE=A_B;K8S_POD_NAME=b", 4},
		{"bad args", "ADD", good, "garbage", 4},
		{"no netns", "ADD", good, "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", 8},
		{"agent down, DEL", "DEL", good, "", 11},
		{"agent down, STATUS", "STATUS", good, "", 50},
	} {
		out, err := run(tc.cmd, tc.stdin, "CNI_ARGS="+tc.args)
		if err == nil {
			t.Errorf("%s: succeeded: %s", tc.name, out)
			continue
		}
		if !strings.Contains(out, fmt.Sprintf(`"code": %d`, tc.code)) {
			t.Errorf("%s: output %s, want code %d", tc.name, out, tc.code)
		}
	}
	out, err := run("VERSION", `{"cniVersion":"1.1.0"}`)
	if err != nil || !strings.Contains(out, `"1.0.0"`) || !strings.Contains(out, `"1.1.0"`) {
		t.Errorf("VERSION: %s %v", out, err)
	}
}

// The agent's API refuses bad requests with the right code and a message
// naming the problem, and its socket is private.
func TestAgentAPIErrors(t *testing.T) {
	e := newEnv(t)
	st, err := os.Stat(e.Agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket mode %v, want a 0600 socket", st.Mode())
	}
	v := e.VPC("vpc-a", "10.10.0.1/24")
	n := e.ENI(v, "10.10.0.5/24")
	for _, tc := range []struct {
		args  []string
		words []string
	}{
		{[]string{"eni", "add", "zz", "--vpc", "v", "--ip", "10.0.0.2/24", "--gateway", "10.0.0.1"}, []string{"InvalidArgument", "invalid MAC"}},
		{[]string{"eni", "add", "02:00:00:00:00:99", "--vpc", "v", "--ip", "10.0.0.2", "--gateway", "10.0.0.1"}, []string{"InvalidArgument", "ADDR/PREFIX"}},
		{[]string{"eni", "add", "02:00:00:00:00:99", "--vpc", "v", "--ip", "10.0.0.2/24", "--gateway", "10.9.0.1"}, []string{"InvalidArgument", "not a neighbour"}},
		{[]string{"eni", "add", "02:00:00:00:00:99", "--vpc", "v", "--ip", "10.0.0.2/24", "--gateway", "10.0.0.1"}, []string{"NotFound", "no link with this MAC"}},
		{[]string{"eni", "add", n.MAC, "--vpc", "vpc-b", "--ip", "10.10.0.5/24", "--gateway", "10.10.0.1"}, []string{"AlreadyExists"}},
		{[]string{"eni", "remove", "02:00:00:00:00:98"}, []string{"NotFound"}},
		{[]string{"eni", "assign", "a/b", "--mac", "02:00:00:00:00:98"}, []string{"NotFound", "not registered"}},
		{[]string{"eni", "assign", "Bad/b", "--vpc", "v"}, []string{"invalid pod namespace"}},
		{[]string{"eni", "assign", "a/b", "--vpc", "v", "--mac", n.MAC}, []string{"exactly one"}},
		{[]string{"probe", "a/b", "--port", "80"}, []string{"NotFound", "no attached ENI"}},
	} {
		_, err := e.Agent.CLI(tc.args...)
		if err == nil {
			t.Errorf("%v succeeded", tc.args)
			continue
		}
		for _, w := range tc.words {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: %v, want it to mention %q", tc.args, err, w)
			}
		}
	}
	// Registering the same ENI again is a no-op; an assigned ENI cannot be
	// removed, an unassigned one can.
	e.CLI("eni", "add", n.MAC, "--vpc", "vpc-a", "--ip", "10.10.0.5/24", "--gateway", "10.10.0.1", "--mtu", "1400")
	e.CLI("eni", "assign", "a/b", "--mac", n.MAC)
	if _, err := e.Agent.CLI("eni", "remove", n.MAC); err == nil || !strings.Contains(err.Error(), "FailedPrecondition") {
		t.Errorf("removing an assigned ENI: %v", err)
	}
	e.CLI("eni", "unassign", "a/b")
	e.CLI("eni", "remove", n.MAC)
	if out := e.CLI("eni", "list"); strings.Contains(out, n.MAC) || !strings.Contains(out, "MAC") {
		t.Errorf("eni list after remove:\n%s", out)
	}
}
