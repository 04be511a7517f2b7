package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/nodeagent/guest/client"
	"github.com/nodeinfra/nodeinfra/nodeagent/guest/initramfs"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

const (
	testMAC  = "02:00:00:0a:01:0b"
	diskSize = 16 << 20
)

// vm is a guest booted from the tailored kernel and an initramfs holding
// the agent under test.
type vm struct {
	dir     string
	socket  string
	console string
	cmd     *exec.Cmd
	started time.Time
	exited  chan struct{}
}

func bootVM(t *testing.T) *vm {
	t.Helper()
	kernel := os.Getenv("NODEINFRA_GUEST_KERNEL")
	if kernel == "" {
		t.Skip("needs NODEINFRA_GUEST_KERNEL (the path nodeagent/guest/kernel/build.sh prints)")
	}
	for _, need := range []string{"qemu-system-x86_64", "/bin/busybox"} {
		if _, err := exec.LookPath(need); err != nil {
			t.Skipf("needs %s (e2e/setup/prereqs.sh installs it): %v", need, err)
		}
	}
	dir := t.TempDir()
	init := filepath.Join(dir, "init")
	build := exec.Command("go", "build", "-ldflags", "-s -w -X github.com/nodeinfra/nodeinfra/pkg/version.Version=vmtest",
		"-o", init, "github.com/nodeinfra/nodeinfra/nodeagent/guest/agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := initramfs.WriteFile(context.Background(), initrd, initramfs.Spec{Init: init, Busybox: "/bin/busybox"}); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "vol1.img")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, diskSize); err != nil {
		t.Fatal(err)
	}
	v := &vm{dir: dir, socket: filepath.Join(dir, "agent.sock"), console: filepath.Join(dir, "console.log"), exited: make(chan struct{})}
	// The sandboxes' own guest command line (nodeagent/qemu).
	cmdline := strings.Join(append(slices.Clone(qemu.DefaultKernelArgs), "noapictimer", "nodeinfra.id=agent-vmtest"), " ")
	if khz := qemu.TSCkHz(); khz > 0 {
		cmdline += fmt.Sprintf(" tsc_early_khz=%d", khz)
	}
	v.cmd = exec.Command("qemu-system-x86_64", "-name", "nodeinfra-agent-vmtest",
		"-M", "pc", "-accel", "tcg", "-cpu", "max", "-m", "128M", "-smp", "1",
		"-bios", "/usr/share/qemu/qboot.rom", "-nographic", "-nodefaults", "-no-user-config", "-no-reboot",
		"-serial", "file:"+v.console,
		"-kernel", kernel, "-initrd", initrd, "-append", cmdline,
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=agent,path="+v.socket+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=agent.0",
		"-drive", "file="+disk+",if=none,id=vol1,format=raw",
		"-device", "virtio-blk-pci,drive=vol1,serial=vol1",
		// A NIC whose traffic goes nowhere: restrict=on cuts the
		// user-mode network off from the host and the outside.
		"-netdev", "user,id=n0,restrict=on",
		"-device", "virtio-net-pci,netdev=n0,mac="+testMAC)
	var stderr bytes.Buffer
	v.cmd.Stderr = &stderr
	v.started = time.Now()
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = v.cmd.Wait(); close(v.exited) }()
	t.Cleanup(func() {
		_ = v.cmd.Process.Kill()
		<-v.exited
		if t.Failed() {
			b, _ := os.ReadFile(v.console)
			t.Logf("qemu stderr:\n%s\nguest console:\n%s", stderr.String(), b)
		}
	})
	return v
}

// The agent in a real guest (tailored kernel, QEMU under TCG): handshake,
// exec with stdio, errors, cancellation, concurrency, disks, network,
// reconnection and shutdown.
func TestGuestAgentInVM(t *testing.T) {
	v := bootVM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	c, err := client.Dial(ctx, v.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { c.Close() }() // c changes when the test reconnects
	t.Logf("QEMU start to Hello: %v (agent %+v)", time.Since(v.started).Round(time.Millisecond), c.Info())
	if info := c.Info(); info.ProtocolVersion != agentproto.Version || info.AgentVersion != "vmtest" {
		t.Fatalf("info %+v", info)
	}
	info, err := c.Ping(ctx)
	if err != nil || info.Uptime <= 0 {
		t.Fatalf("ping: %+v, %v", info, err)
	}
	if b, _ := os.ReadFile(v.console); !bytes.Contains(b, []byte("nodeinfra-agent: ready")) {
		t.Errorf("no ready line on the console:\n%s", b)
	} else {
		t.Logf("console: %s", bytes.TrimSpace(b))
	}

	run := func(argv ...string) string {
		t.Helper()
		var out, errb bytes.Buffer
		st, err := c.Exec(ctx, agentproto.ExecSpec{Argv: argv}, nil, &out, &errb)
		if err != nil || st.Code != 0 {
			t.Fatalf("%q: %+v, %v, stderr %q", argv, st, err, errb.String())
		}
		return out.String()
	}

	t.Run("exec stdio", func(t *testing.T) {
		var out, errb bytes.Buffer
		st, err := c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"sh", "-c", "echo out; echo err >&2; read x; echo got $x; exit 3"}},
			strings.NewReader("hello\n"), &out, &errb)
		if err != nil || st.Code != 3 || out.String() != "out\ngot hello\n" || errb.String() != "err\n" {
			t.Fatalf("got %+v %q %q %v", st, out.String(), errb.String(), err)
		}
		if h := run("hostname"); h != "agent-vmtest\n" {
			t.Errorf("hostname %q", h)
		}
	})

	t.Run("missing binary", func(t *testing.T) {
		_, err := c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"no-such-binary"}}, nil, nil, nil)
		if !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("got %v", err)
		}
		t.Log(err)
	})

	t.Run("concurrent execs", func(t *testing.T) {
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var out bytes.Buffer
				st, err := c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"sh", "-c", fmt.Sprintf("sleep 0.2; echo %d; exit %d", i, i)}}, nil, &out, nil)
				if err != nil || st.Code != i || out.String() != fmt.Sprintf("%d\n", i) {
					t.Errorf("exec %d: %+v %q %v", i, st, out.String(), err)
				}
			}()
		}
		wg.Wait()
	})

	t.Run("cancel kills", func(t *testing.T) {
		ectx, ecancel := context.WithCancel(ctx)
		defer ecancel()
		started := make(chan struct{})
		w := &signalWriter{once: sync.OnceFunc(func() { close(started) })}
		done := make(chan struct{})
		var st agentproto.ExitStatus
		var err error
		go func() {
			defer close(done)
			st, err = c.Exec(ectx, agentproto.ExecSpec{Argv: []string{"sh", "-c", "echo started; exec sleep 100"}}, nil, w, nil)
		}()
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("sleep did not start")
		}
		ecancel()
		<-done
		if !errors.Is(err, context.Canceled) || st.Signal != "SIGKILL" {
			t.Fatalf("got %+v, %v", st, err)
		}
		if out := run("sh", "-c", "pidof sleep || echo none"); out != "none\n" {
			t.Fatalf("sleep still runs: %q", out)
		}
	})

	t.Run("block devices", func(t *testing.T) {
		devs, err := c.BlockDevices(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := agentproto.BlockDevice{Name: "vda", Serial: "vol1", SizeBytes: diskSize}
		if len(devs) != 1 || devs[0] != want {
			t.Fatalf("got %+v, want [%+v]", devs, want)
		}
	})

	t.Run("network", func(t *testing.T) {
		cfg := agentproto.NetConfig{
			Interfaces: []agentproto.Interface{{MAC: testMAC, Name: "eth0", MTU: 1400, Addresses: []string{"10.1.0.11/24", "fd00:1::b/64"}}},
			Routes:     []agentproto.Route{{Gateway: "10.1.0.1"}, {Dst: "10.9.0.0/16", Gateway: "10.1.0.254", Interface: "eth0"}, {Gateway: "fd00:1::1"}},
		}
		for i := range 2 { // the second time changes nothing
			if err := c.ConfigureNetwork(ctx, cfg); err != nil {
				t.Fatalf("configure network (%d): %v", i+1, err)
			}
		}
		addr := run("ip", "addr", "show", "eth0")
		for _, want := range []string{"mtu 1400", ",UP,", "link/ether " + testMAC, "inet 10.1.0.11/24", "inet6 fd00:1::b/64"} {
			if !strings.Contains(addr, want) {
				t.Errorf("ip addr lacks %q:\n%s", want, addr)
			}
		}
		routes := run("ip", "route") + run("ip", "-6", "route")
		for _, want := range []string{"default via 10.1.0.1 dev eth0", "10.9.0.0/16 via 10.1.0.254 dev eth0", "default via fd00:1::1 dev eth0"} {
			if !strings.Contains(routes, want) {
				t.Errorf("routes lack %q:\n%s", want, routes)
			}
		}
		err := c.ConfigureNetwork(ctx, agentproto.NetConfig{Interfaces: []agentproto.Interface{{MAC: "02:00:00:00:00:99"}}})
		if !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("unknown mac: %v", err)
		}
	})

	t.Run("reconnect", func(t *testing.T) {
		// A process of the old connection dies with it.
		started := make(chan struct{})
		w := &signalWriter{once: sync.OnceFunc(func() { close(started) })}
		go func() {
			_, _ = c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"sh", "-c", "echo started; exec sleep 100"}}, nil, w, nil)
		}()
		<-started
		c.Close()
		// Right away: the guest may not have seen the old connection
		// end, and answers the Ping.
		start := time.Now()
		c2, err := client.Dial(ctx, v.socket)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c2.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("re-dial at once and ping: %v", time.Since(start).Round(time.Millisecond))
		c2.Close()
		// Later: the guest waits for a host, and greets the next one.
		time.Sleep(300 * time.Millisecond)
		start = time.Now()
		c3, err := client.Dial(ctx, v.socket)
		if err != nil {
			t.Fatal(err)
		}
		if c3.Info().Uptime != 0 {
			t.Errorf("adopted through a Ping, not greeted with a Hello: %+v", c3.Info())
		}
		t.Logf("re-dial after 300ms to Hello: %v", time.Since(start).Round(time.Millisecond))
		c = c3
		if out := run("sh", "-c", "echo again; pidof sleep || echo none"); out != "again\nnone\n" {
			t.Fatalf("exec after reconnect: %q", out)
		}
	})

	t.Run("shutdown", func(t *testing.T) {
		start := time.Now()
		if err := c.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case <-v.exited:
			t.Logf("QEMU exited %v after Shutdown", time.Since(start).Round(time.Millisecond))
		case <-time.After(10 * time.Second):
			t.Fatal("QEMU still runs 10s after Shutdown")
		}
		select {
		case <-c.Done():
		case <-time.After(time.Second):
			t.Error("the connection did not end with the VM")
		}
	})
}

// signalWriter calls once on its first write.
type signalWriter struct {
	once func()
}

func (w *signalWriter) Write(b []byte) (int, error) {
	w.once()
	return len(b), nil
}

var _ io.Writer = (*signalWriter)(nil)
