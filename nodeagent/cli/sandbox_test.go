package cli

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

func pathDisk(p string) *apiv1.Disk { return &apiv1.Disk{Source: &apiv1.Disk_Path{Path: p}} }

func rbdDisk(pool, image string) *apiv1.Disk {
	return &apiv1.Disk{Source: &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: pool, Image: image}}}
}

// parseDisk tells a path from rbd:POOL/IMAGE; whether the path is
// absolute and clean and the names are valid is the agent's to say.
func TestParseDisk(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want *apiv1.Disk // nil: refused
	}{
		{"/dev/sdb", pathDisk("/dev/sdb")},
		{"/var/lib/images/a.raw", pathDisk("/var/lib/images/a.raw")},
		{"rbd:rbd/csi-vol-1", rbdDisk("rbd", "csi-vol-1")},
		{"rbd:my.pool/img_2", rbdDisk("my.pool", "img_2")},
		{"", nil},
		{"rbd:", nil},
		{"rbd:pool", nil},
		{"rbd:/image", nil},
		{"rbd:pool/", nil},
		// Refused by the agent (InvalidArgument), not here:
		{"disk.img", pathDisk("disk.img")},
		{"./disk.img", pathDisk("./disk.img")},
		{"/a/../b", pathDisk("/a/../b")},
		{"rbd:pool/a/b", rbdDisk("pool", "a/b")},
		{"rbd:pool/image@snap", rbdDisk("pool", "image@snap")},
		{"rbd:pool/my image", rbdDisk("pool", "my image")},
		{"RBD:pool/image", pathDisk("RBD:pool/image")},
	} {
		d, err := parseDisk(tc.in)
		if (tc.want != nil) != (err == nil) {
			t.Errorf("parseDisk(%q): %v", tc.in, err)
			continue
		}
		if tc.want != nil && !proto.Equal(d, tc.want) {
			t.Errorf("parseDisk(%q) = %v, want %v", tc.in, d, tc.want)
		}
	}
}

// A --disk value either parses into a disk that renders back to the same
// text, or is refused: never a panic.
func FuzzParseDisk(f *testing.F) {
	for _, s := range []string{"/dev/sdb", "rbd:rbd/img", "rbd:p/i@s", "rbd:", "x", "/a//b", "rbd:p/ i"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDisk(s)
		if err != nil {
			return
		}
		if d.GetSource() == nil {
			t.Fatalf("parseDisk(%q) gave a disk without a source", s)
		}
		if diskSource(d) != s {
			t.Fatalf("parseDisk(%q) renders as %q", s, diskSource(d))
		}
		if again, err := parseDisk(diskSource(d)); err != nil || !proto.Equal(again, d) {
			t.Fatalf("reparse of %q: %v, %v", s, again, err)
		}
	})
}

// Flags may come before, between and after the positional arguments;
// "--" ends the flags.
func TestFlagsAroundArgs(t *testing.T) {
	f := &fakeAgent{}
	serveFake(t, f)
	for _, tc := range []struct {
		args  []string
		spec  *apiv1.SandboxSpec
		wait  bool
		usage bool
	}{
		{args: []string{"a"}, spec: &apiv1.SandboxSpec{Id: "a"}},
		{args: []string{"a", "--vcpus", "2"}, spec: &apiv1.SandboxSpec{Id: "a", Vcpus: 2}},
		{args: []string{"--vcpus=2", "a", "--wait"}, spec: &apiv1.SandboxSpec{Id: "a", Vcpus: 2}, wait: true},
		{args: []string{"a", "--wait", "b"}, usage: true},
		{args: []string{"a", "--", "--wait"}, usage: true},
		{args: []string{"--", "--vcpus"}, spec: &apiv1.SandboxSpec{Id: "--vcpus"}},
		{args: nil, usage: true},
		{args: []string{"a", "--nope"}, usage: true},
		{
			args: []string{"web-1", "--vcpus", "2", "--memory", "512", "--netns", "/var/run/netns/web-1",
				"--disk", "/dev/sdb", "--disk", "rbd:rbd/vol-1"},
			spec: &apiv1.SandboxSpec{Id: "web-1", Vcpus: 2, MemoryMib: 512, Netns: "/var/run/netns/web-1",
				Disks: []*apiv1.Disk{pathDisk("/dev/sdb"), rbdDisk("rbd", "vol-1")}},
		},
	} {
		code, _, errOut := runCaptured(t, "", append([]string{"sandbox", "create"}, tc.args...)...)
		if tc.usage {
			if code != 2 {
				t.Errorf("create %q: exit %d, want 2", tc.args, code)
			}
			continue
		}
		want := &apiv1.CreateSandboxRequest{Spec: tc.spec, Wait: tc.wait}
		if got := f.request("CreateSandbox"); code != 0 || !proto.Equal(got, want) {
			t.Errorf("create %q: exit %d (%s), sent %v, want %v", tc.args, code, errOut, got, want)
		}
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
		fs := pflag.NewFlagSet("exec", pflag.ContinueOnError)
		fs.SetInterspersed(false)
		fs.String("socket", "", "")
		dir := fs.String("dir", "", "")
		id, argv, err := execArgs(fs, tc.args)
		if (err == nil) != tc.ok || id != tc.id || strings.Join(argv, " ") != tc.argv || *dir != tc.dir {
			t.Errorf("execArgs(%q) = %q %q dir=%q %v", tc.args, id, argv, *dir, err)
		}
	}
}

// Misuses of the sandbox verbs exit 2 without asking the agent.
func TestSandboxUsageErrors(t *testing.T) {
	sock := []string{"--socket", filepath.Join(t.TempDir(), "none.sock")}
	for _, args := range [][]string{
		{"sandbox"},
		{"sandbox", "frobnicate"},
		{"sandbox", "create"},
		{"sandbox", "create", "a", "b"},
		{"sandbox", "create", "a", "--vcpus", "4294967297"},
		{"sandbox", "create", "a", "--memory", "-1"},
		{"sandbox", "create", "a", "--disk", "rbd:pool"},
		{"sandbox", "create", "a", "--disk", ""},
		{"sandbox", "create", "a", "--nope"},
		{"sandbox", "create", "a", "-o", "xml"},
		{"sandbox", "list", "extra"},
		{"sandbox", "list", "-o", "xml"},
		{"sandbox", "get"},
		{"sandbox", "get", "a", "-o", "xml"},
		{"sandbox", "stop"},
		{"sandbox", "stop", "a", "--timeout", "-1s"},
		{"sandbox", "stop", "a", "--timeout", "soon"},
		{"sandbox", "delete"},
		{"sandbox", "delete", "a", "b"},
		{"sandbox", "exec"},
		{"sandbox", "exec", "a"},
		{"sandbox", "exec", "a", "--"},
		{"sandbox", "exec", "a", "--env", "NOEQUALS", "--", "true"},
		{"sandbox", "exec", "a", "--env", "=v", "--", "true"},
		{"sandbox", "exec", "a", "--nope", "--", "true"},
		{"sandbox", "attach", "a"},
		{"sandbox", "attach", "a", "--disk", "rbd:pool/"},
		{"sandbox", "attach", "a", "b", "--disk", "/dev/sdb"},
		{"sandbox", "detach", "a"},
		{"sandbox", "detach", "a", "d", "e"},
		{"sandbox", "events", "a"},
		{"sandbox", "events", "-o", "xml"},
		{"sandbox", "logs"},
		{"sandbox", "logs", "a", "b"},
		{"sandbox", "logs", "a", "--source", "dmesg"},
		{"sandbox", "logs", "a", "--tail-bytes", "-1"},
		{"sandbox", "logs", "a", "--tail-bytes", "lots"},
	} {
		// --socket goes before the verb's own arguments: after "--" it
		// would be part of exec's command.
		full := append(append(append([]string(nil), args[:min(2, len(args))]...), sock...), args[min(2, len(args)):]...)
		if code, _, errOut := runCaptured(t, "", full...); code != 2 {
			t.Errorf("%q: exit %d, want 2; stderr:\n%s", args, code, errOut)
		}
	}
}

// What is well formed but invalid goes to the agent, whose refusal
// (InvalidArgument) is a failure: exit 1, with the agent's message and
// code.
func TestSandboxRefusedByAgent(t *testing.T) {
	serveFake(t, &fakeAgent{refuse: true})
	for _, args := range [][]string{
		{"sandbox", "create", "Bad_ID"},
		{"sandbox", "create", "a", "--vcpus", "65"},
		{"sandbox", "create", "a", "--memory", "32"},
		{"sandbox", "create", "a", "--netns", "netns"},
		{"sandbox", "create", "a", "--disk", "disk.img"},
		{"sandbox", "attach", "box", "--disk", "rel/path"},
		{"sandbox", "attach", "box", "--disk", "/dev/sdb", "--id", "Disk 1"},
		{"sandbox", "detach", "box", "Disk 1"},
		{"sandbox", "stop", "Bad_ID"},
	} {
		code, out, errOut := runCaptured(t, "", args...)
		if code != 1 || out != "" || !strings.HasPrefix(errOut, "nodeagent "+strings.Join(args[:2], " ")+": ") ||
			!strings.HasSuffix(errOut, "(InvalidArgument)\n") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 1 and the agent's InvalidArgument", args, code, out, errOut)
		}
	}
}

// The sandbox verbs' help is written once, in their commands: the group's
// help lists every verb.
func TestSandboxHelpListsVerbs(t *testing.T) {
	code, out, _ := runCaptured(t, "", "sandbox", "--help")
	if code != 0 {
		t.Fatalf("sandbox --help: exit %d", code)
	}
	for _, verb := range []string{"create", "list", "get", "stop", "delete", "exec", "attach", "detach", "events", "logs"} {
		if !strings.Contains(out, "\n  "+verb+" ") {
			t.Errorf("sandbox --help lacks %s:\n%s", verb, out)
		}
	}
}

func TestPrintSandboxes(t *testing.T) {
	now := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	sbs := []*apiv1.Sandbox{
		{Spec: &apiv1.SandboxSpec{Id: "web-1", Vcpus: 2, MemoryMib: 512}, State: apiv1.Sandbox_READY, Pid: 4242,
			Addresses: []string{"10.1.0.11/24", "fd00::11/64"}, CreatedAt: timestamppb.New(now.Add(-90 * time.Minute)), Start: "template"},
		{Spec: &apiv1.SandboxSpec{Id: "db", Vcpus: 1, MemoryMib: 128}, State: apiv1.Sandbox_FAILED, Reason: "qemu exited: status 1",
			CreatedAt: timestamppb.New(now.Add(-72 * time.Hour))},
	}
	var b bytes.Buffer
	if err := printSandboxes(&b, sbs, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := [][]string{
		{"ID", "STATE", "VCPUS", "MEM", "PID", "ADDRESSES", "START", "AGE", "REASON"},
		{"web-1", "Ready", "2", "512MiB", "4242", "10.1.0.11/24,fd00::11/64", "template", "1h", "-"},
		{"db", "Failed", "1", "128MiB", "-", "-", "-", "3d", "qemu", "exited:", "status", "1"},
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
	ro := func(d *apiv1.Disk) *apiv1.Disk { d.ReadOnly = true; return d }
	withID := func(id string, d *apiv1.Disk) *apiv1.Disk { d.Id = id; return d }
	attached := []*apiv1.Disk{
		withID("disk0", pathDisk("/dev/a")),
		withID("data", rbdDisk("p", "i")),
		withID("disk2", ro(pathDisk("/dev/c"))),
	}
	for _, tc := range []struct {
		disk *apiv1.Disk
		want string
	}{
		{rbdDisk("p", "i"), "data"},
		{ro(pathDisk("/dev/c")), "disk2"},
		{pathDisk("/dev/c"), "disk1"},
		{pathDisk("/dev/new"), "disk1"},
		{pathDisk("rbd:p/i"), "disk1"},
	} {
		if got := diskIDFor(attached, tc.disk); got != tc.want {
			t.Errorf("diskIDFor(%v) = %q, want %q", tc.disk, got, tc.want)
		}
	}
	if got := diskIDFor(nil, pathDisk("/x")); got != "disk0" {
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

func TestSandboxCLI(t *testing.T) {
	fake := &fakeAgent{}
	serveFake(t, fake)

	code, out, _ := runCaptured(t, "", "sandbox", "get", "box")
	if code != 0 || !strings.Contains(out, "box") || !strings.Contains(out, "Ready") || !strings.Contains(out, "/dev/a") {
		t.Errorf("get: exit %d:\n%s", code, out)
	}
	code, _, errOut := runCaptured(t, "", "sandbox", "get", "nope")
	if code != 1 || errOut != "nodeagent sandbox get: sandbox \"nope\": not found (NotFound)\n" {
		t.Errorf("get unknown: exit %d, stderr %q; want 1", code, errOut)
	}
	code, out, _ = runCaptured(t, "", "sandbox", "list", "-o", "json")
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
	code, out, errOut = runCaptured(t, "piped input", "sandbox", "exec", "box", "--env", "A=1", "--", "cat")
	if code != 3 || out != "piped input" || errOut != "bye\n" {
		t.Errorf("exec: exit %d, stdout %q, stderr %q; want 3, %q, %q", code, out, errOut, "piped input", "bye\n")
	}
	if got, want := fake.request("Exec"), (&apiv1.ExecStart{SandboxId: "box", Argv: []string{"cat"}, Env: []string{"A=1"}}); !proto.Equal(got, want) {
		t.Errorf("exec sent %v, want %v", got, want)
	}
	for range 2 { // the second attach finds the disk attached and reuses its ID
		if code, _, errOut := runCaptured(t, "", "sandbox", "attach", "box", "--disk", "rbd:rbd/vol"); code != 0 {
			t.Errorf("attach: exit %d: %s", code, errOut)
		}
	}
	if len(fake.attached) != 2 || fake.attached[0].GetId() != "disk1" || fake.attached[1].GetId() != "disk1" ||
		fake.attached[0].GetRbd().GetImage() != "vol" {
		t.Errorf("attached %v, want rbd/vol as disk1 twice", fake.attached)
	}
	code, _, _ = runCaptured(t, "", "sandbox", "attach", "box", "--disk", "/dev/b", "--id", "data", "--read-only")
	want := &apiv1.AttachDiskRequest{SandboxId: "box", Disk: &apiv1.Disk{Id: "data", ReadOnly: true, Source: &apiv1.Disk_Path{Path: "/dev/b"}}}
	if got := fake.request("AttachDisk"); code != 0 || !proto.Equal(got, want) {
		t.Errorf("attach --id: exit %d, sent %v, want %v", code, got, want)
	}
	code, _, _ = runCaptured(t, "", "sandbox", "stop", "box", "--timeout", "1500ms")
	if got := fake.request("StopSandbox"); code != 0 || !proto.Equal(got, &apiv1.StopSandboxRequest{Id: "box", TimeoutSeconds: 2}) {
		t.Errorf("stop: exit %d, sent %v", code, got)
	}
	code, _, _ = runCaptured(t, "", "sandbox", "detach", "box", "disk1", "-o", "json")
	if got := fake.request("DetachDisk"); code != 0 || !proto.Equal(got, &apiv1.DetachDiskRequest{SandboxId: "box", DiskId: "disk1"}) {
		t.Errorf("detach: exit %d, sent %v", code, got)
	}
}

// logs prints the log as it comes, asks for what its flags say, and fails
// like any verb for an unknown sandbox.
func TestSandboxLogsCLI(t *testing.T) {
	fake := &fakeAgent{}
	serveFake(t, fake)
	for _, tc := range []struct {
		args []string
		req  *apiv1.SandboxLogsRequest
		out  string
	}{
		{[]string{"box"}, &apiv1.SandboxLogsRequest{Id: "box", Source: apiv1.SandboxLogsRequest_CONSOLE}, fakeConsole},
		{[]string{"box", "--tail-bytes", "23"}, &apiv1.SandboxLogsRequest{Id: "box", Source: apiv1.SandboxLogsRequest_CONSOLE, TailBytes: 23},
			"nodeinfra-agent: ready\n"},
		{[]string{"--source", "qemu", "box", "-f"}, &apiv1.SandboxLogsRequest{Id: "box", Source: apiv1.SandboxLogsRequest_QEMU, Follow: true},
			"qemu: ok\nfollowed\n"},
		{[]string{"box", "--follow", "--source=console"}, &apiv1.SandboxLogsRequest{Id: "box", Source: apiv1.SandboxLogsRequest_CONSOLE, Follow: true},
			fakeConsole + "followed\n"},
	} {
		code, out, errOut := runCaptured(t, "", append([]string{"sandbox", "logs"}, tc.args...)...)
		if code != 0 || out != tc.out {
			t.Errorf("logs %q: exit %d, stdout %q, stderr %q; want %q", tc.args, code, out, errOut, tc.out)
		}
		if got := fake.request("SandboxLogs"); !proto.Equal(got, tc.req) {
			t.Errorf("logs %q sent %v, want %v", tc.args, got, tc.req)
		}
	}
	code, out, errOut := runCaptured(t, "", "sandbox", "logs", "nope")
	if code != 1 || out != "" || errOut != "nodeagent sandbox logs: sandbox \"nope\": not found (NotFound)\n" {
		t.Errorf("logs of an unknown sandbox: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
