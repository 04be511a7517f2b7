//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/nodeagent/guest/client"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// serve runs the agent's sessions on a unix socket, one per connection,
// as the port does for host connections, and returns the socket.
func serve(t *testing.T, a *agent) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				var wmu sync.Mutex
				_ = a.newSession(conn, &wmu).run()
				conn.Close()
			}()
		}
	}()
	return sock
}

// testReaper is the one reaper of the test process: a reaper reaps every
// child, so two would steal each other's exit statuses.
var testReaper = newReaper()

func testAgent(t *testing.T) *agent {
	a := newAgent(slog.New(slog.NewTextHandler(io.Discard, nil)), "test")
	a.reaper = testReaper
	// The tests may run as root: SetIdentity must not touch this host.
	a.identity = &fakeIdentity{}
	a.reaper.start()
	return a
}

func dial(t *testing.T, sock string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestPingAndInfo(t *testing.T) {
	c := dial(t, serve(t, testAgent(t)))
	if info := c.Info(); info.ProtocolVersion != agentproto.Version || info.AgentVersion != "test" {
		t.Fatalf("info after dial: %+v", info)
	}
	info, err := c.Ping(ctxT(t, 5*time.Second))
	if err != nil || info.Uptime <= 0 {
		t.Fatalf("ping: %+v, %v", info, err)
	}
}

func TestExec(t *testing.T) {
	c := dial(t, serve(t, testAgent(t)))
	for _, tc := range []struct {
		name           string
		spec           agentproto.ExecSpec
		stdin          io.Reader
		stdout, stderr string
		want           agentproto.ExitStatus
	}{
		{
			name:   "stdio and exit code",
			spec:   agentproto.ExecSpec{Argv: []string{"sh", "-c", "echo out; echo err >&2; read x; echo got $x; exit 3"}},
			stdin:  strings.NewReader("hello\n"),
			stdout: "out\ngot hello\n", stderr: "err\n", want: agentproto.ExitStatus{Code: 3},
		},
		{
			name:   "nil stdin is EOF",
			spec:   agentproto.ExecSpec{Argv: []string{"sh", "-c", "cat; echo done"}},
			stdout: "done\n",
		},
		{
			name:   "env, default PATH, dir",
			spec:   agentproto.ExecSpec{Argv: []string{"sh", "-c", "echo $FOO $PATH; pwd"}, Env: []string{"FOO=bar"}, Dir: "/tmp"},
			stdout: "bar " + agentproto.DefaultPath + "\n/tmp\n",
		},
		{
			name: "killed by a signal",
			spec: agentproto.ExecSpec{Argv: []string{"sh", "-c", "kill -9 $$"}},
			want: agentproto.ExitStatus{Code: 137, Signal: "SIGKILL"},
		},
		{
			name:   "background child holding stdout",
			spec:   agentproto.ExecSpec{Argv: []string{"sh", "-c", "sleep 5 & echo bye"}},
			stdout: "bye\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			st, err := c.Exec(ctxT(t, 10*time.Second), tc.spec, tc.stdin, &out, &errb)
			if err != nil {
				t.Fatal(err)
			}
			if st != tc.want || out.String() != tc.stdout || errb.String() != tc.stderr {
				t.Fatalf("got %+v stdout %q stderr %q; want %+v %q %q", st, out.String(), errb.String(), tc.want, tc.stdout, tc.stderr)
			}
		})
	}
}

func TestExecErrors(t *testing.T) {
	c := dial(t, serve(t, testAgent(t)))
	ctx := ctxT(t, 10*time.Second)
	_, err := c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"no-such-binary"}}, nil, nil, nil)
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "executable file not found") {
		t.Errorf("missing binary: %v", err)
	}
	_, err = c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"/no/such/binary"}}, nil, nil, nil)
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing path: %v", err)
	}
	_, err = c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"true"}, Dir: "/no/such/dir"}, nil, nil, nil)
	if err == nil {
		t.Errorf("missing dir: no error")
	}
	_, err = c.Exec(ctx, agentproto.ExecSpec{}, nil, nil, nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("empty argv: %v", err)
	}
	// The connection is still fine.
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// Output larger than the window, to a slow writer, and stdin larger than
// the window, to a process that reads it slowly, arrive whole.
func TestExecFlowControl(t *testing.T) {
	c := dial(t, serve(t, testAgent(t)))
	in := make([]byte, 3*agentproto.Window+12345)
	if _, err := rand.Read(in); err != nil {
		t.Fatal(err)
	}
	out := &slowWriter{delay: time.Millisecond}
	st, err := c.Exec(ctxT(t, 20*time.Second), agentproto.ExecSpec{Argv: []string{"cat"}}, bytes.NewReader(in), out, nil)
	if err != nil || st.Code != 0 {
		t.Fatalf("cat: %+v, %v", st, err)
	}
	if !bytes.Equal(out.buf.Bytes(), in) {
		t.Fatalf("cat gave %d bytes back of %d", out.buf.Len(), len(in))
	}
	if out.maxWrite > agentproto.MaxChunk {
		t.Fatalf("a frame of %d bytes", out.maxWrite)
	}
}

type slowWriter struct {
	buf      bytes.Buffer
	delay    time.Duration
	maxWrite int
}

func (w *slowWriter) Write(b []byte) (int, error) {
	time.Sleep(w.delay)
	w.maxWrite = max(w.maxWrite, len(b))
	return w.buf.Write(b)
}

func TestExecConcurrent(t *testing.T) {
	c := dial(t, serve(t, testAgent(t)))
	ctx := ctxT(t, 20*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			st, err := c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"sh", "-c", fmt.Sprintf("for j in 1 2 3; do echo %d-$j; done; exit %d", i, i)}}, nil, &out, nil)
			want := fmt.Sprintf("%d-1\n%d-2\n%d-3\n", i, i, i)
			if err != nil || st.Code != i || out.String() != want {
				errs <- fmt.Errorf("exec %d: %+v %q %v", i, st, out.String(), err)
			}
			if _, err := c.Ping(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestExecCancelKills(t *testing.T) {
	c := dial(t, serve(t, testAgent(t)))
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var st agentproto.ExitStatus
	go func() {
		var err error
		st, err = c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 100"}}, nil, nil, nil)
		done <- err
	}()
	pid := waitPID(t, pidFile)
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || st.Signal != "SIGKILL" {
			t.Fatalf("cancelled exec: %+v, %v", st, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("exec did not return after its context ended")
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("process %d still runs", pid)
	}
	t.Logf("killed in %v", time.Since(start))
}

// A host that goes away takes its processes with it.
func TestHostDisconnectKills(t *testing.T) {
	sock := serve(t, testAgent(t))
	c := dial(t, sock)
	pidFile := filepath.Join(t.TempDir(), "pid")
	go func() {
		_, _ = c.Exec(context.Background(), agentproto.ExecSpec{Argv: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 100"}}, nil, nil, nil)
	}()
	pid := waitPID(t, pidFile)
	c.Close()
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("process %d survived the host", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A new connection works.
	c2 := dial(t, sock)
	if _, err := c2.Ping(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
}

func waitPID(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(path)
		var pid int
		if err == nil {
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 0 {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBlockDevices(t *testing.T) {
	a := testAgent(t)
	a.sysBlock = t.TempDir()
	for name, attrs := range map[string]map[string]string{
		"vda":   {"size": "2048\n", "serial": "vol1\n", "ro": "0\n"},
		"vdb":   {"size": "8\n", "ro": "1\n"},
		"vdaa":  {"size": "1\n", "serial": "x", "ro": "0"},
		"loop0": {"size": "1\n"},
	} {
		dir := filepath.Join(a.sysBlock, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for k, v := range attrs {
			if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	c := dial(t, serve(t, a))
	devs, err := c.BlockDevices(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := []agentproto.BlockDevice{
		{Name: "vda", Serial: "vol1", SizeBytes: 1 << 20},
		{Name: "vdb", SizeBytes: 4096, ReadOnly: true},
		{Name: "vdaa", Serial: "x", SizeBytes: 512},
	}
	if fmt.Sprint(devs) != fmt.Sprint(want) {
		t.Fatalf("got %+v, want %+v", devs, want)
	}
}

func TestShutdownAnswersThenPowersOff(t *testing.T) {
	a := testAgent(t)
	off := make(chan struct{})
	a.powerOff = func() { close(off) }
	c := dial(t, serve(t, a))
	if err := c.Shutdown(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-off:
	case <-time.After(5 * time.Second):
		t.Fatal("no power off")
	}
}

func TestConfigureNetworkInvalid(t *testing.T) {
	c := dial(t, serve(t, testAgent(t)))
	err := c.ConfigureNetwork(ctxT(t, 5*time.Second), agentproto.NetConfig{Interfaces: []agentproto.Interface{{MAC: "bad"}}})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("got %v", err)
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{"SIGKILL": syscall.SIGKILL, "term": syscall.SIGTERM, "9": syscall.SIGKILL, "HUP": syscall.SIGHUP} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("%s: %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "SIGNOPE", "0", "99"} {
		if _, err := parseSignal(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestHostnameFromCmdline(t *testing.T) {
	for _, tc := range []struct{ cmdline, want string }{
		{"console=ttyS0 nodeinfra.id=pod-123 quiet", "pod-123"},
		{"quiet", ""},
		{"nodeinfra.id=a_b/c", "a-b-c"},
		{"nodeinfra.id=" + strings.Repeat("x", 80), strings.Repeat("x", 64)},
		{"xnodeinfra.id=nope", ""},
	} {
		if got := hostnameFromCmdline(tc.cmdline, "nodeinfra.id"); got != tc.want {
			t.Errorf("%q: %q, want %q", tc.cmdline, got, tc.want)
		}
	}
}

func TestFindPort(t *testing.T) {
	dir := t.TempDir()
	for dev, name := range map[string]string{"vport0p0": "", "vport0p1": "other\n", "vport0p2": "agent.0\n"} {
		if err := os.MkdirAll(filepath.Join(dir, dev), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dev, "name"), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if p, err := findPort(dir, "agent.0"); err != nil || p != "/dev/vport0p2" {
		t.Fatalf("%q, %v", p, err)
	}
	if _, err := findPort(dir, "agent.1"); err == nil {
		t.Fatal("found agent.1")
	}
}
