// Command net is the network part of `make demo`: it brings up a simulated
// node on this machine (network namespaces only; the machine's own network
// is left alone), runs the real nodeagent and cni-eni on it, and shows pods
// of two VPCs with the same CIDR talking within their VPC and isolated from
// the other VPC and from the node, then a pod sandbox (a QEMU VM) taking
// over a pod's ENI. Everything it creates (namespaces, the VM, the agent's
// cgroups) is deleted on exit, on error and on Ctrl-C.
//
// The demo runs in sections, one file each: the fabric and the pods
// (network.go), who talks to whom and the probes (checks.go), the sandbox
// (sandbox.go), the teardown (teardown.go); the agent and its CLI are in
// agent.go, the terminal output in output.go.
//
//	go run ./e2e/demo/net --bin DIR
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

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
	// The fabric: the VPCs' gateway (the same in each), the VPCs, and the
	// ENIs to create, register and hand to the pods.
	gw    netip.Prefix
	vpcs  map[string]*fabric.VPC
	specs []eniSpec
	enis  []fabric.ENI

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

// run runs the sections in order. What they create is deleted by the
// deferred calls here, whatever happens: the agent first, then its cgroup,
// the namespaces and the temporary directory.
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
	if err := d.buildFabric(); err != nil {
		return err
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

	for _, section := range []func() error{d.register, d.addPods, d.inspect, d.connectivity, d.probes} {
		if err := section(); err != nil {
			return err
		}
	}

	d.section("9. A pod sandbox: a QEMU VM takes over a pod's ENI")
	if err := d.sandbox(d.pods[0], d.pods[1]); err != nil {
		return err
	}

	if err := d.teardown(); err != nil {
		return err
	}

	fmt.Fprintln(d.out)
	if d.bad == 0 {
		fmt.Fprintln(d.out, d.green(fmt.Sprintf("✔ all %d checks as expected", d.checks)))
	} else {
		fmt.Fprintln(d.out, d.red(fmt.Sprintf("✘ %d of %d checks NOT as expected", d.bad, d.checks)))
	}
	return nil
}
