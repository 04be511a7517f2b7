package fabric

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What a sandbox leaves on the machine itself, outside the fabric's
// namespaces: its QEMU process and the agent's cgroups.

// QEMUPids lists the processes running with -name sandbox-<id> on their
// command line: the sandbox's QEMU, as `pgrep -f sandbox-<id>` finds it.
func QEMUPids(id string) []int {
	want := []byte("\x00-name\x00sandbox-" + id + "\x00")
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, want) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// RemoveCgroup removes cgroup path (an agent's --cgroup-parent) from every
// hierarchy, v1 controllers and v2, with any cgroup left below it, and
// returns those: the agent removes its sandboxes' own cgroups, so a test
// reports them as leaked. The agent must have stopped and no QEMU run.
func RemoveCgroup(path string) (left []string, err error) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", path))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", path))
	var failed []string
	for _, dir := range dirs {
		if err := rmdirCgroup(dir, &left); err != nil {
			failed = append(failed, err.Error())
		}
	}
	if len(failed) > 0 {
		return left, fmt.Errorf("cgroup %s not removed: %s", path, strings.Join(failed, "; "))
	}
	return left, nil
}

// rmdirCgroup removes a cgroup directory after its child cgroups (added
// to children), retrying for a while as the kernel may still see a group
// busy with a task that just exited.
func rmdirCgroup(dir string, children *[]string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			sub := filepath.Join(dir, e.Name())
			*children = append(*children, sub)
			if err := rmdirCgroup(sub, children); err != nil {
				return err
			}
		}
	}
	for delay := 10 * time.Millisecond; ; delay *= 2 {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if (!errors.Is(err, syscall.EBUSY) && !errors.Is(err, syscall.EAGAIN)) || delay > time.Second {
			return &os.PathError{Op: "rmdir", Path: dir, Err: err}
		}
		time.Sleep(delay)
	}
}
