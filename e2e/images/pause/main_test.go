package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// With NODEINFRA_PAUSE_MAIN set, the test binary is pause itself (for
// the tests that signal a real process).
func TestMain(m *testing.M) {
	if os.Getenv("NODEINFRA_PAUSE_MAIN") == "1" {
		os.Args = append([]string{"pause"}, os.Args[1:]...)
		ready = func() { fmt.Println("ready") }
		main()
		return
	}
	os.Exit(m.Run())
}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sigs  []os.Signal
		close bool
		code  int
		reaps int
	}{
		{"SIGTERM", []os.Signal{syscall.SIGTERM}, false, 0, 0},
		{"SIGINT", []os.Signal{syscall.SIGINT}, false, 0, 0},
		{"reaps on each SIGCHLD, then SIGTERM", []os.Signal{syscall.SIGCHLD, syscall.SIGCHLD, syscall.SIGTERM}, false, 0, 2},
		{"other signals are ignored", []os.Signal{syscall.SIGHUP, syscall.SIGTERM}, false, 0, 0},
		{"closed channel", nil, true, 1, 0},
	} {
		ch := make(chan os.Signal, len(tc.sigs))
		for _, s := range tc.sigs {
			ch <- s
		}
		if tc.close {
			close(ch)
		}
		reaps := 0
		if code := run(ch, func() int { reaps++; return 0 }); code != tc.code || reaps != tc.reaps {
			t.Errorf("%s: code %d after %d reaps, want %d after %d", tc.name, code, reaps, tc.code, tc.reaps)
		}
	}
}

// reapAll collects an exited child nobody waited for: no zombie is left.
func TestReapAll(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Skip("no true(1):", err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for state(pid) != "Z" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := reapAll(); n < 1 {
		t.Fatalf("reapAll() = %d, want at least the exited child", n)
	}
	if s := state(pid); s != "" {
		t.Errorf("child %d still there, state %q", pid, s)
	}
}

// state is the process's state letter from /proc, "" when it is gone.
func state(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && len(s) > i+2 {
		return s[i+2 : i+3]
	}
	return ""
}

// The real process prints its version, and exits 0 on SIGTERM once it
// has installed its handler.
func TestProcess(t *testing.T) {
	v := exec.Command(os.Args[0], "-v")
	v.Env = append(os.Environ(), "NODEINFRA_PAUSE_MAIN=1")
	out, err := v.Output()
	if err != nil || !strings.HasPrefix(string(out), "pause ") {
		t.Fatalf("pause -v: %q, %v", out, err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "NODEINFRA_PAUSE_MAIN=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Signal only once pause handles SIGTERM: before that it would kill.
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("pause: %q, %v; want ready", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("pause after SIGTERM: %v, want exit 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("pause did not exit on SIGTERM")
	}
}
