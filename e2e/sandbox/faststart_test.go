package sandbox_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// fastStartFlags start the sandboxes of the default size (1 vCPU,
// 128 MiB) from a VM template.
var fastStartFlags = []string{"--fast-start", "template", "--fast-start-classes", "1x128"}

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

// scenario is the node of a sandbox scenario, run with the agent flags it
// was given. With --fast-start template it waits for the templates before
// the scenario begins, and every sandbox it creates must have started
// from one: a silent cold boot fails the scenario.
type scenario struct {
	*env
	// wantStart is what Sandbox.Start must say ("" checks nothing).
	wantStart string
}

func newScenario(t *testing.T, inNode bool, flags ...string) *scenario {
	t.Helper()
	s := &scenario{env: newEnvIn(t, inNode, flags...)}
	if classes := templateClasses(flags); len(classes) > 0 {
		for _, c := range classes {
			s.waitTemplate(c)
		}
		s.wantStart = "template"
	}
	return s
}

// templateClasses returns the size classes that flags keep templates of
// (none without --fast-start template).
func templateClasses(flags []string) []string {
	mode, classes := "off", "1x128"
	for i := 0; i+1 < len(flags); i++ {
		switch flags[i] {
		case "--fast-start":
			mode = flags[i+1]
		case "--fast-start-classes":
			classes = flags[i+1]
		}
	}
	if mode != "template" {
		return nil
	}
	return strings.Split(classes, ",")
}

// create is env.create that checks how the sandbox started.
func (s *scenario) create(spec *apiv1.SandboxSpec) *apiv1.Sandbox {
	s.t.Helper()
	begin := time.Now()
	sb := s.env.create(spec)
	if s.wantStart != "" {
		s.t.Logf("fast start: sandbox %s started %q, ready in %v", spec.Id, sb.Start, time.Since(begin).Round(time.Millisecond))
	}
	s.checkStart(sb)
	return sb
}

// checkStart fails the test unless sb started the scenario's way.
func (s *scenario) checkStart(sb *apiv1.Sandbox) {
	s.t.Helper()
	if s.wantStart != "" && sb.Start != s.wantStart {
		s.t.Fatalf("sandbox %s started %q, want %q (agent log: %s)", sb.Spec.Id, sb.Start, s.wantStart,
			grepLines(s.agentLog(), "cold"))
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
func TestFastStartIdentity(t *testing.T) {
	e := newScenario(t, true, fastStartFlags...)
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
	if len(st.Templates) != 1 || st.Templates[0].Class != "1x128" || st.Templates[0].Clones < 2 {
		t.Errorf("status templates %v, want 1x128 with at least 2 clones", st.Templates)
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
