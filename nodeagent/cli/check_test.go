package cli

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/hostcheck"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
)

// noAgent points $NODEAGENT_SOCKET at a listener and fails the test if
// anything connects to it: check must not need, or dial, an agent.
func noAgent(t *testing.T) {
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
	var dialed atomic.Bool
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			dialed.Store(true)
			c.Close()
		}
	}()
	t.Cleanup(func() {
		lis.Close()
		if dialed.Load() {
			t.Error("check dialed the agent's socket")
		}
	})
	t.Setenv("NODEAGENT_SOCKET", sock)
}

// checkLines parses check's table: item name → its line's status and
// detail.
func checkLines(t *testing.T, out string) map[string]hostcheck.Item {
	t.Helper()
	items := map[string]hostcheck.Item{}
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			t.Fatalf("line %q: want STATUS ITEM DETAIL", line)
		}
		var st hostcheck.Status
		if err := st.UnmarshalText([]byte(f[0])); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		items[f[1]] = hostcheck.Item{Name: f[1], Status: st, Detail: strings.Join(f[2:], " ")}
	}
	return items
}

// On this machine, check prints what the machine is. Each expectation
// is derived from a plain fact about the host, found here without
// hostcheck; the KVM one boots a test guest as the agent does. On the
// development VM (cgroup v1, KVM that aborts QEMU, no rbd or nbd module,
// /dev/fuse) that is: kvm warn with TCG fallback, krbd and nbd warn, fuse,
// tun and cgroups (v1) ok, exit status 0.
func TestCheckThisMachine(t *testing.T) {
	bin := os.Getenv("NODEINFRA_BIN")
	if bin == "" {
		t.Skip("NODEINFRA_BIN is unset: the check needs a guest kernel and initramfs (make test sets it to a dir with nodeagent-guest/)")
	}
	kernel := filepath.Join(bin, "nodeagent-guest", "vmlinux")
	initrd := filepath.Join(bin, "nodeagent-guest", "initramfs.cpio")
	noAgent(t)
	code, out, errOut := runCaptured(t, "", "check", "--guest-kernel", kernel, "--guest-initrd", initrd)
	t.Logf("nodeagent check (exit %d):\n%s%s", code, out, errOut)
	items := checkLines(t, out)

	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	isChar := func(p string) bool { fi, err := os.Stat(p); return err == nil && fi.Mode()&os.ModeCharDevice != 0 }
	opens := func(p string) bool {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err == nil {
			f.Close()
		}
		return err == nil
	}
	status := func(ok bool, otherwise hostcheck.Status) hostcheck.Status {
		if ok {
			return hostcheck.OK
		}
		return otherwise
	}
	_, qemuErr := exec.LookPath("qemu-system-x86_64")
	kvmErr := qemu.ProbeKVM(context.Background(), "qemu-system-x86_64", kernel)
	cgroupMode, cgroupAll := "v1", true
	for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "cpuset", "blkio"} {
		cgroupAll = cgroupAll && exists(filepath.Join("/sys/fs/cgroup", c, "cgroup.procs"))
	}
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		cgroupMode, cgroupAll = "v2", len(strings.Fields(string(b))) > 0
		for _, c := range []string{"cpu", "memory", "pids", "cpuset", "io"} {
			cgroupAll = cgroupAll && strings.Contains(" "+string(b)+" ", " "+c+" ")
		}
	}
	krbd := exists("/sys/bus/rbd/add_single_major")
	nbd := exists("/sys/module/nbd") || exists("/dev/nbd0")
	fuse := status(isChar("/dev/fuse") && opens("/dev/fuse") && exists("/dev/loop-control"), hostcheck.Fail)
	if fuse == hostcheck.Fail && (krbd || nbd) {
		fuse = hostcheck.Warn
	}

	for _, w := range []struct {
		name  string
		st    hostcheck.Status
		parts []string
	}{
		{"kvm", status(kvmErr == nil, hostcheck.Warn), nil},
		{"tun", status(isChar("/dev/net/tun"), hostcheck.Fail), []string{"/dev/net/tun"}},
		{"cgroups", status(cgroupAll, hostcheck.Warn), []string{cgroupMode + ": cpu"}},
		{"qemu", status(qemuErr == nil, hostcheck.Fail), nil},
		{"qemu-firmware", status(exists("/usr/share/qemu/qboot.rom"), hostcheck.Fail), nil},
		{"qemu-rbd", status(exists("/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so") || exists("/usr/lib64/qemu/block-rbd.so") ||
			exists("/usr/lib/qemu/block-rbd.so"), hostcheck.Warn), nil},
		{"guest-kernel", hostcheck.OK, []string{kernel}},
		{"guest-initrd", hostcheck.OK, []string{initrd}},
		{"krbd", status(krbd, hostcheck.Warn), nil},
		{"nbd", status(nbd, hostcheck.Warn), nil},
		{"fuse", fuse, nil},
		{"netns", status(exists("/run/netns"), hostcheck.Warn), nil},
	} {
		it, ok := items[w.name]
		if !ok {
			t.Errorf("no %s line", w.name)
			continue
		}
		if it.Status != w.st {
			t.Errorf("%s: %s %q, want %s", w.name, it.Status, it.Detail, w.st)
		}
		for _, p := range w.parts {
			if !strings.Contains(it.Detail, p) {
				t.Errorf("%s %q: want it to say %q", w.name, it.Detail, p)
			}
		}
		switch {
		case it.Status != hostcheck.Warn:
		case w.name == "kvm":
			if !strings.Contains(it.Detail, "TCG fallback (emulation, slower)") {
				t.Errorf("kvm warn %q: want it to name the TCG fallback", it.Detail)
			}
		case w.name == "krbd":
			if !strings.Contains(it.Detail, "csi-ceph falls back to rbd-nbd or rbd-fuse") {
				t.Errorf("krbd warn %q: want it to name csi-ceph's fallback", it.Detail)
			}
		}
	}
	if len(items) != 12 {
		t.Errorf("%d lines, want 12", len(items))
	}
	failed := false
	for _, it := range items {
		failed = failed || it.Status == hostcheck.Fail
	}
	if want := map[bool]int{false: 0, true: 1}[failed]; code != want || errOut != "" {
		t.Errorf("exit %d, stderr %q; want exit %d and nothing on stderr", code, errOut, want)
	}
}

// A missing guest kernel fails its line and the check (exit status 1,
// nothing on stderr: the lines say why), and leaves KVM unprobed. -o json
// says the same. Nothing boots: this runs anywhere.
func TestCheckMissingKernel(t *testing.T) {
	noAgent(t)
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := os.WriteFile(initrd, []byte("070701"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCaptured(t, "", "check", "--guest-kernel", kernel, "--guest-initrd", initrd)
	items := checkLines(t, out)
	if code != 1 || errOut != "" {
		t.Errorf("exit %d, stderr %q; want 1 and nothing:\n%s", code, errOut, out)
	}
	if it := items["guest-kernel"]; it.Status != hostcheck.Fail || !strings.Contains(it.Detail, kernel) ||
		!strings.Contains(it.Detail, "--guest-kernel") {
		t.Errorf("guest-kernel line: %+v, want fail naming %s and --guest-kernel", it, kernel)
	}
	if it := items["guest-initrd"]; it.Status != hostcheck.OK {
		t.Errorf("guest-initrd line: %+v, want ok", it)
	}
	if it := items["kvm"]; it.Status != hostcheck.Warn || !strings.Contains(it.Detail, "TCG fallback") {
		t.Errorf("kvm line: %+v, want warn naming the TCG fallback", it)
	}
	if !strings.HasPrefix(out, "ok ") && !strings.HasPrefix(out, "warn ") && !strings.HasPrefix(out, "fail ") {
		t.Errorf("check: want a status first on each line, no header:\n%s", out)
	}

	code, out, _ = runCaptured(t, "", "check", "--guest-kernel", kernel, "--guest-initrd", initrd, "-o", "json")
	var r struct {
		Ready bool
		Items []hostcheck.Item
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 1 || r.Ready || len(r.Items) != 12 {
		t.Fatalf("check -o json: exit %d, %v, %+v:\n%s", code, err, r, out)
	}
	if it := r.Items[6]; it.Name != "guest-kernel" || it.Status != hostcheck.Fail {
		t.Errorf("check -o json: item 6 %+v, want guest-kernel fail", it)
	}
	if !strings.Contains(out, `"status": "fail"`) {
		t.Errorf("check -o json: statuses not as words:\n%s", out)
	}
}

// check takes no argument, and -o only the formats of the other verbs.
func TestCheckUsage(t *testing.T) {
	for _, args := range [][]string{{"check", "extra"}, {"check", "-o", "xml"}, {"check", "--bogus"}} {
		if code, out, errOut := runCaptured(t, "", args...); code != 2 || out != "" || !strings.Contains(errOut, "nodeagent check") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want a usage error", args, code, out, errOut)
		}
	}
	code, out, _ := runCaptured(t, "", "check", "--help")
	if code != 0 || !strings.Contains(out, "--guest-kernel") || !strings.Contains(out, "without a running") {
		t.Errorf("check --help: exit %d:\n%s", code, out)
	}
}

// statusAgent answers Status with pools, for the status verb's ENI lines.
type statusAgent struct {
	apiv1.UnimplementedENIServiceServer
	pools []*apiv1.VPCPool
}

func (s *statusAgent) Status(context.Context, *apiv1.StatusRequest) (*apiv1.StatusResponse, error) {
	return &apiv1.StatusResponse{Version: "v1.2.3", UptimeSeconds: 90, Accel: "tcg", CgroupMode: "v1",
		Sandboxes: map[string]uint32{"READY": 2}, Pools: s.pools}, nil
}

// status shows ENIs by state: in total, then per VPC. (It lives here, the
// status verb's other tests in cli_test.go.)
func TestStatusENIsByState(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pools []*apiv1.VPCPool
		want  []string
	}{
		{"none", nil, []string{"enis: none registered\n"}},
		{"two VPCs", []*apiv1.VPCPool{{Vpc: "vpc-a", Free: 2, Attached: 1}, {Vpc: "vpc-b", Free: 1, Attached: 3, Missing: 1}},
			[]string{"enis: free 3, attached 4, missing 1\n", "VPC    FREE  ATTACHED  MISSING\n",
				"vpc-a  2     1         0\n", "vpc-b  1     3         1\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, err := os.MkdirTemp("", "cli")
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
			apiv1.RegisterENIServiceServer(g, &statusAgent{pools: tc.pools})
			go g.Serve(lis)
			t.Cleanup(g.Stop)

			code, out, errOut := runCaptured(t, "", "status", "--socket", sock)
			if code != 0 || !strings.HasPrefix(out, "nodeagent v1.2.3: serving for 1m30s\nsandboxes: accel tcg, cgroups v1; ready 2\n") {
				t.Fatalf("status: exit %d, stderr %q:\n%s", code, errOut, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("status: want %q in:\n%s", w, out)
				}
			}
		})
	}
}
