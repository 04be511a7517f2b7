package sandbox_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc/codes"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// podLinks lists the links of a namespace with their addresses.
func podLinks(t *testing.T, n ns.NetNS) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := n.Do(func(ns.NetNS) error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			out[l.Attrs().Name] = nil
			for _, a := range addrs {
				out[l.Attrs().Name] = append(out[l.Attrs().Name], a.IPNet.String())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func pingFrom(n ns.NetNS, addr string) error {
	out, err := exec.Command("nsenter", "--net="+n.Path(), "ping", "-c", "2", "-i", "0.2", "-W", "2", addr).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s: %w: %s", addr, err, out)
	}
	return nil
}

// A sandbox in a pod namespace that cni-eni set up takes over the pod's
// ENI: the guest has the ENI's MAC and address, reaches a pod of its VPC,
// that pod reaches it, the node does not, and the host side keeps no
// address. Deleting the sandbox gives eth0 back as cni-eni left it.
func TestSandboxOnPodNetwork(t *testing.T) { testOnPodNetwork(t) }

func testOnPodNetwork(t *testing.T, flags ...string) {
	e := newScenario(t, true, flags...)
	v := e.VPC("vpc-s", "10.66.0.1/24")
	ea, eb := e.ENI(v, "10.66.0.11/24"), e.ENI(v, "10.66.0.12/24")
	rt := e.runtime()
	pa, pb := e.podOn(rt, "vm", ea), e.podOn(rt, "plain", eb)

	s := e.create(&apiv1.SandboxSpec{Id: "vm-net", Vcpus: 1, MemoryMib: 128, Netns: pa.NS.Path()})
	if len(s.Addresses) != 1 || s.Addresses[0] != "10.66.0.11/24" {
		t.Errorf("sandbox addresses %v, want [10.66.0.11/24]", s.Addresses)
	}
	// The admin finds the VM with ps by its sandbox ID.
	e.checkFindable(s)

	addr := e.sh("vm-net", "ip addr show eth0")
	if !strings.Contains(addr, "10.66.0.11/24") || !strings.Contains(addr, strings.ToLower(ea.MAC)) {
		t.Errorf("guest eth0 lacks the ENI's address or MAC %s:\n%s", ea.MAC, addr)
	}
	if route := e.sh("vm-net", "ip route"); !strings.Contains(route, "default via 10.66.0.1") {
		t.Errorf("guest has no default route via the VPC gateway:\n%s", route)
	}
	e.sh("vm-net", "ping -c 2 -W 2 10.66.0.12")
	if err := pingFrom(pb.NS, "10.66.0.11"); err != nil {
		t.Errorf("same-VPC pod cannot reach the VM: %v", err)
	}
	if err := pingFrom(e.Fabric.Node, "10.66.0.11"); err == nil {
		t.Error("the node reached the VM's pod address")
	}
	// The host side of the pod keeps no address; the tap carries the VM.
	links := podLinks(t, pa.NS)
	if a, ok := links["eth0"]; !ok || len(a) != 0 {
		t.Errorf("pod eth0 on the host side: %v (want present, no address)", links)
	}
	if _, ok := links["tap0"]; !ok {
		t.Errorf("no tap in the pod namespace: %v", links)
	}

	e.deleteSandbox("vm-net")
	if len(e.qemuPids("vm-net")) > 0 {
		t.Error("qemu still runs after delete")
	}
	links = podLinks(t, pa.NS)
	if a := links["eth0"]; len(a) != 1 || a[0] != "10.66.0.11/24" {
		t.Errorf("eth0 after delete: %v, want its address back", links)
	}
	if _, ok := links["tap0"]; ok {
		t.Error("tap left behind after delete")
	}
	if err := rt.Check(e.ctx, pa); err != nil {
		t.Errorf("CNI CHECK after the sandbox is gone: %v", err)
	}
	if err := rt.Del(e.ctx, pa, true); err != nil {
		t.Errorf("CNI DEL: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.Agent.StateDir, "sandboxes", "vm-net")); !os.IsNotExist(err) {
		t.Errorf("sandbox dir left behind: %v", err)
	}
}

// runtime is a CNI runtime (cniVersion 1.0.0, as containerd 1.6 needs)
// against the env's agent.
func (e *env) runtime() *fabric.Runtime {
	e.t.Helper()
	rt, err := fabric.NewRuntime(e.Fabric.Node, binDir, e.t.TempDir(), fabric.Conflist("1.0.0", e.Agent.Socket))
	if err != nil {
		e.t.Fatal(err)
	}
	return rt
}

// podOn creates pod tenant/name, assigns it the ENI n and runs CNI ADD, so
// that n is its eth0.
func (e *env) podOn(rt *fabric.Runtime, name string, n fabric.ENI) *fabric.Pod {
	e.t.Helper()
	p := e.Pod("tenant", name)
	e.CLI("eni", "assign", "tenant/"+name, "--mac", n.MAC)
	if _, err := rt.Add(e.ctx, p); err != nil {
		e.t.Fatalf("ADD %s: %v", name, err)
	}
	return p
}

// Exec carries stdin, stdout, stderr and the exit code, through the API
// and through the CLI; create, stop and delete are idempotent by ID.
func TestSandboxExecAndIdempotency(t *testing.T) { testExecAndIdempotency(t) }

func testExecAndIdempotency(t *testing.T, flags ...string) {
	e := newScenario(t, true, flags...)
	spec := &apiv1.SandboxSpec{Id: "vm-exec", Vcpus: 1, MemoryMib: 128}
	e.create(spec)
	out, errOut, exit := e.exec("vm-exec", "hello from stdin\n", "sh", "-c", "read l; echo \"got $l\"; echo oops >&2; exit 7")
	if out != "got hello from stdin\n" || errOut != "oops\n" || exit != 7 {
		t.Errorf("exec: stdout %q stderr %q code %d", out, errOut, exit)
	}
	if _, _, err := e.execErr("vm-exec", "/no/such/program"); code(err) != codes.NotFound || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing program: %v, want NotFound saying so", err)
	}
	// The guest kernel has what workloads expect: file locks, System V IPC,
	// inotify, AIO.
	e.sh("vm-exec", "[ -e /proc/locks ] && [ -d /proc/sysvipc ] && [ -e /proc/sys/fs/inotify/max_user_watches ] && [ -e /proc/sys/fs/aio-max-nr ]")
	cli := exec.Command(filepath.Join(binDir, "nodeagent"), "sandbox", "exec", "vm-exec", "--socket", e.Agent.Socket, "--", "sh", "-c", "cat; exit 3")
	cli.Stdin = strings.NewReader("piped")
	b, err := cli.Output()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || string(b) != "piped" {
		t.Errorf("CLI exec: %q, %v (want output \"piped\", exit 3)", b, err)
	}

	// The same spec again is the same sandbox; another spec is refused.
	again, err := e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: spec, Wait: true})
	if err != nil || again.State != apiv1.Sandbox_READY || again.Pid != e.get("vm-exec").Pid {
		t.Errorf("create again: %v, %v", again, err)
	}
	if _, err := e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "vm-exec", Vcpus: 2}}); code(err) != codes.AlreadyExists {
		t.Errorf("same ID, other spec: %v, want AlreadyExists", err)
	}

	if body := metrics(t, e.env); !strings.Contains(body, `nodeagent_sandboxes{state="Ready"} 1`) {
		t.Errorf("metrics lack one Ready sandbox:\n%s", grepLines(body, "nodeagent_sandboxes"))
	}
	list := e.CLI("sandbox", "list")
	if !strings.Contains(list, "vm-exec") || !strings.Contains(list, "Ready") && !strings.Contains(list, "READY") {
		t.Errorf("sandbox list:\n%s", list)
	}
	for i := 0; i < 2; i++ {
		s, err := e.cl.StopSandbox(e.ctx, &apiv1.StopSandboxRequest{Id: "vm-exec", TimeoutSeconds: 10})
		if err != nil || s.State != apiv1.Sandbox_STOPPED {
			t.Fatalf("stop #%d: %v, %v", i+1, s, err)
		}
	}
	if len(e.qemuPids("vm-exec")) > 0 {
		t.Error("qemu runs after stop")
	}
	if _, _, err := e.execErr("vm-exec"); code(err) != codes.FailedPrecondition {
		t.Errorf("exec in a stopped sandbox: %v, want FailedPrecondition", err)
	}
	e.deleteSandbox("vm-exec")
	e.deleteSandbox("vm-exec")
	if _, err := e.cl.GetSandbox(e.ctx, &apiv1.GetSandboxRequest{Id: "vm-exec"}); code(err) != codes.NotFound {
		t.Errorf("get after delete: %v, want NotFound", err)
	}
}

// execErr starts an exec and returns the stream's error (for refusals).
func (e *env) execErr(id string, argv ...string) (string, string, error) {
	if len(argv) == 0 {
		argv = []string{"true"}
	}
	stream, err := e.cl.Exec(e.ctx)
	if err != nil {
		return "", "", err
	}
	if err := stream.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Start{Start: &apiv1.ExecStart{SandboxId: id, Argv: argv}}}); err != nil {
		return "", "", err
	}
	_ = stream.CloseSend()
	for {
		if _, err := stream.Recv(); err != nil {
			return "", "", err
		}
	}
}

// Bad input gets the right code and leaves no QEMU behind.
func TestSandboxBadInput(t *testing.T) {
	e := newEnv(t)
	for name, spec := range map[string]*apiv1.SandboxSpec{
		"path in ID":       {Id: "../etc"},
		"socket too long":  {Id: strings.Repeat("a", 63)}, // under this test's deep temp dir
		"slash in ID":      {Id: "a/b"},
		"empty ID":         {Id: ""},
		"too many vCPUs":   {Id: "bad-cpu", Vcpus: 1000},
		"too little mem":   {Id: "bad-mem", MemoryMib: 1},
		"relative netns":   {Id: "bad-ns", Netns: "run/netns/x"},
		"relative disk":    {Id: "bad-disk", Disks: []*apiv1.Disk{{Source: &apiv1.Disk_Path{Path: "disk.img"}}}},
		"rbd without pool": {Id: "bad-rbd", Disks: []*apiv1.Disk{{Source: &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Image: "x"}}}}},
	} {
		_, err := e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: spec, Wait: true})
		if code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	for _, id := range []string{"nope"} {
		if _, err := e.cl.GetSandbox(e.ctx, &apiv1.GetSandboxRequest{Id: id}); code(err) != codes.NotFound {
			t.Errorf("get unknown: %v", err)
		}
		if _, err := e.cl.StopSandbox(e.ctx, &apiv1.StopSandboxRequest{Id: id}); code(err) != codes.NotFound {
			t.Errorf("stop unknown: %v", err)
		}
		if _, _, err := e.execErr(id); code(err) != codes.NotFound {
			t.Errorf("exec unknown: %v", err)
		}
		if _, err := e.cl.DeleteSandbox(e.ctx, &apiv1.DeleteSandboxRequest{Id: id}); err != nil {
			t.Errorf("delete unknown (idempotent): %v", err)
		}
	}
	if out, err := e.Agent.CLI("sandbox", "get", "nope"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("CLI get unknown: %q, %v", out, err)
	}
	// A netns that does not exist, the node's own netns and a disk in the
	// agent's state dir are refused up front, leaving nothing.
	stateDisk := filepath.Join(e.Agent.StateDir, "agent.lock")
	for _, tc := range []struct {
		name string
		spec *apiv1.SandboxSpec
		want codes.Code
		msg  string
	}{
		{"missing netns", &apiv1.SandboxSpec{Id: "no-netns", Netns: "/run/netns/does-not-exist-" + randHex(4)}, codes.InvalidArgument, "does-not-exist"},
		{"agent netns", &apiv1.SandboxSpec{Id: "node-netns", Netns: "/proc/self/ns/net"}, codes.InvalidArgument, "node's own network namespace"},
		{"state dir disk", &apiv1.SandboxSpec{Id: "state-disk", Disks: []*apiv1.Disk{{Source: &apiv1.Disk_Path{Path: stateDisk}}}}, codes.InvalidArgument, "state dir"},
	} {
		_, err := e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: tc.spec, Wait: true})
		if code(err) != tc.want || !strings.Contains(fmt.Sprint(err), tc.msg) {
			t.Errorf("%s: %v, want %v naming %q", tc.name, err, tc.want, tc.msg)
		}
		if _, err := os.Stat(filepath.Join(e.Agent.StateDir, "sandboxes", tc.spec.Id)); !os.IsNotExist(err) {
			t.Errorf("%s: a sandbox dir was made", tc.name)
		}
	}
	// A netns without the pod's eth0 fails the boot cleanly: Failed, no
	// QEMU, nothing left in its dir but the record.
	bare := "nodeinfra-bare-" + randHex(4)
	if out, err := exec.Command("ip", "netns", "add", bare).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", bare).Run() })
	s, err := e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "no-eth0", Netns: "/run/netns/" + bare}, Wait: true})
	if err != nil || s.State != apiv1.Sandbox_FAILED || s.Reason == "" {
		t.Errorf("netns without eth0: %v, %v (want FAILED with a reason)", s, err)
	}
	if len(fabric.QEMUPids("no-eth0")) > 0 {
		t.Error("qemu left running after a failed boot")
	}
	entries, _ := os.ReadDir(filepath.Join(e.Agent.StateDir, "sandboxes", "no-eth0"))
	if len(entries) != 1 {
		t.Errorf("failed sandbox dir holds %d entries, want only the record", len(entries))
	}
}

// One pod netns holds one sandbox: a second create on it is refused while
// the first lives, and works once the first is deleted.
func TestSandboxOneNetnsOneSandbox(t *testing.T) {
	e := newEnv(t)
	v := e.VPC("vpc-o", "10.66.0.1/24")
	n := e.ENI(v, "10.66.0.11/24")
	p := e.podOn(e.runtime(), "single", n)
	e.create(&apiv1.SandboxSpec{Id: "vm-first", Netns: p.NS.Path()})
	_, err := e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "vm-second", Netns: p.NS.Path()}, Wait: true})
	if code(err) != codes.FailedPrecondition || !strings.Contains(fmt.Sprint(err), "vm-first") {
		t.Errorf("second sandbox on one netns: %v, want FailedPrecondition naming vm-first", err)
	}
	e.deleteSandbox("vm-first")
	e.create(&apiv1.SandboxSpec{Id: "vm-second", Netns: p.NS.Path()})
}

// kill -9 of the agent leaves the VMs running; the next agent re-adopts
// them (Ready, exec works) and can stop them.
func TestSandboxReadoptionAfterAgentKill(t *testing.T) { testReadoptionAfterAgentKill(t) }

func testReadoptionAfterAgentKill(t *testing.T, flags ...string) {
	e := newScenario(t, true, flags...)
	// vm-keep-2 holds a pod's ENI, so its tap and eth0's addresses must
	// survive the restarts too.
	v := e.VPC("vpc-r", "10.68.0.1/24")
	n := e.ENI(v, "10.68.0.11/24")
	p := e.podOn(e.runtime(), "kept", n)
	e.create(&apiv1.SandboxSpec{Id: "vm-keep-1"})
	e.create(&apiv1.SandboxSpec{Id: "vm-keep-2", Netns: p.NS.Path()})
	before := e.get("vm-keep-1").Pid
	e.Agent.Kill()
	if len(e.qemuPids("vm-keep-1")) == 0 || len(e.qemuPids("vm-keep-2")) == 0 {
		t.Fatal("the VMs died with the agent")
	}
	if err := e.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"vm-keep-1", "vm-keep-2"} {
		s := e.waitState(id, apiv1.Sandbox_READY, 30*time.Second)
		e.checkStart(s)
		if id == "vm-keep-1" && s.Pid != before {
			t.Errorf("re-adopted pid %d, want %d", s.Pid, before)
		}
		if out := e.sh(id, "echo alive"); out != "alive\n" {
			t.Errorf("exec after re-adoption: %q", out)
		}
	}
	if out := e.sh("vm-keep-2", "ip addr show eth0"); !strings.Contains(out, "10.68.0.11/24") {
		t.Errorf("re-adopted guest lost its address:\n%s", out)
	}
	s, err := e.cl.StopSandbox(e.ctx, &apiv1.StopSandboxRequest{Id: "vm-keep-1"})
	if err != nil || s.State != apiv1.Sandbox_STOPPED {
		t.Fatalf("stop a re-adopted sandbox: %v, %v", s, err)
	}
	if len(e.qemuPids("vm-keep-1")) > 0 {
		t.Error("qemu of a re-adopted sandbox runs after stop")
	}
	// A QEMU that dies while no agent watches is found dead and cleaned up.
	pid := int(e.get("vm-keep-2").Pid)
	e.Agent.Kill()
	syscall.Kill(pid, syscall.SIGKILL)
	if err := e.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	s = e.waitState("vm-keep-2", apiv1.Sandbox_FAILED, 10*time.Second)
	if !strings.Contains(s.Reason, "exited") {
		t.Errorf("reason %q", s.Reason)
	}
	links := podLinks(t, p.NS)
	if a := links["eth0"]; len(a) != 1 || a[0] != "10.68.0.11/24" {
		t.Errorf("eth0 after its VM died while no agent watched: %v, want its address back", links)
	}
	if _, ok := links["tap0"]; ok {
		t.Error("tap left behind")
	}
}

// A QEMU that dies is reported Failed within a second with its exit
// reason, and its tap, cgroup, sockets and files are cleaned up.
func TestSandboxQEMUDeathIsReported(t *testing.T) { testQEMUDeathIsReported(t) }

func testQEMUDeathIsReported(t *testing.T, flags ...string) {
	e := newScenario(t, true, flags...)
	v := e.VPC("vpc-d", "10.67.0.1/24")
	n := e.ENI(v, "10.67.0.11/24")
	p := e.podOn(e.runtime(), "doomed", n)
	s := e.create(&apiv1.SandboxSpec{Id: "vm-doomed", Netns: p.NS.Path()})
	cgroups := cgroupDirsOf(int(s.Pid))
	if len(cgroups) == 0 {
		t.Error("qemu is in no cgroup of its own")
	}
	// Its quota: one vCPU of CPU time, the guest's 128 MiB plus 256 MiB.
	for _, dir := range cgroups {
		for file, want := range map[string]string{"cpu.cfs_quota_us": "100000", "memory.limit_in_bytes": strconv.Itoa(384 << 20)} {
			if b, err := os.ReadFile(filepath.Join(dir, file)); err == nil && strings.TrimSpace(string(b)) != want {
				t.Errorf("%s/%s = %s, want %s", dir, file, strings.TrimSpace(string(b)), want)
			}
		}
	}
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	events, err := e.cl.WatchEvents(ctx, &apiv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // let the watch register
	killed := time.Now()
	if err := syscall.Kill(int(s.Pid), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := events.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		if ev.Sandbox.Spec.Id != "vm-doomed" || ev.Sandbox.State != apiv1.Sandbox_FAILED {
			continue
		}
		took := time.Since(killed)
		t.Logf("Failed reported %v after kill -9: %s", took.Round(time.Millisecond), ev.Sandbox.Reason)
		if took > time.Second {
			t.Errorf("Failed reported after %v, want within 1s", took)
		}
		if !strings.Contains(ev.Sandbox.Reason, "killed") {
			t.Errorf("reason %q does not say qemu was killed", ev.Sandbox.Reason)
		}
		break
	}
	links := podLinks(t, p.NS)
	if _, ok := links["tap0"]; ok {
		t.Error("tap left in the pod namespace")
	}
	if a := links["eth0"]; len(a) != 1 || a[0] != "10.67.0.11/24" {
		t.Errorf("eth0 after the VM died: %v, want its address back", links)
	}
	for _, dir := range cgroups {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left behind", dir)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(e.Agent.StateDir, "sandboxes", "vm-doomed"))
	for _, en := range entries {
		switch en.Name() {
		case "sandbox.json", "console.log", "console.log.1", "qemu.log": // the logs stay until delete
		default:
			t.Errorf("left in the sandbox dir: %s", en.Name())
		}
	}
}

// cgroupDirsOf returns the cgroup v1 directories of pid that are not the
// root of their hierarchy.
func cgroupDirsOf(pid int) []string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	var dirs []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || parts[2] == "/" || parts[1] == "" {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" || c == "cpu" || c == "pids" {
				dirs = append(dirs, filepath.Join("/sys/fs/cgroup", c, parts[2]))
			}
		}
	}
	return dirs
}

// Data written to an RBD volume inside one sandbox (hot-plugged through
// QMP, opened by QEMU's rbd driver) is read back by a second sandbox that
// boots with it after the first is deleted; a host file disk hot-plugs
// and unplugs.
func TestSandboxRBDVolume(t *testing.T) { testRBDVolume(t) }

func testRBDVolume(t *testing.T, flags ...string) {
	cluster := testutil.Ceph(t)
	// In the machine's namespace: QEMU's rbd driver talks to the monitors
	// on the machine's loopback.
	e := newScenario(t, false, append([]string{"--ceph-conf", cluster.Conf, "--ceph-user", "admin", "--ceph-keyring", cluster.Keyring}, flags...)...)
	image := "sbx-" + randHex(4)
	rbd := func(args ...string) {
		t.Helper()
		out, err := exec.Command("rbd", append([]string{"-c", cluster.Conf, "-k", cluster.Keyring}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("rbd %v: %v: %s", args, err, out)
		}
	}
	rbd("create", "--size", "64", "rbd/"+image)
	t.Cleanup(func() {
		exec.Command("rbd", "-c", cluster.Conf, "-k", cluster.Keyring, "rm", "rbd/"+image).Run()
	})
	vol := &apiv1.Disk{Id: "data", Source: &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: "rbd", Image: image}}}

	e.create(&apiv1.SandboxSpec{Id: "vm-writer"})
	s, err := e.cl.AttachDisk(e.ctx, &apiv1.AttachDiskRequest{SandboxId: "vm-writer", Disk: vol})
	if err != nil || len(s.Disks) != 1 {
		t.Fatalf("hot-plug RBD: %v, %v", s, err)
	}
	msg := "written-by-writer-" + randHex(8)
	e.sh("vm-writer", findDisk+fmt.Sprintf("dev=$(find_disk data) || exit 1; echo %s | dd of=$dev bs=512 count=1 conv=sync,fsync 2>/dev/null", msg))
	e.deleteSandbox("vm-writer")

	e.create(&apiv1.SandboxSpec{Id: "vm-reader", Disks: []*apiv1.Disk{vol}})
	got := e.sh("vm-reader", findDisk+"dev=$(find_disk data) || exit 1; dd if=$dev bs=512 count=1 2>/dev/null | head -n 1")
	if strings.TrimSpace(got) != msg {
		t.Errorf("reader got %q, want %q", got, msg)
	}

	// A host file hot-plugs, shows its content, and unplugs.
	file := filepath.Join(t.TempDir(), "extra.img")
	content := "file-disk-" + randHex(6)
	if err := os.WriteFile(file, append([]byte(content+"\n"), make([]byte, 1<<20)...), 0o600); err != nil {
		t.Fatal(err)
	}
	extra := &apiv1.Disk{Id: "extra", ReadOnly: true, Source: &apiv1.Disk_Path{Path: file}}
	if _, err := e.cl.AttachDisk(e.ctx, &apiv1.AttachDiskRequest{SandboxId: "vm-reader", Disk: extra}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cl.AttachDisk(e.ctx, &apiv1.AttachDiskRequest{SandboxId: "vm-reader", Disk: extra}); err != nil {
		t.Errorf("attach again (idempotent): %v", err)
	}
	got = e.sh("vm-reader", findDisk+"dev=$(find_disk extra) || exit 1; head -n 1 $dev")
	if strings.TrimSpace(got) != content {
		t.Errorf("hot-plugged file disk reads %q, want %q", got, content)
	}
	s, err = e.cl.DetachDisk(e.ctx, &apiv1.DetachDiskRequest{SandboxId: "vm-reader", DiskId: "extra"})
	if err != nil || len(s.Disks) != 1 {
		t.Fatalf("unplug: %v, %v", s, err)
	}
	if out := e.sh("vm-reader", "cat /sys/block/vd*/serial; echo"); strings.Contains(out, "extra") {
		t.Errorf("the guest still sees the unplugged disk: %q", out)
	}
	if _, err := e.cl.DetachDisk(e.ctx, &apiv1.DetachDiskRequest{SandboxId: "vm-reader", DiskId: "extra"}); err != nil {
		t.Errorf("detach again (idempotent): %v", err)
	}
}

// metrics fetches the agent's /metrics from inside the node namespace.
func metrics(t *testing.T, e *env) string {
	t.Helper()
	var body []byte
	err := e.Fabric.Node.Do(func(ns.NetNS) error {
		// Dialled here, on the goroutine that is in the namespace (an
		// http.Transport would dial from another one).
		c, err := net.Dial("tcp", e.Agent.MetricsAddr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		body, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
