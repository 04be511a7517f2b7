package mapper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
)

// Daemons starts the mapper daemons (rbd-fuse, rbd-nbd) in a cgroup of
// their own, outside the node plugin's container, as the node agent does
// for QEMU. With hostPID, a container runtime stopping the plugin kills
// every process left in the container's cgroup (runc finds them through
// the devices hierarchy on cgroup v1): a daemon still there would take its
// volumes with it on every plugin update or crash.
//
// The process moves before it runs the daemon: a shell writes its own PID
// into the group's cgroup.procs in every hierarchy and then execs the
// daemon, so whatever the daemon forks (rbd-fuse and rbd-nbd daemonize)
// starts in the group, and nothing it allocates is charged to the plugin.
// One group holds the daemons of every volume; it has no limits (a daemon
// killed for memory takes a volume with it).
type Daemons struct {
	// procs are the group's cgroup.procs files, one per hierarchy; none:
	// the daemons start in the plugin's own cgroup.
	procs []string
	dirs  []string
}

// Shell runs the few lines that move a process before it execs.
const Shell = "/bin/sh"

// NewDaemons creates (or finds) cgroup parent, an absolute cgroup path
// such as /csi-ceph-mappers, in every cgroup hierarchy mounted here (the
// unified one on cgroup v2; each controller's and the named ones on v1):
// callers never branch on the cgroup version. The hierarchies must be
// mounted whole (a container must mount the host's /sys/fs/cgroup), or the
// group would sit inside the container's own. parent "" starts the
// daemons in the caller's cgroup.
func NewDaemons(parent string) (*Daemons, error) {
	if parent == "" {
		return &Daemons{}, nil
	}
	if !path.IsAbs(parent) || path.Clean(parent) != parent || parent == "/" || strings.ContainsAny(parent, " \n\t") {
		return nil, fmt.Errorf("mapper cgroup %q: want a cgroup path such as /csi-ceph-mappers", parent)
	}
	all, err := mounts.List()
	if err != nil {
		return nil, err
	}
	hier, err := cgroupRoots(all)
	if err != nil {
		return nil, err
	}
	d := &Daemons{}
	for _, root := range hier {
		dir := filepath.Join(root, parent)
		if err := makeGroup(root, parent); err != nil {
			return nil, fmt.Errorf("create mapper cgroup %s: %w", dir, err)
		}
		d.dirs = append(d.dirs, dir)
		d.procs = append(d.procs, filepath.Join(dir, "cgroup.procs"))
	}
	return d, nil
}

// cgroupRoots returns the mount points of the cgroup hierarchies (the
// visible mount at each point), refusing one that shows only a part of
// its hierarchy.
func cgroupRoots(all []mounts.Mount) ([]string, error) {
	top := map[string]mounts.Mount{}
	var order []string
	for _, m := range all {
		if m.FsType != "cgroup" && m.FsType != "cgroup2" {
			continue
		}
		if _, ok := top[m.Point]; !ok {
			order = append(order, m.Point)
		}
		top[m.Point] = m // a later mount covers an earlier one
	}
	var out []string
	for _, p := range order {
		m := top[p]
		if m.Root != "/" {
			return nil, fmt.Errorf("the cgroup hierarchy at %s shows only %s of it: mount the host's /sys/fs/cgroup there", p, m.Root)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("no cgroup hierarchy is mounted")
	}
	return out, nil
}

// makeGroup creates root/parent level by level. A new cpuset group on v1
// has no CPUs and no memory nodes, and takes no process until they are
// set: it gets its parent's.
func makeGroup(root, parent string) error {
	dir := root
	for _, part := range strings.Split(strings.TrimPrefix(parent, "/"), "/") {
		up := dir
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			cur, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil || len(bytes.TrimSpace(cur)) > 0 {
				continue
			}
			v, err := os.ReadFile(filepath.Join(up, f))
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
				return fmt.Errorf("set %s: %w", f, err)
			}
		}
	}
	return nil
}

// Dirs are the group's directories, one per hierarchy.
func (d *Daemons) Dirs() []string { return d.dirs }

// command is name args, started in the group.
func (d *Daemons) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if d == nil || len(d.procs) == 0 {
		return newCmd(ctx, name, args...)
	}
	// sh -c SCRIPT argv0 PROCS... -- NAME ARGS...
	const script = `while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"`
	a := append([]string{"-c", script, "csi-ceph-daemon"}, d.procs...)
	a = append(a, "--", name)
	return newCmd(ctx, Shell, append(a, args...)...)
}

// newCmd is a command bound to ctx. A daemon that forks and keeps the
// output pipes open cannot hold its caller past WaitDelay.
func newCmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// run runs cmd and returns its stdout; the error, named what, carries
// stderr.
func run(ctx context.Context, what string, cmd *exec.Cmd) (string, error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return out.String(), fmt.Errorf("%s: %w: %s", what, err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}
