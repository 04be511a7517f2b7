package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestParseDisk(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want sandbox.Disk
		ok   bool
	}{
		{"/dev/sdb", sandbox.Disk{Path: "/dev/sdb"}, true},
		{"/var/lib/images/a.raw", sandbox.Disk{Path: "/var/lib/images/a.raw"}, true},
		{"rbd:rbd/csi-vol-1", sandbox.Disk{RBD: &sandbox.RBDImage{Pool: "rbd", Image: "csi-vol-1"}}, true},
		{"rbd:my.pool/img_2", sandbox.Disk{RBD: &sandbox.RBDImage{Pool: "my.pool", Image: "img_2"}}, true},
		{"", sandbox.Disk{}, false},
		{"disk.img", sandbox.Disk{}, false},
		{"./disk.img", sandbox.Disk{}, false},
		{"/a/../b", sandbox.Disk{}, false},
		{"rbd:", sandbox.Disk{}, false},
		{"rbd:pool", sandbox.Disk{}, false},
		{"rbd:/image", sandbox.Disk{}, false},
		{"rbd:pool/", sandbox.Disk{}, false},
		{"rbd:pool/a/b", sandbox.Disk{}, false},
		{"rbd:pool/image@snap", sandbox.Disk{}, false},
		{"rbd:pool/my image", sandbox.Disk{}, false},
		{"RBD:pool/image", sandbox.Disk{}, false},
	} {
		d, err := parseDisk(tc.in)
		if tc.ok != (err == nil) {
			t.Errorf("parseDisk(%q): %v", tc.in, err)
			continue
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("parseDisk(%q): error %v is not InvalidArgument", tc.in, err)
		}
		if tc.ok && !d.Equal(tc.want) {
			t.Errorf("parseDisk(%q) = %+v, want %+v", tc.in, d, tc.want)
		}
	}
}

// A --disk value either parses into a disk whose source is valid and that
// renders back to the same text, or is refused: never a panic.
func FuzzParseDisk(f *testing.F) {
	for _, s := range []string{"/dev/sdb", "rbd:rbd/img", "rbd:p/i@s", "rbd:", "x", "/a//b", "rbd:p/ i"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDisk(s)
		if err != nil {
			return
		}
		if err := d.ValidateSource(); err != nil {
			t.Fatalf("parseDisk(%q) gave an invalid disk: %v", s, err)
		}
		if d.String() != s {
			t.Fatalf("parseDisk(%q) renders as %q", s, d.String())
		}
		if again, err := parseDisk(d.String()); err != nil || !again.Equal(d) {
			t.Fatalf("reparse of %q: %+v, %v", s, again, err)
		}
	})
}

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		pos     string
		vcpus   uint
		verbose bool
	}{
		{args: []string{"a"}, pos: "a"},
		{args: []string{"a", "--vcpus", "2"}, pos: "a", vcpus: 2},
		{args: []string{"--vcpus=2", "a", "-v"}, pos: "a", vcpus: 2, verbose: true},
		{args: []string{"a", "-v", "b"}, pos: "a b", verbose: true},
		{args: []string{"a", "--", "-v", "b"}, pos: "a -v b"},
		{args: []string{"--", "--vcpus"}, pos: "--vcpus"},
		{args: nil, pos: ""},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		vcpus := fs.Uint("vcpus", 0, "")
		verbose := fs.Bool("v", false, "")
		pos, err := parseArgs(fs, tc.args)
		if err != nil || strings.Join(pos, " ") != tc.pos || *vcpus != tc.vcpus || *verbose != tc.verbose {
			t.Errorf("parseArgs(%q) = %q vcpus=%d v=%v, %v; want %q vcpus=%d v=%v", tc.args, pos, *vcpus, *verbose, err,
				tc.pos, tc.vcpus, tc.verbose)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if _, err := parseArgs(fs, []string{"a", "--nope"}); err == nil {
		t.Error("unknown flag after a positional accepted")
	}
}

func TestExecArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		id   string
		argv string
		dir  string
		ok   bool
	}{
		{args: []string{"box", "--", "sh", "-c", "exit 3"}, id: "box", argv: "sh -c exit 3", ok: true},
		{args: []string{"box", "--socket", "/s", "--", "cat"}, id: "box", argv: "cat", ok: true},
		{args: []string{"--dir", "/tmp", "box", "ls", "-l", "--dir", "x"}, id: "box", argv: "ls -l --dir x", dir: "/tmp", ok: true},
		{args: []string{"box", "--dir", "/w", "--", "--weird"}, id: "box", argv: "--weird", dir: "/w", ok: true},
		{args: []string{"box"}},
		{args: []string{"box", "--"}},
		{args: []string{"--", "box"}},
		{args: nil},
	} {
		c := newSandboxCLI("exec", false)
		c.fs.SetOutput(io.Discard)
		dir := c.fs.String("dir", "", "")
		id, argv, ok := c.execArgs(tc.args)
		if ok != tc.ok || id != tc.id || strings.Join(argv, " ") != tc.argv || *dir != tc.dir {
			t.Errorf("execArgs(%q) = %q %q dir=%q %v", tc.args, id, argv, *dir, ok)
		}
	}
}

func TestSandboxUsageErrors(t *testing.T) {
	sock := []string{"--socket", "/nonexistent/nodeagent.sock"}
	for _, args := range [][]string{
		{"sandbox"},
		{"sandbox", "frobnicate"},
		{"sandbox", "create"},
		{"sandbox", "create", "a", "b"},
		{"sandbox", "create", "Bad_ID"},
		{"sandbox", "create", "a", "--vcpus", "65"},
		{"sandbox", "create", "a", "--vcpus", "4294967297"},
		{"sandbox", "create", "a", "--memory", "32"},
		{"sandbox", "create", "a", "--netns", "netns"},
		{"sandbox", "create", "a", "--disk", "disk.img"},
		{"sandbox", "create", "a", "--disk", "rbd:pool"},
		{"sandbox", "create", "a", "--nope"},
		{"sandbox", "list", "extra"},
		{"sandbox", "list", "-o", "yaml"},
		{"sandbox", "get"},
		{"sandbox", "get", "a", "-o", "yaml"},
		{"sandbox", "stop"},
		{"sandbox", "stop", "a", "--timeout", "-1s"},
		{"sandbox", "stop", "a", "--timeout", "soon"},
		{"sandbox", "delete"},
		{"sandbox", "delete", "a", "b"},
		{"sandbox", "exec"},
		{"sandbox", "exec", "a"},
		{"sandbox", "exec", "a", "--"},
		{"sandbox", "exec", "a", "--env", "NOEQUALS", "--", "true"},
		{"sandbox", "attach", "a"},
		{"sandbox", "attach", "a", "--disk", "rel/path"},
		{"sandbox", "attach", "a", "--disk", "/dev/sdb", "--id", "Disk 1"},
		{"sandbox", "detach", "a"},
		{"sandbox", "detach", "a", "d", "e"},
		{"sandbox", "events", "a"},
		{"sandbox", "events", "-o", "yaml"},
	} {
		// --socket goes before the verb's own arguments: after "--" it
		// would be part of exec's command.
		full := append(append(append([]string(nil), args[:min(2, len(args))]...), sock...), args[min(2, len(args)):]...)
		if code := run(full); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
}

func TestUsageListsSandboxVerbs(t *testing.T) {
	for verb, synopsis := range sandboxSynopsis {
		if !strings.Contains(usage, "  "+synopsis+"\n") {
			t.Errorf("usage lacks %s: %q", verb, synopsis)
		}
	}
}

func TestPrintSandboxes(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	sbs := []*apiv1.Sandbox{
		{Spec: &apiv1.SandboxSpec{Id: "web-1", Vcpus: 2, MemoryMib: 512}, State: apiv1.Sandbox_READY, Pid: 4242,
			Addresses: []string{"10.1.0.11/24", "fd00::11/64"}, CreatedAt: timestamppb.New(now.Add(-90 * time.Minute))},
		{Spec: &apiv1.SandboxSpec{Id: "db", Vcpus: 1, MemoryMib: 128}, State: apiv1.Sandbox_FAILED, Reason: "qemu exited: status 1",
			CreatedAt: timestamppb.New(now.Add(-72 * time.Hour))},
	}
	var b bytes.Buffer
	if err := printSandboxes(&b, sbs, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := [][]string{
		{"ID", "STATE", "VCPUS", "MEM", "PID", "ADDRESSES", "AGE", "REASON"},
		{"web-1", "Ready", "2", "512MiB", "4242", "10.1.0.11/24,fd00::11/64", "1h", "-"},
		{"db", "Failed", "1", "128MiB", "-", "-", "3d", "qemu", "exited:", "status", "1"},
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", b.String())
	}
	for i, l := range lines {
		if got := strings.Fields(l); strings.Join(got, " ") != strings.Join(want[i], " ") {
			t.Errorf("row %d: %q, want %q", i, got, want[i])
		}
	}
}

func TestDiskIDFor(t *testing.T) {
	attached := []*apiv1.Disk{
		{Id: "disk0", Source: &apiv1.Disk_Path{Path: "/dev/a"}},
		{Id: "data", Source: &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: "p", Image: "i"}}},
		{Id: "disk2", Source: &apiv1.Disk_Path{Path: "/dev/c"}, ReadOnly: true},
	}
	for _, tc := range []struct {
		disk sandbox.Disk
		want string
	}{
		{sandbox.Disk{RBD: &sandbox.RBDImage{Pool: "p", Image: "i"}}, "data"},
		{sandbox.Disk{Path: "/dev/c", ReadOnly: true}, "disk2"},
		{sandbox.Disk{Path: "/dev/c"}, "disk1"},
		{sandbox.Disk{Path: "/dev/new"}, "disk1"},
	} {
		if got := diskIDFor(attached, tc.disk); got != tc.want {
			t.Errorf("diskIDFor(%v) = %q, want %q", tc.disk, got, tc.want)
		}
	}
	if got := diskIDFor(nil, sandbox.Disk{Path: "/x"}); got != "disk0" {
		t.Errorf("first disk: %q", got)
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 45 * time.Second: "45s", 12 * time.Minute: "12m", 5 * time.Hour: "5h",
		47 * time.Hour: "47h", 72 * time.Hour: "3d",
	} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// fakeSandboxAPI serves a few SandboxService calls for the CLI: one Ready
// sandbox "box" with one disk; Exec runs "cat", which copies stdin to
// stdout, says "bye" on stderr and exits 3.
type fakeSandboxAPI struct {
	apiv1.UnimplementedSandboxServiceServer
	mu       sync.Mutex
	attached []*apiv1.Disk
}

func (f *fakeSandboxAPI) box() *apiv1.Sandbox {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &apiv1.Sandbox{Spec: &apiv1.SandboxSpec{Id: "box", Vcpus: 1, MemoryMib: 128}, State: apiv1.Sandbox_READY,
		Pid: 7, CreatedAt: timestamppb.Now(),
		Disks: append([]*apiv1.Disk{{Id: "disk0", Source: &apiv1.Disk_Path{Path: "/dev/a"}}}, f.attached...)}
}

func (f *fakeSandboxAPI) GetSandbox(_ context.Context, req *apiv1.GetSandboxRequest) (*apiv1.Sandbox, error) {
	if req.GetId() != "box" {
		return nil, status.Errorf(codes.NotFound, "sandbox %q: not found", req.GetId())
	}
	return f.box(), nil
}

func (f *fakeSandboxAPI) ListSandboxes(context.Context, *apiv1.ListSandboxesRequest) (*apiv1.ListSandboxesResponse, error) {
	return &apiv1.ListSandboxesResponse{Sandboxes: []*apiv1.Sandbox{f.box()}}, nil
}

func (f *fakeSandboxAPI) AttachDisk(_ context.Context, req *apiv1.AttachDiskRequest) (*apiv1.Sandbox, error) {
	f.mu.Lock()
	f.attached = append(f.attached, req.GetDisk())
	f.mu.Unlock()
	return f.box(), nil
}

func (f *fakeSandboxAPI) Exec(stream apiv1.SandboxService_ExecServer) error {
	m, err := stream.Recv()
	if err != nil {
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

// runCaptured runs the CLI with stdin and returns its exit code and
// stdout.
func runCaptured(t *testing.T, stdin string, args ...string) (int, string) {
	t.Helper()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	oldIn, oldOut := os.Stdin, os.Stdout
	os.Stdin, os.Stdout = inR, outW
	defer func() { os.Stdin, os.Stdout = oldIn, oldOut }()
	go func() {
		io.WriteString(inW, stdin)
		inW.Close()
	}()
	out := make(chan string)
	go func() {
		b, _ := io.ReadAll(outR)
		out <- string(b)
	}()
	code := run(args)
	outW.Close()
	inR.Close()
	return code, <-out
}

func TestSandboxCLI(t *testing.T) {
	dir, err := os.MkdirTemp("", "cli")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fake := &fakeSandboxAPI{}
	g := grpc.NewServer()
	apiv1.RegisterSandboxServiceServer(g, fake)
	go g.Serve(lis)
	defer g.Stop()
	t.Setenv("NODEAGENT_SOCKET", sock)

	code, out := runCaptured(t, "", "sandbox", "get", "box")
	if code != 0 || !strings.Contains(out, "box") || !strings.Contains(out, "Ready") || !strings.Contains(out, "/dev/a") {
		t.Errorf("get: exit %d:\n%s", code, out)
	}
	if code, _ := runCaptured(t, "", "sandbox", "get", "nope"); code != 1 {
		t.Errorf("get unknown: exit %d, want 1", code)
	}
	code, out = runCaptured(t, "", "sandbox", "list", "-o", "json")
	var list struct {
		Sandboxes []struct {
			Spec  struct{ ID string }
			State string
		}
	}
	if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil || len(list.Sandboxes) != 1 ||
		list.Sandboxes[0].Spec.ID != "box" || list.Sandboxes[0].State != "READY" {
		t.Errorf("list -o json: exit %d, %v:\n%s", code, err, out)
	}
	code, out = runCaptured(t, "piped input", "sandbox", "exec", "box", "--", "cat")
	if code != 3 || out != "piped input" {
		t.Errorf("exec: exit %d, stdout %q; want 3, %q", code, out, "piped input")
	}
	for range 2 { // the second attach finds the disk attached and reuses its ID
		if code, _ := runCaptured(t, "", "sandbox", "attach", "box", "--disk", "rbd:rbd/vol"); code != 0 {
			t.Errorf("attach: exit %d", code)
		}
	}
	if len(fake.attached) != 2 || fake.attached[0].GetId() != "disk1" || fake.attached[1].GetId() != "disk1" ||
		fake.attached[0].GetRbd().GetImage() != "vol" {
		t.Errorf("attached %v, want rbd/vol as disk1 twice", fake.attached)
	}
}
