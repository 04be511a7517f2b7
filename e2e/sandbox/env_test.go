// Package sandbox_test is the end-to-end test of the pod sandboxes: the
// real nodeagent and cni-eni binaries, real QEMU (TCG here) booting the
// guest kernel and initramfs that `make build` produced, pod namespaces
// wired by cni-eni in the VPC fabric, and the run's Ceph cluster.
package sandbox_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

var binDir string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("SKIP e2e/sandbox: needs root (network namespaces, taps, cgroups)")
		os.Exit(0)
	}
	binDir = os.Getenv("NODEINFRA_BIN")
	if binDir == "" {
		fmt.Println("SKIP e2e/sandbox: needs NODEINFRA_BIN with the binaries and nodeagent-guest/ of `make build` (make test sets it)")
		os.Exit(0)
	}
	for _, f := range []string{"nodeagent", "cni-eni", "nodeagent-guest/vmlinux", "nodeagent-guest/initramfs.cpio"} {
		if _, err := os.Stat(filepath.Join(binDir, f)); err != nil {
			fmt.Printf("e2e/sandbox: %v (run make build)\n", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// env is a node (namespace) with its agent.
type env struct {
	*fabric.TestNode
	t *testing.T
	// cgroupParent is the agent's --cgroup-parent, removed at the end.
	cgroupParent string
	cl           *agentclient.Client
	ctx          context.Context
}

func newEnv(t *testing.T, extra ...string) *env {
	t.Helper()
	return newEnvIn(t, true, extra...)
}

// newEnvIn runs the agent in the fabric's node namespace, or (inNode
// false) in the machine's own, where the Ceph cluster's monitors listen.
func newEnvIn(t *testing.T, inNode bool, extra ...string) *env {
	t.Helper()
	parent := "/nodeinfra-e2e-" + randHex(4)
	// Runs last: after the agent has stopped and the fabric is gone.
	t.Cleanup(func() {
		left, err := fabric.RemoveCgroup(parent)
		if len(left) > 0 {
			t.Errorf("sandbox cgroups leaked under %s: %v", parent, left)
		}
		if err != nil {
			t.Errorf("%v (a sandbox cgroup leaked?)", err)
		}
	})
	extra = append([]string{"--cgroup-parent", parent}, extra...)
	start := fabric.NewTestNode
	if !inNode {
		start = fabric.NewTestNodeOnHost
	}
	n := start(t, filepath.Join(binDir, "nodeagent"), extra...)
	n.LogLines = 60
	cl, err := agentclient.Dial(n.Agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	e := &env{TestNode: n, t: t, cl: cl, ctx: ctx, cgroupParent: parent}
	t.Cleanup(func() {
		// Whatever the test left: delete every sandbox (no QEMU outlives
		// the test); the agent stops after this.
		if list, err := cl.ListSandboxes(context.Background(), &apiv1.ListSandboxesRequest{}); err == nil {
			for _, s := range list.Sandboxes {
				if _, err := cl.DeleteSandbox(context.Background(), &apiv1.DeleteSandboxRequest{Id: s.Spec.Id}); err != nil {
					t.Errorf("cleanup: delete %s: %v", s.Spec.Id, err)
				}
			}
		}
		cancel()
		cl.Close()
	})
	return e
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// create asks for a sandbox and waits until it is Ready.
func (e *env) create(spec *apiv1.SandboxSpec) *apiv1.Sandbox {
	e.t.Helper()
	start := time.Now()
	s, err := e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: spec, Wait: true})
	if err != nil {
		e.t.Fatalf("create %s: %v", spec.Id, err)
	}
	if s.State != apiv1.Sandbox_READY {
		e.t.Fatalf("create %s: %s (%s); console: %s", spec.Id, s.State, s.Reason, e.console(spec.Id))
	}
	e.t.Logf("sandbox %s ready in %v (accel %s, pid %d)", spec.Id, time.Since(start).Round(time.Millisecond), s.Accel, s.Pid)
	return s
}

func (e *env) console(id string) string {
	b, _ := os.ReadFile(filepath.Join(e.Agent.StateDir, "sandboxes", id, "console.log"))
	return tail(string(b), 20)
}

func (e *env) get(id string) *apiv1.Sandbox {
	e.t.Helper()
	s, err := e.cl.GetSandbox(e.ctx, &apiv1.GetSandboxRequest{Id: id})
	if err != nil {
		e.t.Fatalf("get %s: %v", id, err)
	}
	return s
}

// exec runs argv in the guest and returns its stdout, stderr and exit code.
func (e *env) exec(id string, stdin string, argv ...string) (string, string, int32) {
	e.t.Helper()
	stream, err := e.cl.Exec(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := stream.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Start{Start: &apiv1.ExecStart{SandboxId: id, Argv: argv}}}); err != nil {
		e.t.Fatal(err)
	}
	if stdin != "" {
		if err := stream.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Stdin{Stdin: []byte(stdin)}}); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := stream.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_CloseStdin{CloseStdin: true}}); err != nil {
		e.t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			e.t.Fatalf("exec %v in %s: stream ended without an exit status", argv, id)
		}
		if err != nil {
			e.t.Fatalf("exec %v in %s: %v", argv, id, err)
		}
		switch k := m.Kind.(type) {
		case *apiv1.ExecResponse_Stdout:
			stdout.Write(k.Stdout)
		case *apiv1.ExecResponse_Stderr:
			stderr.Write(k.Stderr)
		case *apiv1.ExecResponse_Exit:
			return stdout.String(), stderr.String(), k.Exit.Code
		}
	}
}

// sh runs a shell command in the guest and fails the test unless it exits 0.
func (e *env) sh(id, script string) string {
	e.t.Helper()
	out, errOut, code := e.exec(id, "", "sh", "-c", script)
	if code != 0 {
		e.t.Fatalf("guest %s: %q exited %d: %s%s", id, script, code, out, errOut)
	}
	return out
}

func (e *env) deleteSandbox(id string) {
	e.t.Helper()
	if _, err := e.cl.DeleteSandbox(e.ctx, &apiv1.DeleteSandboxRequest{Id: id}); err != nil {
		e.t.Fatalf("delete %s: %v", id, err)
	}
}

// waitState polls until the sandbox reaches want.
func (e *env) waitState(id string, want apiv1.Sandbox_State, within time.Duration) *apiv1.Sandbox {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		s := e.get(id)
		if s.State == want {
			return s
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("sandbox %s is %s (%s) after %v, want %s", id, s.State, s.Reason, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func code(err error) codes.Code { return status.Code(err) }

// findDisk defines find_disk SERIAL, which prints the guest's device of
// the disk with that serial, waiting up to 10 s for a hot-plugged one.
const findDisk = `find_disk() { for i in $(seq 100); do for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "$1" ] && { echo /dev/${d##*/}; return 0; }; done; sleep 0.1; done; echo "no disk $1" >&2; return 1; }; `
