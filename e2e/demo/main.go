// Command demo brings up a simulated node on this machine (network
// namespaces only; the machine's own network is left alone), runs the real
// nodeagent and cni-eni on it, and shows pods of two VPCs with the same
// CIDR talking within their VPC and isolated from the other VPC and from
// the node, then a pod sandbox (a QEMU VM) taking over a pod's ENI. `make
// demo` runs it; everything it creates (namespaces, the VM, the agent's
// cgroups) is deleted on exit, on error and on Ctrl-C.
//
//	go run ./e2e/demo --bin DIR
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

const probePort = 8080

// startPPID is the parent (go run) when the demo started.
var startPPID int

// init runs on the main thread: there the parent-death signal is tied to
// the demo's process, so that a SIGTERM which kills `go run` (it only
// passes Ctrl-C on) still makes the demo tear down instead of lingering.
func init() {
	startPPID = os.Getppid()
	_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0, 0, 0)
}

func main() {
	bin := flag.String("bin", "bin", "directory holding the cni-eni and nodeagent binaries (make build)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "demo: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: must run as root: it creates network namespaces, links and bridges (try: sudo make demo)")
		os.Exit(2)
	}
	if err := preflight(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	abs, err := filepath.Abs(*bin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}

	// Ctrl-C, SIGTERM and a closed terminal cancel ctx: the step running
	// stops and the deferred teardown runs. Signals stay caught until the
	// end so a second Ctrl-C cannot cut the teardown short.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if os.Getppid() != startPPID {
		stop() // the parent died before the signal was set up
	}
	d := &demo{bin: abs, ctx: ctx, out: os.Stdout, color: isTerminal(os.Stdout)}
	err = d.run()
	switch {
	case ctx.Err() != nil:
		fmt.Fprintln(os.Stderr, "demo: interrupted; everything it created has been deleted")
		stop()
		os.Exit(130)
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo: error:", err)
		stop()
		os.Exit(1)
	case d.bad > 0:
		stop()
		os.Exit(1)
	}
}

func preflight(bin string) error {
	for _, b := range []string{"cni-eni", "nodeagent"} {
		p := filepath.Join(bin, b)
		st, err := os.Stat(p)
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("no executable %s (build it with make build, or pass --bin DIR)", p)
		}
	}
	for _, c := range []string{"ip", "ping"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s not found in PATH (make prereqs installs it)", c)
		}
	}
	return nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

type demo struct {
	bin   string
	ctx   context.Context
	out   io.Writer
	color bool

	tmp string
	// cgroupParent is the agent's --cgroup-parent, the demo's own so that
	// it can remove it at the end.
	cgroupParent string
	f            *fabric.Fabric
	agent        *fabric.Agent
	rt           *fabric.Runtime
	pods         []*pod

	checks, bad int
}

// pod is one demo pod and the ENI it is meant to get.
type pod struct {
	*fabric.Pod // set when the sandbox is created
	namespace   string
	name        string
	vpc         *fabric.VPC
	eni         fabric.ENI
	ip          string // the ENI's address, without prefix
	assign      string // "mac" or "vpc"
}

func (p *pod) ref() string { return p.namespace + "/" + p.name }

// eniSpec is an ENI to create and register.
type eniSpec struct {
	vpc, link, ip string
}

func (d *demo) run() (err error) {
	d.tmp, err = os.MkdirTemp("", "nodeinfra-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(d.tmp)
	defer func() {
		if err != nil && d.agent != nil && d.ctx.Err() == nil {
			d.agentLogTail(os.Stderr, 25)
		}
	}()

	fmt.Fprintln(d.out, d.bold("nodeinfra demo: one node, two VPCs with the same CIDR 10.10.0.0/24"))

	// 1. The simulated cloud.
	d.section("1. Fabric: node, VPCs and ENIs (network namespaces, veth pairs, bridges)")
	d.f, err = fabric.New()
	if err != nil {
		return err
	}
	defer d.f.Close()
	gw := netip.MustParsePrefix("10.10.0.1/24")
	vpcs := map[string]*fabric.VPC{}
	for _, name := range []string{"vpc-blue", "vpc-green"} {
		if err := d.interrupted(); err != nil {
			return err
		}
		v, err := d.f.AddVPC(name, gw)
		if err != nil {
			return err
		}
		vpcs[name] = v
	}
	fmt.Fprintf(d.out, "  node       netns %s, management address %s on mgmt0\n", fabric.Name(d.f.Node), fabric.NodeAddr)
	specs := []eniSpec{
		{"vpc-blue", "eni-blue1", "10.10.0.11"}, {"vpc-blue", "eni-blue2", "10.10.0.12"},
		{"vpc-green", "eni-green1", "10.10.0.11"}, {"vpc-green", "eni-green2", "10.10.0.13"},
	}
	enis := make([]fabric.ENI, len(specs))
	for i, s := range specs {
		if err := d.interrupted(); err != nil {
			return err
		}
		enis[i], err = d.f.AddENI(vpcs[s.vpc], s.link)
		if err != nil {
			return err
		}
	}
	for _, name := range []string{"vpc-blue", "vpc-green"} {
		v := vpcs[name]
		fmt.Fprintf(d.out, "  %-10s netns %s, bridge br0 with gateway %s\n", name, fabric.Name(v.NS), v.Gateway)
		for i, s := range specs {
			if s.vpc == name {
				fmt.Fprintf(d.out, "    ENI %-10s mac %s, in the node namespace (for %s)\n", enis[i].HostName, enis[i].MAC, s.ip)
			}
		}
	}

	// 2. The agent.
	d.section("2. nodeagent serve, in the node namespace")
	agentDir := filepath.Join(d.tmp, "agent")
	if err := os.MkdirAll(agentDir, 0o755); err != nil {
		return err
	}
	if err := d.interrupted(); err != nil {
		return err
	}
	// Runs after the agent is stopped; sandboxes get cgroups under it.
	d.cgroupParent = "/nodeinfra-demo-" + randHex(4)
	defer func() {
		if e := d.removeCgroupParent(); e != nil {
			fmt.Fprintln(os.Stderr, "demo:", e)
		}
	}()
	start := time.Now()
	agent, err := d.startAgent(agentDir) // on error it has killed the daemon and shown its log
	if err != nil {
		return err
	}
	d.agent = agent
	// Runs before f.Close: the daemon must leave the node namespace first.
	defer d.agent.Kill()
	fmt.Fprintf(d.out, "  pid %d, socket %s, answering after %v\n", d.agent.Pid(), d.agent.Socket, time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(d.out, "  --cgroup-parent %s: the sandboxes' cgroups, removed at the end\n", d.cgroupParent)
	fmt.Fprintf(d.out, "  (every nodeagent command below also gets --socket %s)\n", d.agent.Socket)

	// 3. Inventory and assignments.
	d.section("3. Register the ENIs and assign pods to them")
	for i, s := range specs {
		_, err := d.cli(false, "eni", "add", "--mac", enis[i].MAC, "--vpc", s.vpc, "--ip", s.ip+"/24",
			"--gateway", gw.Addr().String(), "--mtu", "1400")
		if err != nil {
			return err
		}
	}
	d.pods = []*pod{
		{vpc: vpcs["vpc-blue"], eni: enis[0], ip: "10.10.0.11", assign: "mac", namespace: "blue", name: "web"},
		{vpc: vpcs["vpc-blue"], eni: enis[1], ip: "10.10.0.12", assign: "vpc", namespace: "blue", name: "db"},
		{vpc: vpcs["vpc-green"], eni: enis[2], ip: "10.10.0.11", assign: "mac", namespace: "green", name: "web"},
		{vpc: vpcs["vpc-green"], eni: enis[3], ip: "10.10.0.13", assign: "vpc", namespace: "green", name: "cache"},
	}
	for _, p := range d.pods {
		target := []string{"--mac", p.eni.MAC}
		if p.assign == "vpc" {
			target = []string{"--vpc", p.vpc.Name}
		}
		if _, err := d.cli(true, append([]string{"eni", "assign", "--pod", p.ref()}, target...)...); err != nil {
			return err
		}
	}

	// 4. Pod sandboxes, as containerd would set them up.
	d.section("4. Create 4 pod sandboxes and run CNI ADD through libcni (cniVersion 1.1.0)")
	d.rt, err = fabric.NewRuntime(d.f.Node, d.bin, filepath.Join(d.tmp, "cni-cache"), fabric.Conflist("1.1.0", d.agent.Socket))
	if err != nil {
		return err
	}
	// In order: each VPC's --mac pod before its --vpc pod, so the --vpc pod
	// gets the VPC's other ENI.
	for _, p := range d.pods {
		if err := d.interrupted(); err != nil {
			return err
		}
		fp, err := d.f.NewPod(p.namespace, p.name)
		if err != nil {
			return err
		}
		p.Pod = fp
		raw, err := d.rt.Add(d.ctx, p.Pod)
		if err != nil {
			return fmt.Errorf("ADD %s: %w", p.ref(), err)
		}
		res, err := types100.GetResult(raw)
		if err != nil {
			return fmt.Errorf("ADD %s: result: %w", p.ref(), err)
		}
		var mac, addr, via string
		if len(res.Interfaces) > 0 {
			mac = res.Interfaces[0].Mac
		}
		if len(res.IPs) > 0 {
			addr, via = res.IPs[0].Address.String(), res.IPs[0].Gateway.String()
		}
		fmt.Fprintf(d.out, "  ADD %-11s -> netns %s: eth0 %s %s via %s\n", p.ref(), fabric.Name(p.NS), mac, addr, via)
		if mac != p.eni.MAC {
			return fmt.Errorf("ADD %s: got ENI %s, want %s (%s)", p.ref(), mac, p.eni.MAC, p.eni.HostName)
		}
	}

	d.section("5. What the agent knows")
	if _, err := d.cli(true, "eni", "list"); err != nil {
		return err
	}
	if _, err := d.cli(true, "status"); err != nil {
		return err
	}

	d.section("6. Inside the pods")
	for _, p := range d.pods {
		if err := d.interrupted(); err != nil {
			return err
		}
		args := []string{"netns", "exec", fabric.Name(p.NS), "ip", "-br", "addr"}
		fmt.Fprintf(d.out, "  %s %s\n", d.dim("# "+p.ref()+" ("+p.vpc.Name+")"), d.dim("$ ip "+strings.Join(args, " ")))
		out, err := exec.CommandContext(d.ctx, "ip", args...).CombinedOutput()
		d.indent(string(out))
		if err != nil {
			return fmt.Errorf("ip -br addr in %s: %w", p.ref(), err)
		}
	}

	d.section("7. Who can talk to whom (ping -c 2 -i 0.2 -W 1)")
	blueWeb, blueDB, greenWeb, greenCache := d.pods[0], d.pods[1], d.pods[2], d.pods[3]
	node := fabric.NodeAddr.Addr().String()
	for _, c := range []struct {
		from  *pod
		to    string
		what  string
		reach bool
	}{
		{blueWeb, blueDB.ip, "same VPC: " + blueDB.ref() + " in vpc-blue", true},
		{greenWeb, greenCache.ip, "same VPC: " + greenCache.ref() + " in vpc-green", true},
		{blueWeb, greenCache.ip, "other VPC: exists only in vpc-green", false},
		{greenWeb, blueDB.ip, "other VPC: exists only in vpc-blue", false},
		{blueWeb, node, "the node's management address", false},
		{greenWeb, node, "the node's management address", false},
	} {
		if err := d.ping(c.from, c.to, c.what, c.reach); err != nil {
			return err
		}
	}

	d.section("8. Probes go through the agent (the node itself has no route to pods)")
	accepted, closeListener, err := listenIn(blueDB, probePort)
	if err != nil {
		return err
	}
	defer closeListener()
	fmt.Fprintf(d.out, "  TCP listener on :%d inside %s (netns %s)\n", probePort, blueDB.ref(), fabric.Name(blueDB.NS))
	out, err := d.cli(true, "probe", "--pod", blueDB.ref(), "--port", fmt.Sprint(probePort))
	if e := d.interrupted(); e != nil {
		return e
	}
	ok := err == nil && strings.Contains(out, "succeeded")
	from := "the listener saw no connection"
	select {
	case a := <-accepted:
		from = "the listener saw a connection from " + a
	case <-time.After(time.Second):
	}
	d.verdict(ok, fmt.Sprintf("probe of %s port %d through the agent: %s; %s", blueDB.ref(), probePort, okWord(ok, "succeeded", "FAILED"), from))
	_, err = d.cli(true, "probe", "--pod", blueDB.ref(), "--port", fmt.Sprint(probePort+1))
	if e := d.interrupted(); e != nil {
		return e
	}
	d.verdict(err != nil, fmt.Sprintf("probe of %s port %d (nothing listens there): %s", blueDB.ref(), probePort+1, okWord(err != nil, "fails", "SUCCEEDED")))
	closeListener()

	d.section("9. A pod sandbox: a QEMU VM takes over a pod's ENI")
	if err := d.sandbox(blueWeb, blueDB); err != nil {
		return err
	}

	d.section("10. Teardown: CNI DEL, ENIs back to the node")
	home := true
	for _, p := range d.pods {
		if err := d.interrupted(); err != nil {
			return err
		}
		if err := d.rt.Del(d.ctx, p.Pod, true); err != nil {
			return fmt.Errorf("DEL %s: %w", p.ref(), err)
		}
		st, found, err := fabric.FindLink(d.f.Node, p.eni.MAC)
		if err != nil {
			return err
		}
		where := "NOT back in the node namespace"
		if found {
			where = fmt.Sprintf("back in the node namespace as %s, %s, addresses: %s", st.Name, upDown(st.Up), orNone(st.Addrs))
		}
		fmt.Fprintf(d.out, "  DEL %-11s ENI %s\n", p.ref(), where)
		if !found || st.Name != p.eni.HostName || st.Up || len(st.Addrs) != 0 {
			home = false
		}
	}
	if _, err := d.cli(true, "eni", "list"); err != nil {
		return err
	}
	free, total, err := d.freeENIs()
	if err != nil {
		return err
	}
	where := "each down and unaddressed in the node namespace"
	if !home {
		where = "but NOT all back in the node namespace as they were"
	}
	d.verdict(free == total && total == len(specs) && home, fmt.Sprintf("after DEL %d of %d ENIs are free, %s", free, total, where))

	fmt.Fprintln(d.out, "  stopping nodeagent, deleting the namespaces")
	names := []string{fabric.Name(d.f.Node)}
	for _, v := range vpcs {
		names = append(names, fabric.Name(v.NS))
	}
	for _, p := range d.pods {
		names = append(names, fabric.Name(p.NS))
	}
	d.agent.Stop()
	cgErr := d.removeCgroupParent()
	d.f.Close()
	var left []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/run/netns", n)); err == nil {
			left = append(left, n)
		}
	}
	if len(left) == 0 {
		d.verdict(true, fmt.Sprintf("nodeagent stopped, all %d namespaces of the demo deleted", len(names)))
	} else {
		d.verdict(false, fmt.Sprintf("namespaces still there: %s", strings.Join(left, " ")))
	}
	if cgErr == nil {
		d.verdict(true, fmt.Sprintf("the agent's cgroup %s removed from every hierarchy", d.cgroupParent))
	} else {
		d.verdict(false, cgErr.Error())
	}

	fmt.Fprintln(d.out)
	if d.bad == 0 {
		fmt.Fprintln(d.out, d.green(fmt.Sprintf("✔ all %d checks as expected", d.checks)))
	} else {
		fmt.Fprintln(d.out, d.red(fmt.Sprintf("✘ %d of %d checks NOT as expected", d.bad, d.checks)))
	}
	return nil
}

// sandboxInfo is what the demo reads of `nodeagent sandbox get -o json`.
type sandboxInfo struct {
	State     string   `json:"state"`
	Reason    string   `json:"reason"`
	Pid       int      `json:"pid"`
	Accel     string   `json:"accel"`
	Addresses []string `json:"addresses"`
}

// sandbox runs a pod sandbox, a QEMU VM, in p's namespace, where cni-eni
// put p's ENI as eth0: the guest takes over the ENI's MAC and address,
// reaches peer (a pod of the same VPC) and is reached by it, but not by
// the node; deleting the sandbox gives eth0 its address back. The VM is
// deleted whatever happens, also on an error or Ctrl-C. Without the guest
// files of make build (or without QEMU) the section is skipped.
func (d *demo) sandbox(p, peer *pod) (err error) {
	guest := filepath.Join(d.bin, "nodeagent-guest")
	for _, f := range []string{"vmlinux", "initramfs.cpio"} {
		if _, err := os.Stat(filepath.Join(guest, f)); err != nil {
			fmt.Fprintf(d.out, "  %s\n", d.yellow(fmt.Sprintf("skipped: no guest kernel and initramfs in %s (make build puts them there)", guest)))
			return nil
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		fmt.Fprintf(d.out, "  %s\n", d.yellow("skipped: qemu-system-x86_64 not found in PATH (make prereqs installs it)"))
		return nil
	}
	if err := d.interrupted(); err != nil {
		return err
	}
	id := p.namespace + "-" + p.name
	deleted := false
	defer func() {
		if deleted {
			return
		}
		if e := d.removeSandbox(id); e != nil {
			fmt.Fprintln(os.Stderr, "demo:", e)
			if err == nil {
				err = e
			}
		}
	}()

	fmt.Fprintf(d.out, "  %s\n", d.dim(fmt.Sprintf("# in %s's namespace, where cni-eni put its ENI %s (%s) as eth0", p.ref(), p.eni.MAC, p.ip)))
	start := time.Now()
	if _, err := d.cli(true, "sandbox", "create", id, "--netns", p.NS.Path(), "--wait"); err != nil {
		return err
	}
	took := time.Since(start)
	out, err := d.agent.CLI("sandbox", "get", id, "-o", "json")
	if err != nil {
		return err
	}
	var sb sandboxInfo
	if err := json.Unmarshal([]byte(out), &sb); err != nil {
		return fmt.Errorf("sandbox get %s -o json: %w", id, err)
	}
	if sb.State != "READY" {
		return fmt.Errorf("sandbox %s is %s, not Ready: %s", id, sb.State, sb.Reason)
	}
	fmt.Fprintf(d.out, "  created and Ready in %v (QEMU pid %d, accel %s); the VM took over %s\n",
		took.Round(time.Millisecond), sb.Pid, sb.Accel, orNone(sb.Addresses))
	if _, err := d.cli(true, "sandbox", "list"); err != nil {
		return err
	}
	if _, err := d.podAddrs(p, "host side: eth0 keeps no address, tap0 carries the VM"); err != nil {
		return err
	}

	out, code, err := d.sandboxExec(id, "ip", "addr", "show", "eth0")
	d.indent(out)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit status %d", code)
	}
	if err != nil {
		return fmt.Errorf("sandbox exec %s ip addr show eth0: %w", id, err)
	}
	ok := strings.Contains(out, " "+p.ip+"/24 ") && strings.Contains(out, p.eni.MAC)
	d.verdict(ok, fmt.Sprintf("the guest's eth0 has the ENI's MAC %s and %s's address %s/24: %s", p.eni.MAC, p.ref(), p.ip, okWord(ok, "yes", "NO")))

	out, code, err = d.sandboxExec(id, "ping", "-c", "2", "-W", "2", peer.ip)
	if err != nil {
		d.indent(out)
		return fmt.Errorf("sandbox exec %s ping: %w", id, err)
	}
	d.indent(pingSummary(out))
	label := fmt.Sprintf("the VM (%s) -> %s (same VPC: %s in %s): ", p.ip, peer.ip, peer.ref(), peer.vpc.Name)
	if code == 0 {
		label += okWord(true, "replies", "")
	} else {
		label += okWord(false, "", fmt.Sprintf("NO REPLY (exit status %d)", code))
	}
	d.verdict(code == 0, label)
	if err := d.ping(peer, p.ip, "the VM, in "+p.ref()+"'s namespace", true); err != nil {
		return err
	}
	if err := d.pingIn(fabric.Name(d.f.Node), "the node", fabric.NodeAddr.Addr().String(), p.ip, "the VM", false); err != nil {
		return err
	}

	if _, err := d.cli(true, "sandbox", "delete", id); err != nil {
		return err
	}
	deleted = true
	left := qemuPids(id)
	links, err := d.podAddrs(p, "after the delete")
	if err != nil {
		return err
	}
	st, found, err := fabric.FindLink(p.NS, p.eni.MAC)
	if err != nil {
		return err
	}
	var v4 []string // the kernel's IPv6 link-local address is not cni-eni's
	for _, a := range st.Addrs {
		if !strings.Contains(a, ":") {
			v4 = append(v4, a)
		}
	}
	back := found && st.Name == "eth0" && st.Up && len(v4) == 1 && v4[0] == p.ip+"/24"
	tap := strings.Contains(links, "tap0")
	msg := fmt.Sprintf("after the delete no QEMU with sandbox-%s on its command line", id)
	if len(left) > 0 {
		msg = fmt.Sprintf("after the delete QEMU STILL RUNS (pid %v)", left)
	}
	if back {
		msg += fmt.Sprintf(", %s's eth0 has %s/24 back", p.ref(), p.ip)
	} else {
		msg += fmt.Sprintf(", %s's eth0 NOT as cni-eni left it (%s %s, IPv4 addresses %s)", p.ref(), st.Name, upDown(st.Up), orNone(v4))
	}
	if tap {
		msg += ", tap0 LEFT BEHIND"
	} else {
		msg += ", no tap0"
	}
	d.verdict(len(left) == 0 && back && !tap, msg)
	return nil
}

// podAddrs shows `ip -br addr` in p's namespace with a comment, and
// returns it.
func (d *demo) podAddrs(p *pod, comment string) (string, error) {
	if err := d.interrupted(); err != nil {
		return "", err
	}
	args := []string{"netns", "exec", fabric.Name(p.NS), "ip", "-br", "addr"}
	fmt.Fprintf(d.out, "  %s %s\n", d.dim("# "+p.ref()+", "+comment), d.dim("$ ip "+strings.Join(args, " ")))
	out, err := exec.CommandContext(d.ctx, "ip", args...).CombinedOutput()
	d.indent(string(out))
	if e := d.interrupted(); e != nil {
		return "", e
	}
	if err != nil {
		return "", fmt.Errorf("ip -br addr in %s: %w", p.ref(), err)
	}
	return string(out), nil
}

// sandboxExec runs argv in sandbox id through `nodeagent sandbox exec`,
// showing the command, and returns what it printed and its exit status.
func (d *demo) sandboxExec(id string, argv ...string) (string, int, error) {
	if err := d.interrupted(); err != nil {
		return "", 0, err
	}
	fmt.Fprintf(d.out, "  %s\n", d.dim("$ nodeagent sandbox exec "+id+" -- "+strings.Join(argv, " ")))
	args := append([]string{"sandbox", "exec", id, "--socket", d.agent.Socket, "--"}, argv...)
	b, err := exec.CommandContext(d.ctx, d.agent.Bin, args...).CombinedOutput()
	if e := d.interrupted(); e != nil {
		return string(b), 0, e
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(b), ee.ExitCode(), nil
	}
	if err != nil {
		return string(b), 0, err
	}
	return string(b), 0, nil
}

// removeSandbox deletes sandbox id through the agent, on a context of its
// own (the demo's may be cancelled). If the agent does not do it (a Ctrl-C
// reaches the agent too, and QEMU outlives it), the agent is killed, so
// that it starts no other QEMU, and the sandbox's QEMU with it.
func (d *demo) removeSandbox(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.agent.Bin, "sandbox", "delete", id, "--socket", d.agent.Socket).CombinedOutput()
	if err == nil && len(qemuPids(id)) == 0 {
		return nil
	}
	switch {
	case err != nil && d.ctx.Err() != nil:
		fmt.Fprintf(os.Stderr, "demo: the agent is gone (a Ctrl-C stops it too); killing the QEMU of sandbox %s\n", id)
	case err != nil:
		fmt.Fprintf(os.Stderr, "demo: nodeagent sandbox delete %s: %v: %s; killing its QEMU\n", id, err, strings.TrimSpace(string(out)))
	}
	d.agent.Kill()
	for _, pid := range qemuPids(id) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && len(qemuPids(id)) > 0; {
		time.Sleep(50 * time.Millisecond)
	}
	if left := qemuPids(id); len(left) > 0 {
		return fmt.Errorf("QEMU of sandbox %s still runs: pid %v", id, left)
	}
	return nil
}

// qemuPids lists the processes running with -name sandbox-<id> on their
// command line: the sandbox's QEMU, as `pgrep -f sandbox-<id>` finds it.
func qemuPids(id string) []int {
	want := []byte("\x00-name\x00sandbox-" + id + "\x00")
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroupParent removes the agent's --cgroup-parent, and any sandbox
// cgroup left under it, from every hierarchy (v1 controllers and v2). The
// agent must have stopped and no QEMU run.
func (d *demo) removeCgroupParent() error {
	if d.cgroupParent == "" {
		return nil
	}
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", d.cgroupParent))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", d.cgroupParent))
	var failed []string
	for _, dir := range dirs {
		if err := rmdirCgroup(dir); err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("cgroup %s not removed: %s", d.cgroupParent, strings.Join(failed, "; "))
	}
	return nil
}

// rmdirCgroup removes a cgroup directory after its child cgroups,
// retrying for a while as the kernel may still see a group busy with a
// task that just exited.
func rmdirCgroup(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := rmdirCgroup(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	for delay := 10 * time.Millisecond; ; delay *= 2 {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if (!errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EAGAIN)) || delay > time.Second {
			return &os.PathError{Op: "rmdir", Path: dir, Err: err}
		}
		time.Sleep(delay)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startAgent runs fabric.StartAgent in the node namespace. That polls the
// socket for up to 15s without noticing a daemon that died meanwhile (as it
// does on a Ctrl-C, which reaches the whole process group): on interruption
// a listener of our own answers the poll so it returns at once, and the
// daemon is killed.
func (d *demo) startAgent(dir string) (*fabric.Agent, error) {
	type started struct {
		a   *fabric.Agent
		err error
	}
	ch := make(chan started, 1)
	go func() {
		a, err := fabric.StartAgent(filepath.Join(d.bin, "nodeagent"), d.f.Node, dir, "--cgroup-parent", d.cgroupParent)
		ch <- started{a, err}
	}()
	select {
	case r := <-ch:
		return r.a, r.err
	case <-d.ctx.Done():
	}
	// The daemon may still remove the socket path as it starts or stops, so
	// put a listener back whenever the path is gone.
	sock := filepath.Join(dir, "agent.sock")
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for {
		if _, err := os.Stat(sock); err != nil {
			if l, err := net.Listen("unix", sock); err == nil {
				ls = append(ls, l)
			}
		}
		select {
		case r := <-ch:
			if r.a != nil {
				r.a.Kill()
			}
			return nil, d.interrupted()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ping pings to from inside p and judges the outcome.
func (d *demo) ping(p *pod, to, what string, wantReach bool) error {
	return d.pingIn(fabric.Name(p.NS), p.ref(), p.ip, to, what, wantReach)
}

// pingIn pings to from the namespace netns, that of who (whose address is
// from), and judges the outcome.
func (d *demo) pingIn(netns, who, from, to, what string, wantReach bool) error {
	if err := d.interrupted(); err != nil {
		return err
	}
	args := []string{"netns", "exec", netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", to}
	fmt.Fprintf(d.out, "  %s\n", d.dim("$ ip "+strings.Join(args, " ")+"   # from "+who))
	out, err := exec.CommandContext(d.ctx, "ip", args...).CombinedOutput()
	if e := d.interrupted(); e != nil {
		return e
	}
	reached := err == nil
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && (ee.ExitCode() == 1 || ee.ExitCode() == 2):
		// 1: no reply; 2: an error such as "Network is unreachable".
	default:
		d.indent(string(out))
		return fmt.Errorf("ping from %s: %w", who, err)
	}
	d.indent(pingSummary(string(out)))
	label := fmt.Sprintf("%s (%s) -> %s (%s): ", who, from, to, what)
	if reached {
		label += okWord(wantReach, "replies", "REPLIES")
	} else {
		label += okWord(!wantReach, "no reply", "NO REPLY")
	}
	d.verdict(reached == wantReach, label)
	return nil
}

// pingSummary keeps ping's statistics line and any error it printed.
func pingSummary(out string) string {
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "", strings.HasPrefix(l, "PING "), strings.HasPrefix(l, "---"), strings.HasPrefix(l, "rtt "),
			strings.HasPrefix(l, "round-trip "), // busybox's, in the sandbox
			strings.Contains(l, " bytes from "):
		default:
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// listenIn starts a TCP listener inside p's namespace; accepted reports the
// peer address of each connection.
func listenIn(p *pod, port int) (accepted <-chan string, closeFn func(), err error) {
	var l net.Listener
	err = p.NS.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listen in %s: %w", p.ref(), err)
	}
	ch := make(chan string, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case ch <- c.RemoteAddr().String():
			default:
			}
			_, _ = io.WriteString(c, p.ref()+"\n")
			c.Close()
		}
	}()
	return ch, func() { l.Close() }, nil
}

// cli runs a nodeagent client verb against the demo's agent, showing the
// command and, if show, what it printed (stdout and stderr, as a terminal
// would).
func (d *demo) cli(show bool, args ...string) (string, error) {
	if err := d.interrupted(); err != nil {
		return "", err
	}
	fmt.Fprintf(d.out, "  %s\n", d.dim("$ nodeagent "+strings.Join(args, " ")))
	cmd := exec.CommandContext(d.ctx, d.agent.Bin, append(args, "--socket", d.agent.Socket)...)
	b, err := cmd.CombinedOutput()
	out := string(b)
	if e := d.interrupted(); e != nil {
		return out, e
	}
	if show || err != nil {
		d.indent(out)
	}
	if err != nil {
		return out, fmt.Errorf("nodeagent %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// freeENIs counts free ENIs with `nodeagent eni list -o json`.
func (d *demo) freeENIs() (free, total int, err error) {
	out, err := d.agent.CLI("eni", "list", "-o", "json")
	if err != nil {
		return 0, 0, err
	}
	var l struct {
		ENIs []struct {
			State string `json:"state"`
		} `json:"enis"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		return 0, 0, fmt.Errorf("eni list -o json: %w", err)
	}
	for _, e := range l.ENIs {
		if e.State == "ENI_STATE_FREE" {
			free++
		}
	}
	return free, len(l.ENIs), nil
}

func (d *demo) agentLogTail(w io.Writer, n int) {
	b, err := os.ReadFile(filepath.Join(d.agent.Dir, "agent.log"))
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(w, "demo: last lines of the nodeagent log:\n%s\n", strings.Join(lines, "\n"))
}

func (d *demo) interrupted() error {
	if d.ctx.Err() != nil {
		return errors.New("interrupted")
	}
	return nil
}

func (d *demo) section(title string) {
	fmt.Fprintf(d.out, "\n%s\n", d.bold("== "+title))
}

func (d *demo) indent(s string) {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return
	}
	for _, l := range strings.Split(s, "\n") {
		fmt.Fprintf(d.out, "    %s\n", strings.TrimRight(l, " "))
	}
}

func (d *demo) verdict(ok bool, msg string) {
	d.checks++
	if ok {
		fmt.Fprintf(d.out, "  %s %s\n", d.green("✔"), msg)
		return
	}
	d.bad++
	fmt.Fprintf(d.out, "  %s %s\n", d.red("✘"), d.red(msg+"  <- unexpected"))
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

func orNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ",")
}

func okWord(asExpected bool, yes, no string) string {
	if asExpected {
		return yes + ", as expected"
	}
	return no
}

func (d *demo) paint(code, s string) string {
	if !d.color {
		return s
	}
	return "\x1b[" + code + "m" + s + "\x1b[0m"
}

func (d *demo) bold(s string) string   { return d.paint("1", s) }
func (d *demo) dim(s string) string    { return d.paint("2", s) }
func (d *demo) green(s string) string  { return d.paint("32", s) }
func (d *demo) red(s string) string    { return d.paint("31", s) }
func (d *demo) yellow(s string) string { return d.paint("33", s) }
