package fabric

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What a sandbox leaves on the machine itself, outside the fabric's
// namespaces: its QEMU process and the agent's cgroups.

// A Process is a running process as /proc shows it.
type Process struct {
	Pid  int
	Args []string // its command line
}

// Processes lists the running processes with a command line (kernel
// threads have none).
func Processes() []Process {
	ents, _ := os.ReadDir("/proc")
	var out []Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue // gone, or a kernel thread
		}
		out = append(out, Process{Pid: pid, Args: strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")})
	}
	return out
}

// Cmdline is pid's command line, nil if it is gone.
func Cmdline(pid int) []string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
}

// Name is the base name of the program.
func (p Process) Name() string { return filepath.Base(p.Args[0]) }

// Flag is the argument after flag on the command line, or "".
func (p Process) Flag(flag string) string { return flagOf(p.Args, flag) }

// Mentions tells whether any argument contains s.
func (p Process) Mentions(s string) bool {
	return slices.ContainsFunc(p.Args, func(a string) bool { return strings.Contains(a, s) })
}

func flagOf(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// QEMUName is the -name on pid's command line, or "".
func QEMUName(pid int) string { return flagOf(Cmdline(pid), "-name") }

// QEMUPids lists the processes running with -name sandbox-<id> on their
// command line: the sandbox's QEMU, as `pgrep -f sandbox-<id>` finds it.
func QEMUPids(id string) []int {
	var pids []int
	for _, p := range Processes() {
		if p.Flag("-name") == "sandbox-"+id {
			pids = append(pids, p.Pid)
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
