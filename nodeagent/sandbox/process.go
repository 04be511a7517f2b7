package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// process is a running QEMU: one the agent started (its child, whose exit
// status it reaps) or one it re-adopted after a restart (watched through a
// pidfd; its status belongs to whoever is its parent now).
type process struct {
	pid     int
	adopted bool
	child   *os.Process
	done    chan struct{} // closed when the process is gone
	reason  string        // how it ended; set before done closes

	mu    sync.Mutex
	pidfd int // adopted processes only, else -1; closed once it is gone
}

// startProcess starts cmd and watches it.
func startProcess(cmd *exec.Cmd) (*process, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{pid: cmd.Process.Pid, done: make(chan struct{}), pidfd: -1, child: cmd.Process}
	go func() {
		err := cmd.Wait()
		switch {
		case err == nil:
			p.reason = "qemu exited with status 0"
		default:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				p.reason = "qemu " + ee.ProcessState.String() // "exit status 1", "signal: killed"
			} else {
				p.reason = "qemu: " + err.Error()
			}
		}
		close(p.done)
	}()
	return p, nil
}

// adoptProcess watches a QEMU that an earlier agent started. It refuses a
// pid that is gone or that now belongs to another program (pid reuse):
// the process's command line must carry marker.
func adoptProcess(pid int, marker string) (*process, error) {
	if pid <= 1 {
		return nil, fmt.Errorf("adopt pid %d: not a qemu pid", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("adopt pid %d: %w", pid, err)
	}
	// Checked after the pidfd is open, so the pid cannot be reused
	// between the check and the watch.
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !bytes.Contains(cmdline, []byte("\x00"+marker+"\x00")) {
		unix.Close(fd)
		return nil, fmt.Errorf("adopt pid %d: not the sandbox's qemu (%q not on its command line)", pid, marker)
	}
	p := &process{pid: pid, done: make(chan struct{}), pidfd: fd, adopted: true}
	go func() {
		for {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(fds, -1); err != nil && errors.Is(err, unix.EINTR) {
				continue
			}
			break
		}
		p.mu.Lock()
		unix.Close(fd)
		p.pidfd = -1
		p.mu.Unlock()
		p.reason = "qemu exited (re-adopted process: its exit status went to its parent)"
		close(p.done)
	}()
	return p, nil
}

// signal sends sig to the process unless it is already gone.
func (p *process) signal(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.pidfd >= 0:
		_ = unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	case p.adopted:
		// gone: its pid may already belong to someone else
	case p.child != nil:
		_ = p.child.Signal(sig) // os.Process knows when it has been reaped
	}
}

// findByName returns the pids of the processes whose command line carries
// "-name marker" and whose working directory is dir: a sandbox's QEMU
// whose pid was never recorded (the agent died right after starting it).
func findByName(marker, dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	want := []byte("\x00-name\x00" + marker + "\x00")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(cmdline, want) {
			continue
		}
		if cwd, err := os.Readlink("/proc/" + e.Name() + "/cwd"); err != nil || cwd != dir {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// inCgroup reports whether /proc/PID/cgroup puts pid in path on the
// hierarchies the agent limits it with: on v1 the memory, cpu and pids
// lines; on v2 the unified "0::" line.
func inCgroup(pid int, path string, v2 bool) (bool, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false, err
	}
	checked := false
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		relevant := v2 && parts[0] == "0" && parts[1] == ""
		if !v2 {
			for _, c := range strings.Split(parts[1], ",") {
				relevant = relevant || c == "memory" || c == "cpu" || c == "pids"
			}
		}
		if !relevant {
			continue
		}
		if parts[2] != path {
			return false, nil
		}
		checked = true
	}
	return checked, nil
}
