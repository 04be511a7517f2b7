package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// daemon is a long-lived process this program started (the agent, the
// CSI driver). It runs in a process group of its own: a Ctrl-C at the
// terminal reaches only the soak, which then tears things down in order
// (sandboxes before the agent, unstage before the driver) instead of
// every process dying at once and leaving QEMU and mounts behind.
type daemon struct {
	name   string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// startDaemon starts argv with its output in logPath.
func startDaemon(name, logPath string, argv ...string) (*daemon, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child holds its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, log: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(d.exited)
	}()
	return d, nil
}

// pid is the daemon's process ID (nsenter execs the agent in its place).
func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// waitSocket waits until a unix socket at path accepts a connection.
func (d *daemon) waitSocket(ctx context.Context, path string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("%s exited at start; its log:\n%s", d.name, tailFile(d.log, 30))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not answer on %s within %v; its log:\n%s", d.name, path, within, tailFile(d.log, 30))
}

// stop sends SIGTERM, then SIGKILL after grace, and reaps the daemon.
func (d *daemon) stop(grace time.Duration) error {
	if !d.alive() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return nil
	case <-time.After(grace):
	}
	_ = d.cmd.Process.Kill()
	<-d.exited
	return fmt.Errorf("%s ignored SIGTERM for %v: killed", d.name, grace)
}

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// exeName is the base name of the program pid runs.
func exeName(pid int) string {
	p, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return ""
	}
	return filepath.Base(strings.TrimSuffix(p, " (deleted)"))
}

// killPids sends SIGKILL to each pid and waits (up to 5 s) until it is
// gone; the processes are ones this run started (found by its run tag).
func killPids(pids []int) error {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil {
			// A zombie whose parent is gone is reaped by init; one whose
			// parent is still here counts as gone.
			if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); strings.Contains(string(st), ") Z ") {
				break
			}
			if time.Now().After(deadline) {
				return errors.New("processes still alive after SIGKILL: " + fmt.Sprint(pids))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}
