package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
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

// inCgroup reports whether /proc/PID/cgroup puts pid in path on every
// hierarchy the agent limits it with (v1: memory, cpu and pids; v2: the one
// unified line).
func inCgroup(pid int, path string) (bool, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false, err
	}
	found := false
	for _, line := range bytes.Split(b, []byte("\n")) {
		parts := bytes.SplitN(line, []byte(":"), 3)
		if len(parts) != 3 {
			continue
		}
		p := string(parts[2])
		if p == path {
			found = true
			continue
		}
		// A controller whose line is not the sandbox's: it matters when the
		// agent puts sandboxes there (memory, cpu, pids: any line that is
		// not the group means the process escaped or never joined).
		for _, c := range bytes.Split(parts[1], []byte(",")) {
			switch string(c) {
			case "memory", "cpu", "pids", "": // "" is the v2 line
				return false, nil
			}
		}
	}
	return found, nil
}
