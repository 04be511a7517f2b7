package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// phase is one data path driven over and over: optional set-up and
// tear-down around the cycles (both inside the phase's time).
type phase struct {
	name        string
	setUp, done func(ctx context.Context) error
	cycle       func(ctx context.Context, i int) error
}

// result is how a phase went.
type result struct {
	name   string
	want   int
	cycles []time.Duration // one per cycle that completed
	took   time.Duration
	err    error
}

func (e *env) phases() []phase {
	return []phase{
		{name: "CNI ADD/DEL", cycle: e.cniCycle},
		{name: "sandbox create/exec/delete", setUp: e.addVMPods, done: e.delVMPods, cycle: e.sandboxCycle},
		{name: "CSI NodeStage/NodeUnstage", cycle: e.csiCycle},
	}
}

// run runs n cycles of p, printing progress every tenth.
func (p phase) run(ctx context.Context, n int, label string) result {
	r := result{name: p.name, want: n}
	if n == 0 {
		return r
	}
	start := time.Now()
	if p.setUp != nil {
		r.err = p.setUp(ctx)
	}
	step := max(n/10, 1)
	for i := 0; i < n && r.err == nil; i++ {
		t := time.Now()
		if err := p.cycle(ctx, i); err != nil {
			r.err = fmt.Errorf("cycle %d: %w", i+1, err)
			break
		}
		r.cycles = append(r.cycles, time.Since(t))
		if (i+1)%step == 0 || i+1 == n {
			fmt.Fprintf(os.Stderr, "soak: %s %s: %d/%d (%v)\n", label, p.name, i+1, n, time.Since(start).Round(100*time.Millisecond))
		}
	}
	if p.done != nil {
		// Undone even when the set-up failed or the cycles were
		// interrupted.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := p.done(dctx); err != nil {
			r.err = errors.Join(r.err, err)
		}
	}
	r.took = time.Since(start)
	return r
}

// cniCycle ADDs one of a handful of pods (each assigned its own ENI) and
// DELs it the way containerd 1.6 does: first with the netns
// (StopPodSandbox), then again without (RemovePodSandbox).
func (e *env) cniCycle(ctx context.Context, i int) error {
	p := e.cniPods[i%len(e.cniPods)]
	if _, err := e.rt.Add(ctx, p); err != nil {
		return fmt.Errorf("ADD %s: %w", p.Name, err)
	}
	e.added[p] = true
	return e.cniDel(ctx, p)
}

func (e *env) cniDel(ctx context.Context, p *fabric.Pod) error {
	if err := e.rt.Del(ctx, p, true); err != nil {
		return fmt.Errorf("DEL %s: %w", p.Name, err)
	}
	if err := e.rt.Del(ctx, p, false); err != nil {
		return fmt.Errorf("second DEL (no netns) %s: %w", p.Name, err)
	}
	delete(e.added, p)
	return nil
}

// addVMPods gives the networked sandboxes' pods their ENI as eth0.
func (e *env) addVMPods(ctx context.Context) error {
	for _, p := range e.vmPods {
		if _, err := e.rt.Add(ctx, p); err != nil {
			return fmt.Errorf("ADD %s: %w", p.Name, err)
		}
		e.added[p] = true
	}
	return nil
}

func (e *env) delVMPods(ctx context.Context) error {
	var errs []error
	for _, p := range e.vmPods {
		if e.added[p] {
			errs = append(errs, e.cniDel(ctx, p))
		}
	}
	return errors.Join(errs...)
}

// sandboxCycle creates a sandbox (every other one in a pod netns, whose
// eth0 it takes over through a tap and tc redirects), runs `echo ok` in
// it over the API and deletes it.
func (e *env) sandboxCycle(ctx context.Context, i int) (err error) {
	e.sandboxSeq++
	id := fmt.Sprintf("%s%d", sandboxPrefix(e.tag), e.sandboxSeq)
	spec := &apiv1.SandboxSpec{Id: id, Vcpus: 1, MemoryMib: 128}
	if i%2 == 1 && len(e.vmPods) > 0 {
		spec.Netns = e.vmPods[(i/2)%len(e.vmPods)].NS.Path()
	}
	defer func() {
		if err != nil { // the next count starts from a clean node
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if _, derr := e.cl.DeleteSandbox(dctx, &apiv1.DeleteSandboxRequest{Id: id}); derr != nil {
				err = errors.Join(err, fmt.Errorf("delete %s after the failure: %w", id, derr))
			}
		}
	}()
	s, err := e.cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: spec, Wait: true})
	if err != nil {
		return fmt.Errorf("create %s: %w", id, err)
	}
	if s.State != apiv1.Sandbox_READY {
		return fmt.Errorf("create %s: %s (%s); console:\n%s", id, s.State, s.Reason,
			tailFile(filepath.Join(e.agentState, "sandboxes", id, "console.log"), 15))
	}
	out, code, err := e.exec(ctx, id, "echo", "ok")
	if err != nil {
		return fmt.Errorf("exec in %s: %w", id, err)
	}
	if out != "ok\n" || code != 0 {
		return fmt.Errorf("exec echo ok in %s: stdout %q, exit %d", id, out, code)
	}
	if err := e.checkRunning(id, spec.Netns); err != nil {
		return err
	}
	if _, err := e.cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{Id: id}); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	return nil
}

// exec runs argv in a sandbox with no stdin and returns its stdout and
// exit code.
func (e *env) exec(ctx context.Context, id string, argv ...string) (string, int32, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel() // ends the stream whatever happens
	stream, err := e.cl.Exec(ctx)
	if err != nil {
		return "", 0, err
	}
	for _, m := range []*apiv1.ExecRequest{
		{Kind: &apiv1.ExecRequest_Start{Start: &apiv1.ExecStart{SandboxId: id, Argv: argv}}},
		{Kind: &apiv1.ExecRequest_CloseStdin{CloseStdin: true}},
	} {
		if err := stream.Send(m); err != nil {
			return "", 0, err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return "", 0, err
	}
	var stdout strings.Builder
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return stdout.String(), 0, errors.New("the stream ended without an exit status")
		}
		if err != nil {
			return stdout.String(), 0, err
		}
		switch k := m.Kind.(type) {
		case *apiv1.ExecResponse_Stdout:
			stdout.Write(k.Stdout)
		case *apiv1.ExecResponse_Exit:
			// Drain to the end of the stream, as a client that is done
			// with it should.
			for {
				if _, err := stream.Recv(); err != nil {
					break
				}
			}
			return stdout.String(), k.Exit.Code, nil
		}
	}
}

// csiCycle stages one of a few volumes (mount access, ext4) and unstages
// it, through the CSI node API as the kubelet calls it.
func (e *env) csiCycle(ctx context.Context, i int) error {
	id := e.volumes[i%len(e.volumes)]
	path := e.stagingPath(id)
	if _, err := e.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: id, StagingTargetPath: path, VolumeCapability: testutil.CSIExt4, Secrets: e.ceph.Secrets(),
	}); err != nil {
		return fmt.Errorf("stage %s: %w", id, err)
	}
	e.staged[id] = true
	if _, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: path}); err != nil {
		return fmt.Errorf("unstage %s: %w", id, err)
	}
	delete(e.staged, id)
	return nil
}

// checkRunning makes sure a Ready sandbox holds what the census expects
// to see come and go, so that "nothing grew" is not vacuous: a cgroup
// under the run's parent and, in a pod netns, a tap with tc redirects.
func (e *env) checkRunning(id, netns string) error {
	hs := cgroupHierarchies()
	if len(hs) == 0 {
		return errors.New("no cgroup hierarchy found")
	}
	if n, err := countCgroups(filepath.Join(hs[0].dir, e.cgroupParent)); err != nil || n == 0 {
		return fmt.Errorf("sandbox %s is Ready but has no cgroup under %s (%s): %v", id, e.cgroupParent, hs[0].name, err)
	}
	if netns == "" {
		return nil
	}
	for _, p := range e.vmPods {
		if p.NS.Path() != netns {
			continue
		}
		st := podNetState([]*fabric.Pod{p})
		if st.err != nil {
			return st.err
		}
		if st.taps != 1 || st.filters == 0 {
			return fmt.Errorf("sandbox %s is Ready but pod %s holds %d taps and %d tc ingress filters (want 1 tap, redirects)", id, p.Name, st.taps, st.filters)
		}
	}
	return nil
}
