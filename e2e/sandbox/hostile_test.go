package sandbox_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/guest/initramfs"
)

// Bounds the agent holds while a guest floods it, as README's sandbox
// section documents them: a guest starts no goroutine in the agent, and
// the agent's heap stays within what it needs for a few sandboxes (a
// 64 KiB read buffer and a 32 KiB scratch per connection, a window of
// output per running exec, one answer per call).
const (
	floodExtraGoroutines = 15       // gRPC streams, metric scrapes and CLI calls of the test itself
	floodHeapBytes       = 16 << 20 // the agent's whole heap
	consoleCapBytes      = 2 << 20  // console.log + console.log.1
)

// hostileInitrd builds an initramfs whose /init is e2e/sandbox/hostileguest
// (hostile in sandboxes whose ID starts with "hostile", the real guest
// agent of `make build` in the others).
func hostileInitrd(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	init := filepath.Join(dir, "init")
	build := exec.Command("go", "build", "-o", init, "github.com/nodeinfra/nodeinfra/e2e/sandbox/hostileguest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the hostile guest: %v\n%s", err, out)
	}
	agent, err := os.ReadFile(filepath.Join(binDir, "nodeagent-guest", "init"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "initramfs.cpio")
	err = initramfs.WriteFile(context.Background(), path, initramfs.Spec{Init: init, Busybox: "/bin/busybox",
		Extra: []initramfs.Entry{initramfs.File("sbin/nodeinfra-agent", 0o755, agent)}})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// metricValue reads one unlabelled value from the agent's metrics.
func metricValue(t *testing.T, body, name string) float64 {
	t.Helper()
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// agentLoad is what the agent's metrics say of its goroutines and heap.
func agentLoad(t *testing.T, e *env) (goroutines, heap float64) {
	body := metrics(t, e)
	return metricValue(t, body, "go_goroutines"), metricValue(t, body, "go_memstats_heap_alloc_bytes")
}

// execResult is how an exec of startExec ended: nil, or the call's
// error, or an error naming a non-zero exit code; with its stderr.
type execResult struct {
	err    error
	stderr string
}

// startExec runs an attack in a hostile sandbox; its result comes on the
// channel.
func (e *env) startExec(ctx context.Context, id string, argv ...string) <-chan execResult {
	res := make(chan execResult, 1)
	go func() {
		var r execResult
		stream, err := e.cl.Exec(ctx)
		if err == nil {
			err = stream.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Start{Start: &apiv1.ExecStart{SandboxId: id, Argv: argv}}})
		}
		for err == nil {
			var m *apiv1.ExecResponse
			if m, err = stream.Recv(); err != nil {
				break
			}
			r.stderr += string(m.GetStderr())
			if m.GetExit() != nil {
				if c := m.GetExit().GetCode(); c != 0 {
					err = errors.New("exit code " + strconv.Itoa(int(c)))
				}
				break
			}
		}
		r.err = err
		res <- r
	}()
	return res
}

// attack runs an attack and returns how it ended.
func (e *env) attack(ctx context.Context, id string, argv ...string) error {
	return (<-e.startExec(ctx, id, argv...)).err
}

// A guest that floods the agent (output for execs it never started, 1 MiB
// answers nobody asked for, the console written flat out) for 10 s costs
// the agent no goroutine and a bounded heap, keeps its console log under
// its cap, and slows neither another sandbox nor the ENI API. Guests that
// break the protocol (output beyond the window they were given, garbage)
// are Failed with the violation as the reason and their QEMU killed; one
// that goes silent, or starts a new session, is not.
func TestSandboxHostileGuest(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs /bin/busybox (busybox-static)")
	}
	e := newEnv(t, "--guest-initrd", hostileInitrd(t))
	v := e.VPC("vpc-h", "10.69.0.1/24")
	e.ENI(v, "10.69.0.11/24")
	ids := []string{"bystander", "hostile-flood", "hostile-proto"}
	for _, id := range ids {
		if _, err := e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: id}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		e.waitState(id, apiv1.Sandbox_READY, 90*time.Second)
	}
	if out := e.sh("bystander", "echo ok"); out != "ok\n" {
		t.Fatalf("bystander: %q", out)
	}
	g0, h0 := agentLoad(t, e)
	t.Logf("agent with 3 sandboxes, before the flood: %.0f goroutines, heap %.1f MiB", g0, h0/(1<<20))

	// The flood, while the bystander and the ENI API are used.
	start := time.Now()
	flood := e.startExec(e.ctx, "hostile-flood", "flood", "10")
	var gMax, hMax float64
	var bystanderRuns, eniCalls int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // t.Error only: not the test's goroutine
		defer wg.Done()
		for time.Since(start) < 9*time.Second {
			if err := e.attack(e.ctx, "bystander", "true"); err != nil {
				t.Errorf("bystander during the flood: %v", err)
			}
			bystanderRuns++
			for _, verb := range []string{"eni", "attachments"} {
				args := []string{verb}
				if verb == "eni" {
					args = append(args, "list")
				}
				if out, err := e.Agent.CLI(args...); err != nil {
					t.Errorf("%s during the flood: %v", verb, err)
				} else if verb == "eni" && !strings.Contains(out, "vpc-h") {
					t.Errorf("eni list during the flood:\n%s", out)
				}
				eniCalls++
			}
		}
	}()
	for time.Since(start) < 10*time.Second {
		g, h := agentLoad(t, e)
		gMax, hMax = max(gMax, g), max(hMax, h)
		time.Sleep(250 * time.Millisecond)
	}
	wg.Wait()
	select {
	case r := <-flood:
		if r.err != nil {
			t.Errorf("flood exec: %v", r.err)
		}
		t.Logf("the guest sent %s", strings.TrimSpace(r.stderr))
	case <-time.After(30 * time.Second):
		t.Fatal("the flood exec did not end")
	}
	t.Logf("during the flood: at most %.0f goroutines (%.0f before), heap at most %.1f MiB (%.1f before); "+
		"%d bystander execs and %d ENI API calls", gMax, g0, hMax/(1<<20), h0/(1<<20), bystanderRuns, eniCalls)
	if gMax > g0+floodExtraGoroutines {
		t.Errorf("goroutines rose from %.0f to %.0f under the flood", g0, gMax)
	}
	if hMax > floodHeapBytes {
		t.Errorf("heap reached %.1f MiB under the flood (bound %d MiB)", hMax/(1<<20), floodHeapBytes>>20)
	}
	if s := e.get("hostile-flood"); s.State != apiv1.Sandbox_READY {
		t.Errorf("a flood within the protocol ended the sandbox: %s (%s)", s.State, s.Reason)
	}

	// The console alone, past its cap: under TCG the port flood leaves
	// the console little of the guest's one vCPU.
	start = time.Now()
	if err := e.attack(e.ctx, "hostile-flood", "console", strconv.Itoa(3*consoleCapBytes/2)); err != nil {
		t.Fatalf("console flood: %v", err)
	}
	t.Logf("the guest wrote %d MiB to its console in %v", 3*consoleCapBytes/2>>20, time.Since(start).Round(time.Millisecond))

	// The console: rotated, under its cap, readable through the API.
	dir := filepath.Join(e.Agent.StateDir, "sandboxes", "hostile-flood")
	var consoleBytes int64
	for _, f := range []string{"console.log", "console.log.1"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			b, _ := os.ReadFile(filepath.Join(dir, "console.log"))
			t.Fatalf("console after the flood: %v; console.log (%d bytes) ends:\n%s", err, len(b), tail(string(b), 10))
		}
		consoleBytes += st.Size()
	}
	t.Logf("console log after 10 s written flat out: %d KiB in console.log + console.log.1", consoleBytes>>10)
	if consoleBytes > consoleCapBytes || consoleBytes < consoleCapBytes/2 {
		t.Errorf("console log holds %d bytes; want under the cap %d, and rotated (over half of it)", consoleBytes, consoleCapBytes)
	}
	if tail := e.CLI("sandbox", "logs", "hostile-flood", "--tail-bytes", "100"); len(tail) != 100 || !strings.Contains(tail, "flood the console") {
		t.Errorf("sandbox logs --tail-bytes 100: %q", tail)
	}

	// Silence and a new session: calls time out, the sandbox stays (and
	// the agent reconnects after the new session).
	// An exec whose context ends waits 5 s for the guest to confirm
	// the kill: the silence outlasts two of them.
	silenceEnd := time.Now().Add(15 * time.Second)
	sctx, cancel := context.WithTimeout(e.ctx, time.Second)
	err := e.attack(sctx, "hostile-proto", "silence", "15")
	cancel()
	if code(err) != codes.DeadlineExceeded {
		t.Errorf("exec that silences the guest: %v, want DeadlineExceeded", err)
	}
	sctx, cancel = context.WithTimeout(e.ctx, time.Second)
	err = e.attack(sctx, "hostile-proto", "anything")
	cancel()
	if code(err) != codes.DeadlineExceeded {
		t.Errorf("exec in a silent guest: %v, want DeadlineExceeded", err)
	}
	time.Sleep(time.Until(silenceEnd) + time.Second)
	if s := e.get("hostile-proto"); s.State != apiv1.Sandbox_READY {
		t.Errorf("a silent guest's sandbox: %s (%s)", s.State, s.Reason)
	}
	if err := e.attack(e.ctx, "hostile-proto", "hello"); code(err) != codes.Unavailable {
		t.Errorf("exec whose guest starts a new session: %v, want Unavailable", err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		// "unknown" exits 2: the reconnected agent runs it.
		sctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
		err := e.attack(sctx, "hostile-proto", "unknown")
		cancel()
		if err != nil && err.Error() == "exit code 2" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no exec after the guest's new session: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Violations: each guest is Failed, its QEMU killed. Output beyond
	// the window shows only while the host gives no credit back: the
	// caller here reads nothing of the exec's stream, so the agent's
	// writes to it block (a slow consumer).
	stream, err := e.cl.Exec(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := stream.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Start{Start: &apiv1.ExecStart{SandboxId: "hostile-flood", Argv: []string{"ignore-credit"}}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.attack(e.ctx, "hostile-proto", "garbage"); code(err) != codes.Unavailable {
		t.Errorf("hostile-proto: exec garbage: %v, want Unavailable", err)
	}
	for id, want := range map[string]string{
		"hostile-flood": "guest agent protocol violation: exec ",
		"hostile-proto": "guest agent protocol violation: agentproto: bad frame magic",
	} {
		s := e.waitState(id, apiv1.Sandbox_FAILED, 10*time.Second)
		if !strings.HasPrefix(s.Reason, want) {
			t.Errorf("%s failed with %q, want a reason starting %q", id, s.Reason, want)
		}
		if len(fabric.QEMUPids(id)) > 0 {
			t.Errorf("%s: qemu still runs", id)
		}
		t.Logf("%s: %s", id, s.Reason)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if code(err) != codes.Unavailable {
				t.Errorf("hostile-flood: exec ignore-credit: %v, want Unavailable", err)
			}
			break
		}
	}
	if !strings.Contains(e.CLI("sandbox", "get", "hostile-flood"), "window") {
		t.Error("sandbox get does not show the violation")
	}
	// The logs of a failed sandbox stay for a post-mortem.
	if out := e.CLI("sandbox", "logs", "hostile-proto"); !strings.Contains(out, "hostileguest: ready") {
		t.Errorf("console of the failed sandbox lacks the guest's first line:\n%s", tail(out, 5))
	}
	if out := e.sh("bystander", "echo still"); out != "still\n" {
		t.Errorf("bystander after the violations: %q", out)
	}
	g1, h1 := agentLoad(t, e)
	t.Logf("after: %.0f goroutines, heap %.1f MiB", g1, h1/(1<<20))
	if g1 > g0 {
		t.Errorf("goroutines %.0f after two sandboxes ended, %.0f before", g1, g0)
	}
}

// logs --follow streams what the console gains and ends when the
// sandbox's QEMU is gone.
func TestSandboxLogsFollow(t *testing.T) {
	e := newEnv(t)
	e.create(&apiv1.SandboxSpec{Id: "vm-logs"})
	cmd := exec.Command(filepath.Join(binDir, "nodeagent"), "sandbox", "logs", "vm-logs", "--follow", "--socket", e.Agent.Socket)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(out)
		got <- string(b)
	}()
	e.sh("vm-logs", "echo marker-one-$((6*7)) > /dev/ttyS0")
	if _, err := e.cl.StopSandbox(e.ctx, &apiv1.StopSandboxRequest{Id: "vm-logs"}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if err := cmd.Wait(); err != nil {
			t.Errorf("logs --follow: %v", err)
		}
		if !strings.Contains(s, "nodeinfra-agent: ready") || !strings.Contains(s, "marker-one-42") {
			t.Errorf("followed console lacks the agent's line or the marker:\n%s", tail(s, 10))
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatal("logs --follow did not end with the sandbox")
	}
	if q := e.CLI("sandbox", "logs", "vm-logs", "--source", "qemu"); strings.Contains(q, "error") {
		t.Errorf("qemu's log: %s", q)
	}
}

// The console survives an agent restart: while no agent reads it the
// guest's writes are dropped (they complete, the guest never waits), and
// the next agent takes the console up again, appending to the same log.
func TestSandboxConsoleAcrossAgentRestart(t *testing.T) {
	e := newEnv(t)
	e.create(&apiv1.SandboxSpec{Id: "vm-tty"})
	e.sh("vm-tty", "echo before-restart > /dev/ttyS0")
	// A process of its own session outlives the exec (and the agent).
	e.sh("vm-tty", "setsid sh -c 'sleep 2; echo while-down > /dev/ttyS0; echo ok > /tmp/written' >/dev/null 2>&1 &")
	e.Agent.Kill()
	time.Sleep(4 * time.Second)
	if err := e.Agent.Start(); err != nil {
		t.Fatal(err)
	}
	e.waitState("vm-tty", apiv1.Sandbox_READY, 30*time.Second)
	if out := e.sh("vm-tty", "cat /tmp/written"); out != "ok\n" {
		t.Errorf("the guest's console write while no agent ran did not complete: %q", out)
	}
	e.sh("vm-tty", "echo after-restart > /dev/ttyS0")
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := e.CLI("sandbox", "logs", "vm-tty")
		if strings.Contains(out, "before-restart") && strings.Contains(out, "after-restart") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("console after the restart:\n%s", tail(out, 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
