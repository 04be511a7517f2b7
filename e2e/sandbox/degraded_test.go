package sandbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

// A node that lacks what sandboxes need (here: no cgroup file system where
// the agent is told to look, no QEMU) still runs the agent: it answers at
// once, serves ENIs, refuses sandbox calls naming what is missing, and
// `nodeagent status` lists it.
func TestDegradedStartServesENIs(t *testing.T) {
	start := time.Now()
	n := fabric.NewTestNode(t, filepath.Join(binDir, "nodeagent"),
		"--cgroup-parent", "/nodeinfra-e2e-degraded", "--cgroup-root", "/nonexistent-cgroups-"+randHex(4),
		"--qemu", "/nonexistent/qemu-system-x86_64")
	t.Logf("agent answered %v after its start", time.Since(start).Round(time.Millisecond))
	v := n.VPC("vpc-g", "10.65.0.1/24")
	eni := n.ENI(v, "10.65.0.11/24")
	if out := n.CLI("eni", "list"); !strings.Contains(out, eni.MAC) {
		t.Errorf("eni list on a degraded node:\n%s", out)
	}
	cl, err := agentclient.Dial(n.Agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "vm-none"}, Wait: true})
	if code(err) != codes.FailedPrecondition || !strings.Contains(fmt.Sprint(err), "cgroups") || !strings.Contains(fmt.Sprint(err), "qemu") {
		t.Errorf("create on a degraded node: %v, want FailedPrecondition naming cgroups and qemu", err)
	}
	var st struct {
		SandboxProblems []string `json:"sandboxProblems"`
	}
	out := n.CLI("status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.SandboxProblems) != 2 {
		t.Errorf("status -o json: %v, want 2 sandbox problems:\n%s", err, out)
	}
	if out := n.CLI("status"); !strings.Contains(out, "sandboxes: unavailable") || !strings.Contains(out, "missing: cgroups") {
		t.Errorf("status:\n%s", out)
	}
}

// The agent answers on its socket at once: the KVM probe (which boots a
// test guest) runs in the background, and a create waits for it.
func TestAgentAnswersBeforeKVMProbe(t *testing.T) {
	start := time.Now()
	e := newEnv(t)
	up := time.Since(start)
	t.Logf("agent answered %v after its start", up.Round(time.Millisecond))
	// The probe takes seconds under TCG; the socket must not wait for it.
	// A generous bound: this proves the order, not a speed.
	if up > 3*time.Second {
		t.Errorf("agent answered only %v after its start", up)
	}
	e.create(&apiv1.SandboxSpec{Id: "vm-early"})
}
