package sandbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// fastStartFlags start the sandboxes of the default size (1 vCPU,
// 128 MiB) from a VM template.
var fastStartFlags = []string{"--fast-start", "template", "--fast-start-classes", "1x128"}

// poolFlags start the sandboxes of the default size from a warm pool of k
// idle VMs (each boots in about 1.6 s under TCG, and the boots compete
// for the machine's cores: k is the fewest the scenario needs).
func poolFlags(k int) []string {
	return []string{"--fast-start", "pool", "--fast-start-classes", "1x128", "--fast-start-pool-size", strconv.Itoa(k)}
}

// The sandbox scenarios, with the sandboxes started from a template
// (each scenario is in sandbox_test.go or confine_test.go).
func TestFastStartOnPodNetwork(t *testing.T)       { testOnPodNetwork(t, fastStartFlags...) }
func TestFastStartExecAndIdempotency(t *testing.T) { testExecAndIdempotency(t, fastStartFlags...) }
func TestFastStartReadoptionAfterAgentKill(t *testing.T) {
	testReadoptionAfterAgentKill(t, fastStartFlags...)
}
func TestFastStartQEMUDeathIsReported(t *testing.T) { testQEMUDeathIsReported(t, fastStartFlags...) }
func TestFastStartRBDVolume(t *testing.T)           { testRBDVolume(t, fastStartFlags...) }
func TestFastStartQEMUConfined(t *testing.T)        { testQEMUConfined(t, fastStartFlags...) }

// The same scenarios with the sandboxes taken from the warm pool, whose
// size is the number of sandboxes the scenario creates: none boots cold.
func TestPoolOnPodNetwork(t *testing.T)       { testOnPodNetwork(t, poolFlags(1)...) }
func TestPoolExecAndIdempotency(t *testing.T) { testExecAndIdempotency(t, poolFlags(1)...) }
func TestPoolReadoptionAfterAgentKill(t *testing.T) {
	testReadoptionAfterAgentKill(t, poolFlags(2)...)
}
func TestPoolQEMUDeathIsReported(t *testing.T) { testQEMUDeathIsReported(t, poolFlags(1)...) }
func TestPoolRBDVolume(t *testing.T)           { testRBDVolume(t, poolFlags(2)...) }
func TestPoolQEMUConfined(t *testing.T)        { testQEMUConfined(t, poolFlags(2)...) }

// scenario is the node of a sandbox scenario, run with the agent flags it
// was given. With --fast-start template it waits for the templates before
// the scenario begins; with --fast-start pool it waits, before each
// create, for an idle VM of the sandbox's size. Either way every sandbox
// it creates must have started the fast way: a silent cold boot fails the
// scenario.
type scenario struct {
	*env
	// mode is the agent's --fast-start ("off", "template" or "pool") and
	// classes its size classes ("VCPUSxMIB").
	mode    string
	classes []string
	// wantStart is what Sandbox.Start must say ("" checks nothing).
	wantStart string
	// names holds QEMU's -name of each sandbox created, as its command
	// line had it when Ready: "sandbox-<ID>", but a VM taken from the
	// pool keeps the name it booted with, "sandbox-_pool-<CLASS>-<HEX>".
	names map[string]string
}

func newScenario(t *testing.T, inNode bool, flags ...string) *scenario {
	t.Helper()
	mode, classes := fastStart(flags)
	s := &scenario{env: newEnvIn(t, inNode, flags...), mode: mode, classes: classes, names: map[string]string{}}
	switch mode {
	case "template":
		for _, c := range classes {
			s.waitTemplate(c)
		}
		s.wantStart = "template"
	case "pool":
		s.wantStart = "pool"
		// Registered after the env's: runs before its SIGKILL of the agent.
		t.Cleanup(s.stopPoolAgent)
	}
	return s
}

// fastStart returns the agent's fast start mode (off, template or pool)
// and size classes as flags set them.
func fastStart(flags []string) (mode string, classes []string) {
	mode, list := "off", "1x128"
	for i := 0; i+1 < len(flags); i++ {
		switch flags[i] {
		case "--fast-start":
			mode = flags[i+1]
		case "--fast-start-classes":
			list = flags[i+1]
		}
	}
	if mode == "off" {
		return mode, nil
	}
	return mode, strings.Split(list, ",")
}

// specClass is the size class of spec ("VCPUSxMIB", with the agent's
// defaults of 1 vCPU and 128 MiB).
func specClass(spec *apiv1.SandboxSpec) string {
	vcpus, mib := spec.Vcpus, spec.MemoryMib
	if vcpus == 0 {
		vcpus = 1
	}
	if mib == 0 {
		mib = 128
	}
	return fmt.Sprintf("%dx%d", vcpus, mib)
}

// create is env.create that checks how the sandbox started; in pool mode
// it first waits for an idle VM of the sandbox's size.
func (s *scenario) create(spec *apiv1.SandboxSpec) *apiv1.Sandbox {
	s.t.Helper()
	if s.mode == "pool" && slices.Contains(s.classes, specClass(spec)) {
		s.waitPool(specClass(spec), 1)
	}
	begin := time.Now()
	sb := s.env.create(spec)
	if s.wantStart != "" {
		s.t.Logf("fast start: sandbox %s started %q, ready in %v", spec.Id, sb.Start, time.Since(begin).Round(time.Millisecond))
	}
	s.checkStart(sb)
	if name := fabric.QEMUName(int(sb.Pid)); name != "" {
		s.names[spec.Id] = name
	}
	return sb
}

// checkStart fails the test unless sb started the scenario's way.
func (s *scenario) checkStart(sb *apiv1.Sandbox) {
	s.t.Helper()
	if s.wantStart != "" && sb.Start != s.wantStart {
		log := s.agentLog()
		s.t.Fatalf("sandbox %s started %q, want %q (agent log: %s\n%s)", sb.Spec.Id, sb.Start, s.wantStart,
			grepLines(log, "cold"), grepLines(log, "pool"))
	}
}

// qemuPids lists the QEMU processes of sandbox id: by the -name its QEMU
// had when the scenario created it (fabric.QEMUPids for a sandbox it did
// not create).
func (s *scenario) qemuPids(id string) []int {
	if name, ok := s.names[id]; ok {
		return fabric.QEMUPids(strings.TrimPrefix(name, "sandbox-"))
	}
	return fabric.QEMUPids(id)
}

// checkFindable checks that an admin finds sandbox sb's QEMU by the
// sandbox ID: in ps, its -name is sandbox-<ID>. A VM taken from the warm
// pool keeps the -name it booted with (QEMU cannot be renamed), so there
// the sandbox's name is on its cgroup instead, as /proc/PID/cgroup shows.
func (s *scenario) checkFindable(sb *apiv1.Sandbox) {
	s.t.Helper()
	id, pid := sb.Spec.Id, strconv.Itoa(int(sb.Pid))
	name := fabric.QEMUName(int(sb.Pid))
	if s.mode != "pool" {
		if name != "sandbox-"+id {
			cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			s.t.Errorf("qemu's command line lacks the sandbox ID: %q", cmdline)
		}
		return
	}
	if !strings.HasPrefix(name, "sandbox-_pool-") {
		s.t.Errorf("sandbox %s from the pool: qemu's -name is %q, want a pool VM's (sandbox-_pool-...)", id, name)
	}
	cg, _ := os.ReadFile("/proc/" + pid + "/cgroup")
	if !strings.Contains(string(cg), "/sandbox-"+id+"\n") {
		s.t.Errorf("sandbox %s from the pool (qemu -name %s): its cgroup does not bear its ID:\n%s", id, name, cg)
	} else {
		s.t.Logf("sandbox %s: qemu pid %s has -name %s (the pool VM's) and the sandbox's cgroup", id, pid, name)
	}
}

// waitPool polls the agent's status until its warm pool of class has at
// least ready idle VMs.
func (e *env) waitPool(class string, ready uint32) *apiv1.PoolClass {
	e.t.Helper()
	begin := time.Now()
	deadline := begin.Add(60 * time.Second)
	for {
		st, err := e.cl.Status(e.ctx, &apiv1.StatusRequest{})
		if err != nil {
			e.t.Fatalf("status: %v", err)
		}
		var pc *apiv1.PoolClass
		for _, c := range st.Pool {
			if c.Class == class {
				pc = c
			}
		}
		if pc != nil && pc.Ready >= ready {
			e.t.Logf("warm pool %s: %d ready, %d booting after %v", class, pc.Ready, pc.Booting, time.Since(begin).Round(time.Millisecond))
			return pc
		}
		if time.Now().After(deadline) {
			if pc == nil {
				e.t.Fatalf("warm pool %s not in the status after 60s (fast start %q, pool %v)", class, st.FastStart, st.Pool)
			}
			e.t.Fatalf("warm pool %s has %d ready (%d booting) after 60s, want %d; its error: %q", class,
				pc.Ready, pc.Booting, ready, pc.Error)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// poolStatus returns the agent's warm pool of class (nil if none).
func (e *env) poolStatus(class string) *apiv1.PoolClass {
	e.t.Helper()
	st, err := e.cl.Status(e.ctx, &apiv1.StatusRequest{})
	if err != nil {
		e.t.Fatalf("status: %v", err)
	}
	for _, c := range st.Pool {
		if c.Class == class {
			return c
		}
	}
	return nil
}

// stopPoolAgent ends a pool scenario without leaks. The test node's
// cleanup kills the agent with SIGKILL, which leaves its idle pool VMs
// running (the next agent would remove them; there is none): so, while
// the agent runs, it deletes the sandboxes, lets the pool finish booting
// and stops the agent with SIGTERM, which removes the idle pool. (The
// wait: a pool VM still booting at SIGTERM is left running, with its
// directory and cgroup, until a next agent discards it.) No QEMU may run
// from the agent's state dir then; any that does is a leak (an error if
// the agent stopped cleanly) and is killed.
func (s *scenario) stopPoolAgent() {
	t := s.t
	running := false
	select {
	case <-s.Agent.Exited():
	default:
		running = true
	}
	if running {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if list, err := s.cl.ListSandboxes(ctx, &apiv1.ListSandboxesRequest{}); err == nil {
			for _, sb := range list.Sandboxes {
				if _, err := s.cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{Id: sb.Spec.Id}); err != nil {
					t.Errorf("cleanup: delete %s: %v", sb.Spec.Id, err)
				}
			}
		}
		s.waitPoolSettled(ctx)
		s.Agent.Stop()
	}
	left := stateDirQEMUs(s.Agent.StateDir)
	if len(left) == 0 {
		return
	}
	if running {
		t.Errorf("QEMU left running from the state dir after the agent stopped (SIGTERM): %v", left)
	}
	for _, p := range left {
		_ = syscall.Kill(p.Pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); len(stateDirQEMUs(s.Agent.StateDir)) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
}

// waitPoolSettled waits (up to 30 s) until no pool VM is booting.
func (s *scenario) waitPoolSettled(ctx context.Context) {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		st, err := s.cl.Status(ctx, &apiv1.StatusRequest{})
		if err != nil {
			return
		}
		booting := uint32(0)
		for _, c := range st.Pool {
			booting += c.Booting
		}
		if booting == 0 {
			return
		}
	}
}

// waitTemplate polls the agent's status until class's template is ready.
func (e *env) waitTemplate(class string) *apiv1.VMTemplate {
	e.t.Helper()
	begin := time.Now()
	deadline := begin.Add(60 * time.Second)
	last := "not listed"
	for {
		st, err := e.cl.Status(e.ctx, &apiv1.StatusRequest{})
		if err != nil {
			e.t.Fatalf("status: %v", err)
		}
		for _, tm := range st.Templates {
			if tm.Class != class {
				continue
			}
			last = tm.State
			switch tm.State {
			case "ready":
				e.t.Logf("template %s ready after %v (build %.2fs, state %d bytes, key %s)", class,
					time.Since(begin).Round(time.Millisecond), tm.BuildSeconds, tm.StateBytes, tm.Key)
				return tm
			case "failed":
				e.t.Fatalf("template %s failed to build: %s", class, tm.Error)
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("template %s is %s after 60s, want ready (status templates: %v)", class, last, st.Templates)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// vmProc is a QEMU process of an agent: its pid, -name and working
// directory (its sandbox's or pool VM's directory).
type vmProc struct {
	Pid       int
	Name, Dir string
}

func (p vmProc) String() string { return fmt.Sprintf("pid %d -name %s in %s", p.Pid, p.Name, p.Dir) }

// stateDirQEMUs lists the QEMU processes whose working directory is under
// stateDir: an agent's sandboxes and pool VMs.
func stateDirQEMUs(stateDir string) []vmProc {
	var out []vmProc
	for _, p := range fabric.Processes() {
		name := p.Flag("-name")
		if !strings.HasPrefix(name, "sandbox-") {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(p.Pid), "cwd"))
		if err != nil || !strings.HasPrefix(cwd, stateDir+"/") {
			continue
		}
		out = append(out, vmProc{Pid: p.Pid, Name: name, Dir: cwd})
	}
	return out
}

// idlePoolVMs lists the QEMU processes of the agent's idle pool VMs: by
// -name and directory (a sandbox taken from the pool keeps the -name, not
// the directory).
func (e *env) idlePoolVMs() []vmProc {
	var out []vmProc
	for _, p := range stateDirQEMUs(e.Agent.StateDir) {
		if strings.HasPrefix(p.Name, "sandbox-_pool-") && strings.HasPrefix(filepath.Base(p.Dir), "_pool-") {
			out = append(out, p)
		}
	}
	return out
}

// poolVMGone reports what is left of pool VM p: its QEMU (a zombie has no
// command line), its directory, its held tap in the agent's namespace and
// its cgroups (nil when all are gone).
func (e *env) poolVMGone(p vmProc, tap string, cgroups []string) []string {
	var left []string
	if fabric.QEMUName(p.Pid) == p.Name {
		left = append(left, "qemu")
	}
	if _, err := os.Stat(p.Dir); !os.IsNotExist(err) {
		left = append(left, "directory")
	}
	if tap != "" {
		links, err := fabric.Links(e.Fabric.Node)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, l := range links {
			if l.Name == tap {
				left = append(left, "held tap "+tap)
			}
		}
	}
	for _, dir := range cgroups {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			left = append(left, "cgroup "+dir)
		}
	}
	return left
}

// waitPoolVMGone polls for up to within until nothing is left of p.
func (e *env) waitPoolVMGone(p vmProc, tap string, cgroups []string, within time.Duration) time.Duration {
	e.t.Helper()
	begin := time.Now()
	for {
		left := e.poolVMGone(p, tap, cgroups)
		if len(left) == 0 {
			return time.Since(begin)
		}
		if time.Since(begin) > within {
			e.t.Errorf("pool vm %v: %s left %v after, want all gone", p, strings.Join(left, ", "), within)
			return time.Since(begin)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// poolTap reads the held tap of the pool VM in dir from its record.
func poolTap(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "sandbox.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Pool    bool   `json:"pool"`
		PoolTap string `json:"poolTap"`
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("record of %s: %v", dir, err)
	}
	if !rec.Pool || rec.PoolTap == "" {
		t.Fatalf("record of %s: not a pool vm with a held tap: %s", dir, b)
	}
	return rec.PoolTap
}

// oneIdlePoolVM waits for the pool of 1x128 to have one ready VM and
// returns it, its held tap and its cgroups.
func (e *env) oneIdlePoolVM() (vmProc, string, []string) {
	e.t.Helper()
	e.waitPool("1x128", 1)
	idle := e.idlePoolVMs()
	if len(idle) != 1 {
		e.t.Fatalf("the pool shows 1 ready VM; its QEMUs: %v", idle)
	}
	return idle[0], poolTap(e.t, idle[0].Dir), cgroupDirsOf(idle[0].Pid)
}

// The warm pool refills after each take. The agent's SIGTERM removes its
// idle VM (QEMU, directory, held tap, cgroup) but not the sandboxes taken
// from the pool, which the next agent re-adopts (started "pool" still).
// A kill -9 leaves the idle VM running; the next agent removes it.
func TestPoolRefillAndShutdown(t *testing.T) {
	e := newScenario(t, true, poolFlags(1)...)
	ids := []string{"vm-refill-1", "vm-refill-2"}
	taken := map[string]int32{}
	for i, id := range ids {
		sb := e.create(&apiv1.SandboxSpec{Id: id})
		taken[id] = sb.Pid
		if pc := e.poolStatus("1x128"); pc == nil || pc.Ready != 0 || pc.Error != "" {
			t.Errorf("pool of size 1 right after a take: %v, want none ready and no error", pc)
		}
		took := time.Now()
		e.waitPool("1x128", 1)
		t.Logf("take %d: the pool refilled %v after it", i+1, time.Since(took).Round(time.Millisecond))
	}
	if taken[ids[0]] == taken[ids[1]] {
		t.Fatalf("both sandboxes have qemu pid %d", taken[ids[0]])
	}

	// SIGTERM: the idle VM goes, the taken ones stay.
	idle, tap, cgroups := e.oneIdlePoolVM()
	if len(cgroups) == 0 {
		t.Errorf("idle pool vm %v is in no cgroup of its own", idle)
	}
	t.Logf("idle pool vm: %v, held tap %s, cgroups %v", idle, tap, cgroups)
	stopping := time.Now()
	e.Agent.Stop()
	t.Logf("agent stopped (SIGTERM) in %v", time.Since(stopping).Round(time.Millisecond))
	if left := e.poolVMGone(idle, tap, cgroups); len(left) > 0 {
		t.Errorf("idle pool vm %v: %s left once the agent stopped", idle, strings.Join(left, ", "))
		e.waitPoolVMGone(idle, tap, cgroups, 5*time.Second) // how late, if at all
	}
	for _, p := range stateDirQEMUs(e.Agent.StateDir) {
		if p.Pid != int(taken[ids[0]]) && p.Pid != int(taken[ids[1]]) {
			t.Errorf("qemu left running from the state dir after SIGTERM: %v", p)
		}
	}
	for _, id := range ids {
		if name := fabric.QEMUName(int(taken[id])); name != e.names[id] {
			t.Fatalf("sandbox %s (qemu pid %d, -name %s) does not run after the agent's SIGTERM", id, taken[id], e.names[id])
		}
	}
	if dirs, _ := filepath.Glob(filepath.Join(e.Agent.StateDir, "sandboxes", "_pool-*")); len(dirs) > 0 {
		t.Errorf("pool vm directories left after SIGTERM: %v", dirs)
	}

	// The next agent re-adopts the taken sandboxes and builds its pool.
	if err := e.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		sb := e.waitState(id, apiv1.Sandbox_READY, 30*time.Second)
		e.checkStart(sb)
		if sb.Pid != taken[id] {
			t.Errorf("%s re-adopted with pid %d, want %d", id, sb.Pid, taken[id])
		}
		if out := e.sh(id, "echo alive"); out != "alive\n" {
			t.Errorf("%s: exec after re-adoption: %q", id, out)
		}
		t.Logf("%s re-adopted after SIGTERM: %s, started %q, pid %d", id, sb.State, sb.Start, sb.Pid)
	}

	// kill -9: its idle VM outlives it; the next agent removes it.
	idle, tap, cgroups = e.oneIdlePoolVM()
	e.Agent.Kill()
	if fabric.QEMUName(idle.Pid) != idle.Name {
		t.Fatalf("idle pool vm %v died with the agent (kill -9)", idle)
	}
	if err := e.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	took := e.waitPoolVMGone(idle, tap, cgroups, 5*time.Second)
	t.Logf("the next agent removed the idle pool vm of the one killed -9 within %v", took.Round(time.Millisecond))
	if log := grepLines(e.agentLog(), "removed an idle pool vm of an earlier agent"); !strings.Contains(log, strings.TrimPrefix(idle.Name, "sandbox-")) {
		t.Errorf("the agent did not log removing %s: %q", idle.Name, log)
	}
	for _, id := range ids {
		e.checkStart(e.waitState(id, apiv1.Sandbox_READY, 30*time.Second))
	}
}

func (e *env) agentLog() string {
	b, _ := os.ReadFile(filepath.Join(e.Agent.Dir, "agent.log"))
	return string(b)
}

var (
	hex32       = regexp.MustCompile(`^[0-9a-f]{32}$`)
	guestTvSec  = regexp.MustCompile(`time\.tv_sec:\s*(\d+)`)
	guestTvUsec = regexp.MustCompile(`time\.tv_usec:\s*(\d+)`)
)

// guestClock reads the guest's CLOCK_REALTIME to the microsecond (busybox
// date has no %N; adjtimex prints tv_sec and tv_usec) and returns it with
// the host's time at the midpoint of the exec's round trip.
func (e *env) guestClock(id string) (guest, host time.Time, rtt time.Duration) {
	e.t.Helper()
	before := time.Now()
	out := e.sh(id, "adjtimex")
	after := time.Now()
	sec, usec := guestTvSec.FindStringSubmatch(out), guestTvUsec.FindStringSubmatch(out)
	if sec == nil || usec == nil {
		e.t.Fatalf("guest %s: adjtimex printed no time: %q", id, out)
	}
	s, _ := strconv.ParseInt(sec[1], 10, 64)
	us, _ := strconv.ParseInt(usec[1], 10, 64)
	rtt = after.Sub(before)
	return time.Unix(s, us*1000), before.Add(rtt / 2), rtt
}

// Two sandboxes restored from one template are two machines: each has its
// ID as hostname, its own machine ID and entropy, and the host's clock.
func TestFastStartIdentity(t *testing.T) { testIdentity(t, fastStartFlags...) }

// So are two sandboxes taken from the warm pool.
func TestPoolIdentity(t *testing.T) { testIdentity(t, poolFlags(2)...) }

func testIdentity(t *testing.T, flags ...string) {
	e := newScenario(t, true, flags...)
	ids := []string{"vm-ident-1", "vm-ident-2"}
	for _, id := range ids {
		e.create(&apiv1.SandboxSpec{Id: id})
	}
	machineIDs, entropy := map[string]string{}, map[string]string{}
	for _, id := range ids {
		if h := strings.TrimSpace(e.sh(id, "hostname")); h != id {
			t.Errorf("%s: hostname %q, want the sandbox ID", id, h)
		}
		mid := strings.TrimSpace(e.sh(id, "cat /etc/machine-id"))
		if !hex32.MatchString(mid) {
			t.Errorf("%s: /etc/machine-id %q, want 32 hex digits", id, mid)
		}
		if other, ok := machineIDs[mid]; ok {
			t.Errorf("%s and %s share machine ID %s", other, id, mid)
		}
		machineIDs[mid] = id
		rnd := strings.Join(strings.Fields(e.sh(id, "head -c 32 /dev/urandom | od -An -tx1")), "")
		if len(rnd) != 64 {
			t.Errorf("%s: read %q from /dev/urandom, want 32 bytes", id, rnd)
		}
		if other, ok := entropy[rnd]; ok {
			t.Errorf("%s and %s read the same 32 bytes from /dev/urandom: %s", other, id, rnd)
		}
		entropy[rnd] = id
		guest, host, rtt := e.guestClock(id)
		skew := guest.Sub(host)
		t.Logf("%s: hostname ok, machine-id %s, urandom %s..., clock %+v from the host (exec round trip %v)",
			id, mid, rnd[:min(16, len(rnd))], skew.Round(time.Microsecond), rtt.Round(time.Microsecond))
		if skew < -time.Second || skew > time.Second {
			t.Errorf("%s: guest clock %s is %v from the host's %s, want within 1s", id,
				guest.Format(time.RFC3339Nano), skew, host.Format(time.RFC3339Nano))
		}
	}
	st, err := e.cl.Status(e.ctx, &apiv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	switch e.mode {
	case "template":
		if len(st.Templates) != 1 || st.Templates[0].Class != "1x128" || st.Templates[0].Clones < 2 {
			t.Errorf("status templates %v, want 1x128 with at least 2 clones", st.Templates)
		}
	case "pool":
		if st.FastStart != "pool" || len(st.Templates) != 0 || len(st.Pool) != 1 || st.Pool[0].Class != "1x128" || st.Pool[0].Error != "" {
			t.Errorf("status: fast start %q, templates %v, pool %v; want pool, no template and one 1x128 pool without error",
				st.FastStart, st.Templates, st.Pool)
		}
	}
}

// A sandbox whose size class has no template boots cold, and works.
func TestFastStartFallsBackCold(t *testing.T) {
	e := newEnv(t, "--fast-start", "template", "--fast-start-classes", "2x256")
	// Once 2x256 is ready, a cold boot of 1x128 is for want of its class,
	// not of a template still building.
	e.waitTemplate("2x256")
	s := e.create(&apiv1.SandboxSpec{Id: "vm-cold"})
	if s.Start != "cold" {
		t.Errorf("sandbox of a size without a template started %q, want \"cold\"", s.Start)
	}
	if h := strings.TrimSpace(e.sh("vm-cold", "hostname")); h != "vm-cold" {
		t.Errorf("hostname %q, want the sandbox ID", h)
	}
	if log := grepLines(e.agentLog(), "boots cold"); !strings.Contains(log, "vm-cold") || !strings.Contains(log, "no template for this size class") {
		t.Errorf("the agent did not log why vm-cold boots cold: %q", log)
	}
	st, err := e.cl.Status(e.ctx, &apiv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.FastStart != "template" || len(st.Templates) != 1 || st.Templates[0].Class != "2x256" || st.Templates[0].Clones != 0 {
		t.Errorf("status: fast start %q, templates %v; want template and one 2x256 template without clones", st.FastStart, st.Templates)
	}
}
