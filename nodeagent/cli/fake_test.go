package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// fakeAgent serves the agent's API on a unix socket for the CLI: the ENI
// service has one ENI, 02:00:00:00:00:05 in vpc-a, assigned to web/frontend;
// the sandbox service has one Ready sandbox "box" with one disk, and its
// Exec runs "cat", which copies stdin to stdout, says "bye" on stderr and
// exits 3. It records the last request of each call. With refuse set,
// every call is refused with InvalidArgument, as the agent refuses what
// its validation rejects.
type fakeAgent struct {
	apiv1.UnimplementedENIServiceServer
	apiv1.UnimplementedSandboxServiceServer
	apiv1.UnimplementedGroupServiceServer
	refuse bool

	mu       sync.Mutex
	attached []*apiv1.Disk
	requests map[string]proto.Message // by method name
}

// serveFake serves f on a socket in a temporary directory and points
// $NODEAGENT_SOCKET at it.
func serveFake(t *testing.T, f *fakeAgent) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cli") // t.TempDir() may be too long for a socket path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	apiv1.RegisterENIServiceServer(g, f)
	apiv1.RegisterSandboxServiceServer(g, f)
	apiv1.RegisterGroupServiceServer(g, f)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	t.Setenv("NODEAGENT_SOCKET", sock)
	return sock
}

// got records req as the last request of method, and refuses it if f
// refuses everything.
func (f *fakeAgent) got(method string, req proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.requests == nil {
		f.requests = map[string]proto.Message{}
	}
	f.requests[method] = proto.Clone(req)
	if f.refuse {
		return status.Errorf(codes.InvalidArgument, "%s: refused by the fake agent", method)
	}
	return nil
}

// request returns the last request of method, or nil.
func (f *fakeAgent) request(method string) proto.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[method]
}

func (f *fakeAgent) eni() *apiv1.ENI {
	return &apiv1.ENI{
		Config: &apiv1.ENIConfig{Mac: "02:00:00:00:00:05", Vpc: "vpc-a", HostName: "eth1",
			Addresses: []string{"10.10.0.5/24"}, Gateways: []string{"10.10.0.1"}, Mtu: 1400},
		State: apiv1.ENIState_ENI_STATE_FREE, AssignedPod: "web/frontend",
	}
}

func (f *fakeAgent) RegisterENI(_ context.Context, req *apiv1.RegisterENIRequest) (*apiv1.ENI, error) {
	if err := f.got("RegisterENI", req); err != nil {
		return nil, err
	}
	return &apiv1.ENI{Config: req.GetConfig(), State: apiv1.ENIState_ENI_STATE_FREE}, nil
}

func (f *fakeAgent) RemoveENI(_ context.Context, req *apiv1.RemoveENIRequest) (*apiv1.RemoveENIResponse, error) {
	return &apiv1.RemoveENIResponse{}, f.got("RemoveENI", req)
}

func (f *fakeAgent) ListENIs(_ context.Context, req *apiv1.ListENIsRequest) (*apiv1.ListENIsResponse, error) {
	if err := f.got("ListENIs", req); err != nil {
		return nil, err
	}
	return &apiv1.ListENIsResponse{Enis: []*apiv1.ENI{f.eni()}}, nil
}

func (f *fakeAgent) AssignPod(_ context.Context, req *apiv1.AssignPodRequest) (*apiv1.Assignment, error) {
	if err := f.got("AssignPod", req); err != nil {
		return nil, err
	}
	return req.GetAssignment(), nil
}

func (f *fakeAgent) UnassignPod(_ context.Context, req *apiv1.UnassignPodRequest) (*apiv1.UnassignPodResponse, error) {
	return &apiv1.UnassignPodResponse{}, f.got("UnassignPod", req)
}

func (f *fakeAgent) Status(_ context.Context, req *apiv1.StatusRequest) (*apiv1.StatusResponse, error) {
	if err := f.got("Status", req); err != nil {
		return nil, err
	}
	return &apiv1.StatusResponse{Version: "v1.2.3", Pools: []*apiv1.VPCPool{{Vpc: "vpc-a", Free: 1}}}, nil
}

func (f *fakeAgent) Probe(_ context.Context, req *apiv1.ProbeRequest) (*apiv1.ProbeResponse, error) {
	if err := f.got("Probe", req); err != nil {
		return nil, err
	}
	if req.GetPort() != 8080 {
		return &apiv1.ProbeResponse{Message: "connection refused"}, nil
	}
	return &apiv1.ProbeResponse{Success: true, HttpStatus: 200, Message: "HTTP 200"}, nil
}

func (f *fakeAgent) box() *apiv1.Sandbox {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &apiv1.Sandbox{Spec: &apiv1.SandboxSpec{Id: "box", Vcpus: 1, MemoryMib: 128}, State: apiv1.Sandbox_READY,
		Pid: 7, CreatedAt: timestamppb.Now(),
		Disks: append([]*apiv1.Disk{{Id: "disk0", Source: &apiv1.Disk_Path{Path: "/dev/a"}}}, f.attached...)}
}

func (f *fakeAgent) CreateSandbox(_ context.Context, req *apiv1.CreateSandboxRequest) (*apiv1.Sandbox, error) {
	if err := f.got("CreateSandbox", req); err != nil {
		return nil, err
	}
	return &apiv1.Sandbox{Spec: req.GetSpec(), State: apiv1.Sandbox_CREATING}, nil
}

func (f *fakeAgent) StopSandbox(_ context.Context, req *apiv1.StopSandboxRequest) (*apiv1.Sandbox, error) {
	if err := f.got("StopSandbox", req); err != nil {
		return nil, err
	}
	return f.box(), nil
}

func (f *fakeAgent) GetSandbox(_ context.Context, req *apiv1.GetSandboxRequest) (*apiv1.Sandbox, error) {
	if err := f.got("GetSandbox", req); err != nil {
		return nil, err
	}
	if req.GetId() != "box" {
		return nil, status.Errorf(codes.NotFound, "sandbox %q: not found", req.GetId())
	}
	return f.box(), nil
}

func (f *fakeAgent) ListSandboxes(_ context.Context, req *apiv1.ListSandboxesRequest) (*apiv1.ListSandboxesResponse, error) {
	if err := f.got("ListSandboxes", req); err != nil {
		return nil, err
	}
	return &apiv1.ListSandboxesResponse{Sandboxes: []*apiv1.Sandbox{f.box()}}, nil
}

func (f *fakeAgent) AttachDisk(_ context.Context, req *apiv1.AttachDiskRequest) (*apiv1.Sandbox, error) {
	if err := f.got("AttachDisk", req); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.attached = append(f.attached, req.GetDisk())
	f.mu.Unlock()
	return f.box(), nil
}

func (f *fakeAgent) DetachDisk(_ context.Context, req *apiv1.DetachDiskRequest) (*apiv1.Sandbox, error) {
	if err := f.got("DetachDisk", req); err != nil {
		return nil, err
	}
	return f.box(), nil
}

func (f *fakeAgent) Exec(stream apiv1.SandboxService_ExecServer) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := f.got("Exec", m.GetStart()); err != nil {
		return err
	}
	if argv := m.GetStart().GetArgv(); len(argv) != 1 || argv[0] != "cat" {
		return status.Errorf(codes.InvalidArgument, "want cat, got %q", argv)
	}
	for {
		m, err := stream.Recv()
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if err != nil || m.GetCloseStdin() {
			break
		}
		if err := stream.Send(&apiv1.ExecResponse{Kind: &apiv1.ExecResponse_Stdout{Stdout: m.GetStdin()}}); err != nil {
			return err
		}
	}
	if err := stream.Send(&apiv1.ExecResponse{Kind: &apiv1.ExecResponse_Stderr{Stderr: []byte("bye\n")}}); err != nil {
		return err
	}
	return stream.Send(&apiv1.ExecResponse{Kind: &apiv1.ExecResponse_Exit{Exit: &apiv1.ExitStatus{Code: 3}}})
}

// fakeConsole is the console log of the fake's sandbox "box"; QEMU's log
// is "qemu: ok\n". With follow, "followed\n" comes after the log.
const fakeConsole = "[    0.000000] Linux version 6.1\nnodeinfra-agent: ready\n"

func (f *fakeAgent) SandboxLogs(req *apiv1.SandboxLogsRequest, stream apiv1.SandboxService_SandboxLogsServer) error {
	if err := f.got("SandboxLogs", req); err != nil {
		return err
	}
	if req.GetId() != "box" {
		return status.Errorf(codes.NotFound, "sandbox %q: not found", req.GetId())
	}
	data := fakeConsole
	if req.GetSource() == apiv1.SandboxLogsRequest_QEMU {
		data = "qemu: ok\n"
	}
	if n := req.GetTailBytes(); n > 0 && n < uint64(len(data)) {
		data = data[uint64(len(data))-n:]
	}
	// In two chunks, as a log larger than one comes.
	for _, chunk := range []string{data[:len(data)/2], data[len(data)/2:]} {
		if err := stream.Send(&apiv1.SandboxLogChunk{Data: []byte(chunk)}); err != nil {
			return err
		}
	}
	if req.GetFollow() {
		return stream.Send(&apiv1.SandboxLogChunk{Data: []byte("followed\n")})
	}
	return nil
}

// runCaptured runs the CLI in-process with stdin and returns its exit
// status, stdout and stderr.
func runCaptured(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}
