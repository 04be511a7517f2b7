package qemu

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// startQEMU runs a paused VM with nothing in it but a QMP socket.
func startQEMU(t *testing.T) (string, *exec.Cmd) {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("needs qemu-system-x86_64 (e2e/setup/prereqs.sh installs it)")
	}
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command("qemu-system-x86_64", "-name", "nodeinfra-qmp-test", "-M", "pc", "-accel", "tcg", "-m", "32M",
		"-nodefaults", "-display", "none", "-S", "-qmp", "unix:"+sock+",server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(sock); err == nil {
			return sock, cmd
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("QMP socket did not appear")
	return "", nil
}

func dial(t *testing.T, sock string) *QMP {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := Dial(ctx, sock, 16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func waitEvent(t *testing.T, q *QMP, name string) Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-q.Events():
			if !ok {
				t.Fatalf("events closed before %s", name)
			}
			if ev.Name == name {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event", name)
		}
	}
}

func TestQMPLifecycle(t *testing.T) {
	sock, cmd := startQEMU(t)
	q := dial(t, sock)
	ctx := context.Background()
	st, err := q.QueryStatus(ctx)
	if err != nil || st.Running || st.Status != "prelaunch" {
		t.Fatalf("query-status = %+v, %v", st, err)
	}
	if err := q.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, q, "RESUME")
	if st, err := q.QueryStatus(ctx); err != nil || !st.Running {
		t.Fatalf("after cont: %+v, %v", st, err)
	}
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	if ev := waitEvent(t, q, "STOP"); ev.Time.IsZero() {
		t.Error("event without a timestamp")
	}
	// Errors come back as *Error with QEMU's class.
	err = q.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}
	err = q.Execute(ctx, "device_del", map[string]string{"id": "nope"}, nil)
	if !errors.As(err, &qe) {
		t.Fatalf("device_del of a missing device: %v", err)
	}
	// Calls overlap safely.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := q.QueryStatus(ctx); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A deadline that has passed ends the call, not the connection.
	dead, cancel := context.WithTimeout(ctx, time.Nanosecond)
	defer cancel()
	time.Sleep(time.Millisecond)
	if err := q.Execute(dead, "query-status", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired deadline: %v", err)
	}
	if _, err := q.QueryStatus(ctx); err != nil {
		t.Fatalf("connection unusable after a timed-out call: %v", err)
	}
	// quit: QEMU answers, emits SHUTDOWN and exits; the client notices.
	if err := q.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	select {
	case <-q.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not closed after quit")
	}
	if err := q.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after QEMU exited: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU did not exit on quit")
	}
}

func TestDialRefusesNonQMP(t *testing.T) {
	dir := t.TempDir()
	if _, err := Dial(context.Background(), filepath.Join(dir, "missing.sock"), 1); err == nil {
		t.Fatal("dialled a missing socket")
	}
}
