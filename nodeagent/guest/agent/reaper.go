//go:build linux

package main

import (
	"errors"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// errNotRunning means a process has already been reaped.
var errNotRunning = errors.New("process has exited")

// reaper owns every wait for child processes. As PID 1 the agent inherits
// orphans, so it reaps any child (wait4(-1)); the exit statuses of the
// processes it started go to whoever waits for them. Starting a process and
// signalling it happen under the same lock as reaping, so a PID is never
// reaped between fork and registration, nor reused under a signal.
type reaper struct {
	mu      sync.Mutex
	waiting map[int]chan syscall.WaitStatus
	once    sync.Once
}

func newReaper() *reaper { return &reaper{waiting: map[int]chan syscall.WaitStatus{}} }

// start begins reaping on SIGCHLD.
func (r *reaper) start() {
	r.once.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGCHLD)
		go func() {
			for range ch {
				r.reap()
			}
		}()
		r.reap() // children that ended before Notify
	})
}

func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ch, ok := r.waiting[pid]; ok {
			ch <- ws
			delete(r.waiting, pid)
		}
	}
}

// forkExec starts a process and returns its PID and the channel that gets
// its wait status.
func (r *reaper) forkExec(argv0 string, argv []string, attr *syscall.ProcAttr) (int, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(argv0, argv, attr)
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiting[pid] = ch
	return pid, ch, nil
}

// signal sends sig to pid's process group (pid leads a session of its
// own), or to pid alone if the group is gone, while pid is not reaped.
func (r *reaper) signal(pid int, sig syscall.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.waiting[pid]; !ok {
		return errNotRunning
	}
	err := syscall.Kill(-pid, sig)
	if err == syscall.ESRCH {
		err = syscall.Kill(pid, sig)
	}
	return err
}
