package sandbox_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// crashAgent restarts the agent so that it kills itself (SIGKILL, as kill
// -9 would) when it reaches point, runs do, waits for the death and starts
// a normal agent on the same state.
func (e *env) crashAgent(point string, do func()) {
	e.t.Helper()
	e.Agent.Kill()
	e.Agent.Env = []string{"NODEAGENT_TEST_CRASH_AT=" + point}
	if err := e.Agent.Start(); err != nil {
		e.t.Fatal(err)
	}
	do()
	select {
	case <-e.Agent.Exited():
	case <-time.After(60 * time.Second):
		e.t.Fatalf("the agent did not reach crash point %q", point)
	}
	e.Agent.Kill() // reap
	e.Agent.Env = nil
	if err := e.Agent.Start(); err != nil {
		e.t.Fatal(err)
	}
}

// settle waits until sandbox id has left Creating (re-adoption finished).
func (e *env) settle(id string) *apiv1.Sandbox {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		s, err := e.cl.GetSandbox(e.ctx, &apiv1.GetSandboxRequest{Id: id})
		if err == nil && s.State != apiv1.Sandbox_CREATING {
			return s
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("sandbox %s did not settle: %v, %v", id, s, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkInvariants: no QEMU but the recorded one of a Ready sandbox, that
// QEMU inside its cgroup, and the guest's disks equal to the record.
func (e *env) checkInvariants(id, cgroupParent string) {
	e.t.Helper()
	// A re-adopted sandbox is Ready as recorded at once; an exec waits
	// until the new agent has reconnected and reconciled it.
	if e.get(id).State == apiv1.Sandbox_READY {
		e.sh(id, "true")
	}
	s := e.get(id)
	pids := fabric.QEMUPids(id)
	if s.State != apiv1.Sandbox_READY {
		if len(pids) > 0 {
			e.t.Errorf("%s is %s (%s) but qemu %v runs: an orphan", id, s.State, s.Reason, pids)
		}
		return
	}
	if len(pids) != 1 || pids[0] != int(s.Pid) {
		e.t.Errorf("%s: qemu pids %v, record says %d", id, pids, s.Pid)
	}
	want := cgroupParent + "/sandbox-" + id
	dirs := cgroupDirsOf(int(s.Pid))
	if len(dirs) == 0 {
		e.t.Errorf("%s: qemu %d is in no cgroup of its own", id, s.Pid)
	}
	for _, d := range dirs {
		if !strings.HasSuffix(d, want) {
			e.t.Errorf("%s: qemu %d in %s, want .../%s", id, s.Pid, d, want)
		}
	}
	var recorded []string
	for _, d := range s.Disks {
		recorded = append(recorded, d.Id)
	}
	sort.Strings(recorded)
	out := e.sh(id, "cat /sys/block/vd*/serial 2>/dev/null | sort; true")
	guest := strings.Fields(out)
	if strings.Join(guest, ",") != strings.Join(recorded, ",") {
		e.t.Errorf("%s: the guest has disks %v, the record %v", id, guest, recorded)
	}
}

// A kill -9 of the agent at each boot step and at each point of a disk
// hot-plug: the next agent leaves no orphan QEMU, every QEMU inside its
// cgroup, and QEMU's disks as recorded.
func TestSandboxCrashAtEachStep(t *testing.T) {
	e := newEnv(t)
	parent := e.cgroupParent
	v := e.VPC("vpc-c", "10.69.0.1/24")
	disk := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(disk, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	steps := []string{"pod network", "disks", "cgroup", "qemu", "qemu:record pid", "qemu:join cgroup",
		"connect", "configure guest", "ready"}
	for i, step := range steps {
		id := fmt.Sprintf("crash-%d", i)
		n := e.ENI(v, fmt.Sprintf("10.69.0.%d/24", 11+i))
		p := e.podOn(e.runtime(), id, n)
		spec := &apiv1.SandboxSpec{Id: id, Netns: p.NS.Path()}
		e.crashAgent(step, func() {
			// The agent may die before it answers.
			_, _ = e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: spec})
		})
		s := e.settle(id)
		t.Logf("crash before %q: %s %s", step, s.State, s.Reason)
		e.checkInvariants(id, parent)
		if s.State != apiv1.Sandbox_READY {
			links := podLinks(t, p.NS)
			if a := links["eth0"]; len(a) != 1 || a[0] != fmt.Sprintf("10.69.0.%d/24", 11+i) {
				t.Errorf("crash before %q: eth0 %v, want its address back", step, links)
			}
		}
		e.deleteSandbox(id)
	}

	// A Ready sandbox, and a disk hot-plug cut at each point.
	e.create(&apiv1.SandboxSpec{Id: "crash-hp"})
	for i, point := range []string{"attach:object-add", "attach:blockdev-add", "attach:device_add", "attach:record"} {
		did := fmt.Sprintf("hp%d", i)
		e.crashAgent(point, func() {
			_, _ = e.cl.AttachDisk(e.ctx, &apiv1.AttachDiskRequest{SandboxId: "crash-hp",
				Disk: &apiv1.Disk{Id: did, Source: &apiv1.Disk_Path{Path: disk}, ReadOnly: true}})
		})
		s := e.waitState("crash-hp", apiv1.Sandbox_READY, 60*time.Second)
		t.Logf("crash before %q: disks %v", point, s.Disks)
		e.checkInvariants("crash-hp", parent)
	}
}
