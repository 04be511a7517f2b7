package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// killTimeout is how long Kill waits for a group to empty.
const killTimeout = 5 * time.Second

// procsUnder adds to pids the process IDs in the cgroup.procs of dir and of
// every cgroup under it. found is false when dir does not exist; a
// subgroup removed meanwhile is skipped.
func procsUnder(dir string, pids []int) (_ []int, found bool, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != dir {
				return nil
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENODEV) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				return fmt.Errorf("parse %s: %w", filepath.Join(p, "cgroup.procs"), err)
			}
			pids = append(pids, pid)
		}
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return pids, false, nil
	}
	return pids, err == nil, err
}

// processes lists, sorted and once each, the processes in the cgroup
// directories dirs and under them. It wraps errdefs.ErrNotFound when none
// of dirs exists.
func processes(dirs []string) ([]int, error) {
	var pids []int
	found := false
	for _, d := range dirs {
		var ok bool
		var err error
		if pids, ok, err = procsUnder(d, pids); err != nil {
			return nil, err
		}
		found = found || ok
	}
	if !found {
		return nil, fmt.Errorf("the cgroup is gone: %w", errdefs.ErrNotFound)
	}
	slices.Sort(pids)
	return slices.Compact(pids), nil
}

// killAll sends SIGKILL to the processes list finds until it finds none,
// for killTimeout at most (a process in uninterruptible sleep dies when it
// wakes). A group that is gone is empty.
func killAll(list func() ([]int, error)) error {
	deadline := time.Now().Add(killTimeout)
	delay := 5 * time.Millisecond
	for {
		pids, err := list()
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if slices.Contains(pids, os.Getpid()) {
			return fmt.Errorf("the agent itself (pid %d) is in the group: %w", os.Getpid(), errdefs.ErrFailedPrecondition)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d processes remain after SIGKILL for %v (%v): %w", len(pids), killTimeout, pids, errdefs.ErrFailedPrecondition)
		}
		for _, p := range pids {
			// ESRCH: it died meanwhile.
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// removeDir removes an empty cgroup directory, retrying while the kernel
// still sees it busy (a task that just exited).
func removeDir(d string) error {
	var err error
	for delay := 10 * time.Millisecond; delay < time.Second; delay *= 2 {
		err = syscall.Rmdir(d)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EAGAIN) {
			break
		}
		time.Sleep(delay)
	}
	return &fs.PathError{Op: "rmdir", Path: d, Err: err}
}

// inode identifies a cgroup directory: a group deleted and made again
// under the same name has another.
func inode(dir string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, classify(&fs.PathError{Op: "stat", Path: dir, Err: err})
	}
	return st.Ino, nil
}

// gone reports whether the cgroup directory dir of inode ino was removed.
func gone(dir string, ino uint64) bool {
	n, err := inode(dir)
	return errors.Is(err, errdefs.ErrNotFound) || err == nil && n != ino
}

// DeleteSettled deletes g, retrying for up to two seconds while the
// kernel still counts a process that was just killed or just exited in
// it (Delete's FailedPrecondition).
func DeleteSettled(g Group) error {
	var err error
	for i := 0; i < 100; i++ {
		if err = g.Delete(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}
