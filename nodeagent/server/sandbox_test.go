package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// fakeSandboxes is a sandbox.Service in memory. It validates its input
// with the domain's own checks, as sandbox.Manager does (the adapter only
// translates). Its Exec understands a few
// programs: "cat" copies stdin to stdout, writes "done" to stderr and exits
// 3; "noread" exits 0 without reading stdin; "sleep" runs until cancelled.
type fakeSandboxes struct {
	mu      sync.Mutex
	boxes   map[string]sandbox.Sandbox
	subs    map[chan sandbox.Event]struct{}
	creates int
	execCtx chan context.Context // receives the context of each exec
}

var _ sandbox.Service = (*fakeSandboxes)(nil)

func newFake() *fakeSandboxes {
	return &fakeSandboxes{boxes: map[string]sandbox.Sandbox{}, subs: map[chan sandbox.Event]struct{}{},
		execCtx: make(chan context.Context, 8)}
}

func (f *fakeSandboxes) Create(_ context.Context, spec sandbox.Spec, _ bool) (sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	spec = spec.WithDefaults()
	if err := spec.Validate(); err != nil {
		return sandbox.Sandbox{}, err
	}
	f.creates++ // valid specs only
	if b, ok := f.boxes[spec.ID]; ok {
		if !b.Spec.Equal(spec) {
			return sandbox.Sandbox{}, fmt.Errorf("sandbox %q exists with another spec: %w", spec.ID, errdefs.ErrAlreadyExists)
		}
		return b, nil
	}
	b := sandbox.Sandbox{Spec: spec, State: sandbox.StateReady, PID: 42, Accel: "tcg", Disks: spec.Disks,
		Addresses: []string{"10.1.0.11/24"}, CreatedAt: time.Unix(1700000000, 0).UTC()}
	f.boxes[spec.ID] = b
	return b, nil
}

func (f *fakeSandboxes) lookup(id string) (sandbox.Sandbox, error) {
	if err := sandbox.ValidateID(id); err != nil {
		return sandbox.Sandbox{}, err
	}
	b, ok := f.boxes[id]
	if !ok {
		return b, fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	return b, nil
}

func (f *fakeSandboxes) Stop(_ context.Context, id string, _ time.Duration) (sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.lookup(id)
	if err != nil {
		return b, err
	}
	b.State, b.PID, b.Reason = sandbox.StateStopped, 0, "stopped"
	f.boxes[id] = b
	return b, nil
}

func (f *fakeSandboxes) Delete(_ context.Context, id string) error {
	if err := sandbox.ValidateID(id); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.boxes, id)
	return nil
}

func (f *fakeSandboxes) Get(id string) (sandbox.Sandbox, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lookup(id)
}

func (f *fakeSandboxes) List() []sandbox.Sandbox {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []sandbox.Sandbox
	for _, b := range f.boxes {
		out = append(out, b)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spec.ID < out[j].Spec.ID })
	return out
}

func (f *fakeSandboxes) Watch(ctx context.Context, includeCurrent bool) <-chan sandbox.Event {
	ch := make(chan sandbox.Event, 16)
	if includeCurrent {
		for _, b := range f.List() {
			ch <- sandbox.Event{Time: time.Now(), Type: sandbox.EventState, Sandbox: b}
		}
	}
	f.mu.Lock()
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	go func() {
		<-ctx.Done()
		f.cutOff()
	}()
	return ch
}

func (f *fakeSandboxes) publish(e sandbox.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		ch <- e
	}
}

// cutOff closes every watch, as the manager does with slow watchers.
func (f *fakeSandboxes) cutOff() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		delete(f.subs, ch)
		close(ch)
	}
}

func (f *fakeSandboxes) watchers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

func (f *fakeSandboxes) Exec(ctx context.Context, id string, req sandbox.ExecRequest) (sandbox.ExitStatus, error) {
	if _, err := f.Get(id); err != nil {
		return sandbox.ExitStatus{}, err
	}
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return sandbox.ExitStatus{}, fmt.Errorf("exec in %q: empty command: %w", id, errdefs.ErrInvalidArgument)
	}
	f.execCtx <- ctx
	switch req.Argv[0] {
	case "cat":
		if _, err := io.Copy(req.Stdout, req.Stdin); err != nil {
			return sandbox.ExitStatus{}, err
		}
		fmt.Fprintln(req.Stderr, "done")
		return sandbox.ExitStatus{Code: 3}, nil
	case "noread":
		return sandbox.ExitStatus{}, nil
	case "sleep":
		<-ctx.Done()
		return sandbox.ExitStatus{}, ctx.Err()
	}
	return sandbox.ExitStatus{Code: 127}, nil
}

func (f *fakeSandboxes) AttachDisk(_ context.Context, id string, d sandbox.Disk) (sandbox.Sandbox, error) {
	if err := d.Validate(); err != nil {
		return sandbox.Sandbox{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.lookup(id)
	if err != nil {
		return b, err
	}
	for _, have := range b.Disks {
		if have.ID == d.ID {
			if have.Equal(d) {
				return b, nil
			}
			return b, fmt.Errorf("sandbox %q has another disk %q: %w", id, d.ID, errdefs.ErrAlreadyExists)
		}
	}
	b.Disks = append(append([]sandbox.Disk(nil), b.Disks...), d)
	f.boxes[id] = b
	return b, nil
}

func (f *fakeSandboxes) DetachDisk(_ context.Context, id, diskID string) (sandbox.Sandbox, error) {
	if err := sandbox.ValidateDiskID(diskID); err != nil {
		return sandbox.Sandbox{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.lookup(id)
	if err != nil {
		return b, err
	}
	var kept []sandbox.Disk
	for _, d := range b.Disks {
		if d.ID != diskID {
			kept = append(kept, d)
		}
	}
	b.Disks = kept
	f.boxes[id] = b
	return b, nil
}

func (f *fakeSandboxes) UpdateResources(_ context.Context, id string, r cgroup.Resources, qos map[string]sandbox.DiskQoS) (sandbox.Sandbox, error) {
	if err := r.Validate(); err != nil {
		return sandbox.Sandbox{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.boxes[id]
	if !ok {
		return sandbox.Sandbox{}, fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	b.Resources = b.Resources.With(r)
	for i := range b.Disks {
		if q, ok := qos[b.Disks[i].ID]; ok {
			b.Disks[i].QoS = q
		}
	}
	f.boxes[id] = b
	return b, nil
}

func (f *fakeSandboxes) Stats(_ context.Context, id string) (sandbox.Stats, error) {
	if _, err := f.lookup(id); err != nil {
		return sandbox.Stats{}, err
	}
	return sandbox.Stats{Stats: cgroup.Stats{CPUUsage: time.Second, Pids: 3, IO: []cgroup.DeviceIOStats{{Major: 7, Minor: 1, ReadBytes: 10}}},
		Cgroup: "/x/sandbox-" + id, Disks: map[string]sandbox.BlockStats{"data": {ReadBytes: 5}}}, nil
}

// startSandboxServer serves svc on a temporary unix socket and returns a
// client of it.
func startSandboxServer(t *testing.T, svc sandbox.Service) *agentclient.Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "sbx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGRPCServer(slog.New(slog.DiscardHandler), nil)
	apiv1.RegisterSandboxServiceServer(g, NewSandboxServer(svc))
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	cl, err := agentclient.Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func rbdDisk(id, pool, image string) *apiv1.Disk {
	return &apiv1.Disk{Id: id, Source: &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: pool, Image: image}}}
}

func TestSandboxCalls(t *testing.T) {
	fake := newFake()
	cl := startSandboxServer(t, fake)
	ctx := testContext(t)
	spec := &apiv1.SandboxSpec{Id: "pod-1", Netns: "/var/run/netns/p1",
		Disks: []*apiv1.Disk{{Source: &apiv1.Disk_Path{Path: "/dev/vdb"}}, rbdDisk("vol", "rbd", "img")}}
	sb, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: spec, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if sb.GetState() != apiv1.Sandbox_READY || sb.GetSpec().GetVcpus() != 1 || sb.GetSpec().GetMemoryMib() != 128 ||
		sb.GetSpec().GetDisks()[0].GetId() != "disk0" || sb.GetPid() != 42 || sb.GetCreatedAt().AsTime().Unix() != 1700000000 ||
		sb.GetReadyAt() != nil {
		t.Errorf("created sandbox: %v", sb)
	}
	again, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: sb.GetSpec()})
	if err != nil || !proto.Equal(again, sb) {
		t.Errorf("repeated create: %v, %v", again, err)
	}

	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"create with another spec", func() error {
			_, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "pod-1", Vcpus: 2}})
			return err
		}, codes.AlreadyExists},
		{"create without spec", func() error {
			_, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{})
			return err
		}, codes.InvalidArgument},
		{"create with a bad ID", func() error {
			_, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "../etc"}})
			return err
		}, codes.InvalidArgument},
		{"create with a snapshot", func() error {
			_, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "p",
				Disks: []*apiv1.Disk{rbdDisk("", "rbd", "img@snap")}}})
			return err
		}, codes.InvalidArgument},
		{"create with a disk without source", func() error {
			_, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "p",
				Disks: []*apiv1.Disk{{Id: "d"}}}})
			return err
		}, codes.InvalidArgument},
		{"get unknown", func() error {
			_, err := cl.GetSandbox(ctx, &apiv1.GetSandboxRequest{Id: "nope"})
			return err
		}, codes.NotFound},
		{"get bad ID", func() error {
			_, err := cl.GetSandbox(ctx, &apiv1.GetSandboxRequest{Id: "A/B"})
			return err
		}, codes.InvalidArgument},
		{"stop unknown", func() error {
			_, err := cl.StopSandbox(ctx, &apiv1.StopSandboxRequest{Id: "nope"})
			return err
		}, codes.NotFound},
		{"delete unknown", func() error {
			_, err := cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{Id: "nope"})
			return err
		}, codes.OK},
		{"delete without ID", func() error {
			_, err := cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{})
			return err
		}, codes.InvalidArgument},
		{"attach without disk", func() error {
			_, err := cl.AttachDisk(ctx, &apiv1.AttachDiskRequest{SandboxId: "pod-1"})
			return err
		}, codes.InvalidArgument},
		{"attach without disk ID", func() error {
			_, err := cl.AttachDisk(ctx, &apiv1.AttachDiskRequest{SandboxId: "pod-1", Disk: rbdDisk("", "rbd", "x")})
			return err
		}, codes.InvalidArgument},
		{"attach another disk with a used ID", func() error {
			_, err := cl.AttachDisk(ctx, &apiv1.AttachDiskRequest{SandboxId: "pod-1", Disk: rbdDisk("vol", "rbd", "other")})
			return err
		}, codes.AlreadyExists},
		{"attach to unknown", func() error {
			_, err := cl.AttachDisk(ctx, &apiv1.AttachDiskRequest{SandboxId: "nope", Disk: rbdDisk("x", "rbd", "x")})
			return err
		}, codes.NotFound},
		{"detach bad disk ID", func() error {
			_, err := cl.DetachDisk(ctx, &apiv1.DetachDiskRequest{SandboxId: "pod-1", DiskId: "Disk 1"})
			return err
		}, codes.InvalidArgument},
	} {
		if got := status.Code(tc.call()); got != tc.code {
			t.Errorf("%s: code %v, want %v", tc.name, got, tc.code)
		}
	}
	if fake.creates != 3 { // two good ones and the one with another spec
		t.Errorf("the service saw %d creates, want 3: invalid specs must be refused before any create", fake.creates)
	}

	sb, err = cl.AttachDisk(ctx, &apiv1.AttachDiskRequest{SandboxId: "pod-1", Disk: rbdDisk("hot", "rbd", "hot-img")})
	if err != nil || len(sb.GetDisks()) != 3 || sb.GetDisks()[2].GetRbd().GetImage() != "hot-img" {
		t.Fatalf("attach: %v, %v", sb, err)
	}
	if sb, err = cl.DetachDisk(ctx, &apiv1.DetachDiskRequest{SandboxId: "pod-1", DiskId: "hot"}); err != nil || len(sb.GetDisks()) != 2 {
		t.Fatalf("detach: %v, %v", sb, err)
	}
	if sb, err = cl.StopSandbox(ctx, &apiv1.StopSandboxRequest{Id: "pod-1", TimeoutSeconds: 1}); err != nil ||
		sb.GetState() != apiv1.Sandbox_STOPPED || sb.GetReason() != "stopped" {
		t.Fatalf("stop: %v, %v", sb, err)
	}
	list, err := cl.ListSandboxes(ctx, &apiv1.ListSandboxesRequest{})
	if err != nil || len(list.GetSandboxes()) != 1 {
		t.Fatalf("list: %v, %v", list, err)
	}
	if _, err := cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{Id: "pod-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.GetSandbox(ctx, &apiv1.GetSandboxRequest{Id: "pod-1"}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestSandboxesDisabled(t *testing.T) {
	cl := startSandboxServer(t, nil)
	ctx := testContext(t)
	if _, err := cl.ListSandboxes(ctx, &apiv1.ListSandboxesRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("list: %v, want FailedPrecondition", err)
	}
	st, err := cl.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("exec: %v, want FailedPrecondition", err)
	}
	if _, err := readLogs(ctx, cl, &apiv1.SandboxLogsRequest{Id: "a"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("logs: %v, want FailedPrecondition", err)
	}
}

// execResult is what the client of an Exec call got.
type execResult struct {
	stdout, stderr bytes.Buffer
	exit           *apiv1.ExitStatus
	chunks         int
	err            error
}

func recvExec(st apiv1.SandboxService_ExecClient) *execResult {
	r := &execResult{}
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return r
		}
		if err != nil {
			r.err = err
			return r
		}
		if r.exit != nil {
			r.err = fmt.Errorf("message after the exit status: %v", m)
			return r
		}
		switch k := m.GetKind().(type) {
		case *apiv1.ExecResponse_Stdout:
			if len(k.Stdout) > execChunk {
				r.err = fmt.Errorf("stdout chunk of %d bytes", len(k.Stdout))
				return r
			}
			r.stdout.Write(k.Stdout)
			r.chunks++
		case *apiv1.ExecResponse_Stderr:
			r.stderr.Write(k.Stderr)
		case *apiv1.ExecResponse_Exit:
			r.exit = k.Exit
		}
	}
}

func startMsg(id string, argv ...string) *apiv1.ExecRequest {
	return &apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Start{Start: &apiv1.ExecStart{SandboxId: id, Argv: argv}}}
}

func stdinMsg(b []byte) *apiv1.ExecRequest {
	return &apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Stdin{Stdin: b}}
}

var closeStdinMsg = &apiv1.ExecRequest{Kind: &apiv1.ExecRequest_CloseStdin{CloseStdin: true}}

func TestExec(t *testing.T) {
	fake := newFake()
	cl := startSandboxServer(t, fake)
	ctx := testContext(t)
	if _, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "box"}}); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 10_000) // 160 kB: several chunks

	for _, tc := range []struct {
		name   string
		send   []*apiv1.ExecRequest
		close  bool // CloseSend after the messages
		stdout string
		stderr string
		exit   int32
		code   codes.Code
	}{
		{name: "round trip", send: []*apiv1.ExecRequest{startMsg("box", "cat"), stdinMsg([]byte("hello ")), stdinMsg([]byte("world")), closeStdinMsg},
			stdout: "hello world", stderr: "done\n", exit: 3},
		{name: "half-close ends stdin", send: []*apiv1.ExecRequest{startMsg("box", "cat"), stdinMsg([]byte("x"))}, close: true,
			stdout: "x", stderr: "done\n", exit: 3},
		{name: "large output", send: []*apiv1.ExecRequest{startMsg("box", "cat"), stdinMsg(big), closeStdinMsg},
			stdout: string(big), stderr: "done\n", exit: 3},
		{name: "stdin never read", send: []*apiv1.ExecRequest{startMsg("box", "noread"), stdinMsg(big), stdinMsg(big)}},
		{name: "stdin after close dropped", send: []*apiv1.ExecRequest{startMsg("box", "cat"), closeStdinMsg, stdinMsg([]byte("late"))},
			close: true, stderr: "done\n", exit: 3},
		{name: "no messages", close: true, code: codes.InvalidArgument},
		{name: "stdin first", send: []*apiv1.ExecRequest{stdinMsg([]byte("x"))}, code: codes.InvalidArgument},
		{name: "empty argv", send: []*apiv1.ExecRequest{startMsg("box")}, code: codes.InvalidArgument},
		{name: "empty program", send: []*apiv1.ExecRequest{startMsg("box", "", "x")}, code: codes.InvalidArgument},
		{name: "bad sandbox ID", send: []*apiv1.ExecRequest{startMsg("", "cat")}, code: codes.InvalidArgument},
		{name: "unknown sandbox", send: []*apiv1.ExecRequest{startMsg("nope", "cat")}, code: codes.NotFound},
		{name: "second start", send: []*apiv1.ExecRequest{startMsg("box", "sleep"), startMsg("box", "cat")}, code: codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := cl.Exec(ctx)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan *execResult)
			go func() { done <- recvExec(st) }()
			for _, m := range tc.send {
				if err := st.Send(m); err != nil && !errors.Is(err, io.EOF) {
					t.Fatalf("send: %v", err)
				}
			}
			if tc.close {
				st.CloseSend()
			}
			r := <-done
			if got := status.Code(r.err); got != tc.code {
				t.Fatalf("code %v (%v), want %v", got, r.err, tc.code)
			}
			if tc.code != codes.OK {
				return
			}
			if r.stdout.String() != tc.stdout || r.stderr.String() != tc.stderr {
				t.Errorf("stdout %.40q (%d bytes), stderr %q; want %.40q, %q", r.stdout.String(), r.stdout.Len(), r.stderr.String(), tc.stdout, tc.stderr)
			}
			if r.exit == nil || r.exit.GetCode() != tc.exit {
				t.Errorf("exit %v, want code %d", r.exit, tc.exit)
			}
			if len(tc.stdout) > execChunk && r.chunks < 2 {
				t.Errorf("%d bytes came in %d message", len(tc.stdout), r.chunks)
			}
		})
	}
	for len(fake.execCtx) > 0 {
		<-fake.execCtx
	}

	t.Run("cancel kills the process", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		st, err := cl.Exec(cctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(startMsg("box", "sleep")); err != nil {
			t.Fatal(err)
		}
		var execCtx context.Context
		select {
		case execCtx = <-fake.execCtx:
		case <-ctx.Done():
			t.Fatal("the exec did not start")
		}
		cancel()
		select {
		case <-execCtx.Done():
		case <-ctx.Done():
			t.Fatal("the process's context outlived the call")
		}
	})
}

func TestWatchEvents(t *testing.T) {
	fake := newFake()
	cl := startSandboxServer(t, fake)
	ctx := testContext(t)
	for _, id := range []string{"b", "a"} {
		if _, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: id}}); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := cl.WatchEvents(wctx, &apiv1.WatchEventsRequest{IncludeCurrent: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Header(); err != nil { // subscribed
		t.Fatal(err)
	}
	b, _ := fake.Get("b")
	disk := sandbox.Disk{ID: "d1", Path: "/dev/vdc"}
	fake.publish(sandbox.Event{Time: time.Now(), Type: sandbox.EventDiskAttached, Sandbox: b, Disk: &disk})
	fake.publish(sandbox.Event{Time: time.Now(), Type: sandbox.EventDeleted, Sandbox: b})

	var got []string
	for range 4 {
		e, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		s := e.GetType().String() + " " + e.GetSandbox().GetSpec().GetId()
		if d := e.GetDisk(); d != nil {
			s += " " + d.GetId() + "=" + d.GetPath()
		}
		if e.GetTime() == nil {
			s += " (no time)"
		}
		got = append(got, s)
	}
	want := "STATE a, STATE b, DISK_ATTACHED b d1=/dev/vdc, DELETED b"
	if strings.Join(got, ", ") != want {
		t.Errorf("events %q, want %q", strings.Join(got, ", "), want)
	}

	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for fake.watchers() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the watch outlived its client")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A watch the service cuts off ends with Aborted.
	st, err = cl.WatchEvents(ctx, &apiv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Header(); err != nil {
		t.Fatal(err)
	}
	fake.cutOff()
	if _, err := st.Recv(); status.Code(err) != codes.Aborted {
		t.Errorf("cut-off watch: %v, want Aborted", err)
	}
}

func TestSandboxToProto(t *testing.T) {
	now := time.Now().UTC()
	sb := sandbox.Sandbox{
		Spec: sandbox.Spec{ID: "x", VCPUs: 2, MemoryMiB: 256, NetNS: "/n",
			Disks: []sandbox.Disk{{ID: "a", Path: "/dev/a", ReadOnly: true}, {ID: "b", RBD: &sandbox.RBDImage{Pool: "p", Image: "i"}}}},
		State: sandbox.StateFailed, Reason: "boom", PID: 7, Accel: "kvm", Addresses: []string{"10.0.0.2/24"},
		WorkDir: "/w", CreatedAt: now, ReadyAt: now.Add(time.Second),
	}
	sb.Disks = sb.Spec.Disks
	p := SandboxToProto(sb)
	if p.GetState() != apiv1.Sandbox_FAILED || p.GetReason() != "boom" || p.GetPid() != 7 || p.GetAccel() != "kvm" ||
		p.GetWorkDir() != "/w" || !p.GetCreatedAt().AsTime().Equal(now) || !p.GetReadyAt().AsTime().Equal(now.Add(time.Second)) ||
		len(p.GetDisks()) != 2 || !p.GetDisks()[0].GetReadOnly() {
		t.Errorf("SandboxToProto: %v", p)
	}
	if back, err := SpecFromProto(p.GetSpec()); err != nil || !back.Equal(sb.Spec) {
		t.Errorf("spec round trip: %+v, %v", back, err)
	}
	for st := range sandboxStateToProto {
		if SandboxToProto(sandbox.Sandbox{State: st}).GetState() == apiv1.Sandbox_STATE_UNSPECIFIED {
			t.Errorf("state %s has no proto value", st)
		}
	}
	for et := range eventTypeToProto {
		if EventToProto(sandbox.Event{Type: et}).GetType() == apiv1.SandboxEvent_TYPE_UNSPECIFIED {
			t.Errorf("event type %s has no proto value", et)
		}
	}
}

// A sandbox spec from the control plane either validates, and then
// survives a round trip through the API unchanged, or is refused as an
// invalid argument.
func FuzzSandboxSpec(f *testing.F) {
	f.Add("pod-1", uint32(0), uint32(0), "/run/netns/x", "", "/dev/sdb", "", "", true)
	f.Add("x", uint32(64), uint32(65536), "", "data", "", "rbd", "img", false)
	f.Add("..", uint32(1), uint32(1), "x", "D", "a", "p/", "i@s", false)
	f.Fuzz(func(t *testing.T, id string, vcpus, mem uint32, netns, diskID, path, pool, image string, ro bool) {
		d := &apiv1.Disk{Id: diskID, ReadOnly: ro}
		if path != "" {
			d.Source = &apiv1.Disk_Path{Path: path}
		} else {
			d.Source = &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: pool, Image: image}}
		}
		p := &apiv1.SandboxSpec{Id: id, Vcpus: vcpus, MemoryMib: mem, Netns: netns, Disks: []*apiv1.Disk{d}}
		spec, err := SpecFromProto(p)
		if err != nil {
			t.Fatal(err)
		}
		spec = spec.WithDefaults()
		if err := spec.Validate(); err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		b, err := proto.Marshal(SpecToProto(spec))
		if err != nil {
			t.Fatal(err)
		}
		var again apiv1.SandboxSpec
		if err := proto.Unmarshal(b, &again); err != nil {
			t.Fatal(err)
		}
		if back, err := SpecFromProto(&again); err != nil || !back.Equal(spec) || back.Validate() != nil {
			t.Fatalf("round trip changed %+v into %+v", spec, back)
		}
	})
}
