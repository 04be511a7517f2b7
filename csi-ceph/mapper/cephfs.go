package mapper

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
)

// CephFS mounters, as the StorageClass parameter "mounter" of a CephFS
// volume names them.
const (
	CephFSKernel = "kernel"
	CephFSFuse   = "fuse"
)

// FSTarget is a CephFS directory (a subvolume) to mount.
type FSTarget struct {
	Monitors []string
	User     string
	Key      string
	FSName   string
	// Path is the directory from the root of the file system.
	Path string
	// Options are the mounter's mount options (kernelMountOptions or
	// fuseMountOptions), comma-separated options already split.
	Options []string
}

// FSMount is a mounted CephFS directory: what a staging record keeps to
// check, heal and unmount it without the stage secrets.
type FSMount struct {
	Mounter string   `json:"mounter"`
	Point   string   `json:"point"`
	Dir     string   `json:"dir"` // work dir: keyring, ceph.conf, log (fuse); secret (kernel)
	FSName  string   `json:"fsName"`
	Path    string   `json:"path"`
	User    string   `json:"user"`
	Options []string `json:"options,omitempty"`
	// Monitors are for the kernel client, which has no config file.
	Monitors []string `json:"monitors,omitempty"`
}

// CephFS mounts CephFS directories with the kernel client (mount -t
// ceph) or ceph-fuse. ceph-fuse runs as a daemon in Daemons' cgroup, so a
// plugin restart keeps it; its work dir keeps what it needs to start
// again (Heal) without the stage secrets, readable by root only:
//
//	keyring      the user's key
//	secret       the key alone (kernel client: secretfile=)
//	ceph.conf    monitors, keyring, log file, no admin socket
//	client.log   ceph-fuse's log
type CephFS struct {
	FuseBin  string // "ceph-fuse"
	MountBin string // "mount"
	// Filesystems is /proc/filesystems: the kernel client is there when
	// "ceph" is listed.
	Filesystems string
	DevRoot     string // "/dev"
	LookPath    func(string) (string, error)
	Daemons     *Daemons
	// ProbeTimeout bounds the statfs that tells a live mount from a dead
	// or hung one (0: mounts.DefaultProbeTimeout).
	ProbeTimeout time.Duration
}

const (
	fsSecretFile = "secret"
	fsLogFile    = "client.log"
)

// Available lists the mounters this host has, best first: the kernel
// client, then ceph-fuse.
func (c CephFS) Available() []string {
	var out []string
	if b, err := os.ReadFile(or(c.Filesystems, "/proc/filesystems")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == "ceph" {
				out = append(out, CephFSKernel)
				break
			}
		}
	}
	if _, err := c.LookPath(c.FuseBin); err == nil {
		if _, err := os.Stat(filepath.Join(or(c.DevRoot, "/dev"), "fuse")); err == nil {
			out = append(out, CephFSFuse)
		}
	}
	return out
}

// Choose picks the mounter: the requested one if the host has it, else
// the best one it has.
func (c CephFS) Choose(requested string) (string, error) {
	avail := c.Available()
	switch requested {
	case "", CephFSKernel, CephFSFuse:
	default:
		return "", fmt.Errorf("mounter %q: want %s or %s", requested, CephFSKernel, CephFSFuse)
	}
	for _, a := range avail {
		if requested == "" || a == requested {
			return a, nil
		}
	}
	if requested != "" {
		return "", fmt.Errorf("mounter %q is not available on this node (it has %v)", requested, avail)
	}
	return "", errors.New("this node has neither the CephFS kernel client nor ceph-fuse")
}

// Mount mounts t at point with mounter, its work dir at work. A mount
// already there that answers is kept (a retried stage).
func (c CephFS) Mount(ctx context.Context, t FSTarget, mounter, point, work string) (FSMount, error) {
	m := FSMount{Mounter: mounter, Point: point, Dir: work, FSName: t.FSName, Path: t.Path, User: t.User, Options: t.Options}
	if mounter == CephFSKernel {
		m.Monitors = t.Monitors
	}
	if c.Check(m) == nil {
		return m, nil
	}
	if err := mounts.Unmount(point); err != nil {
		return m, err
	}
	if err := os.MkdirAll(work, 0o700); err != nil {
		return m, fmt.Errorf("create work dir: %w", err)
	}
	keyring := filepath.Join(work, keyringFile)
	files := map[string][]byte{
		keyring:                           keyringFor(t.User, t.Key),
		filepath.Join(work, fsSecretFile): []byte(t.Key),
		filepath.Join(work, confFile): []byte(fmt.Sprintf("[global]\nmon host = %s\nkeyring = %s\nlog file = %s\nadmin socket =\n",
			strings.Join(t.Monitors, ","), keyring, filepath.Join(work, fsLogFile))),
	}
	for p, b := range files {
		if err := writePrivate(p, b); err != nil {
			return m, fmt.Errorf("write %s: %w", filepath.Base(p), err)
		}
	}
	if err := os.MkdirAll(point, 0o750); err != nil {
		return m, fmt.Errorf("create mount point: %w", err)
	}
	if err := c.start(ctx, m); err != nil {
		_ = c.Unmount(m)
		return m, err
	}
	return m, nil
}

// start mounts m from its work dir.
func (c CephFS) start(ctx context.Context, m FSMount) error {
	var cmd = c.Daemons.command(ctx, c.FuseBin, m.Point, "-c", filepath.Join(m.Dir, confFile), "--id", m.User,
		"-r", m.Path, "--client_fs="+m.FSName)
	if len(m.Options) > 0 {
		cmd.Args = append(cmd.Args, "-o", strings.Join(m.Options, ","))
	}
	what := c.FuseBin
	if m.Mounter == CephFSKernel {
		opts := append([]string{"name=" + m.User, "secretfile=" + filepath.Join(m.Dir, fsSecretFile), "mds_namespace=" + m.FSName}, m.Options...)
		cmd = newCmd(ctx, or(c.MountBin, "mount"), "-t", "ceph", strings.Join(m.Monitors, ",")+":"+m.Path, m.Point, "-o", strings.Join(opts, ","))
		what = "mount -t ceph"
	}
	if _, err := run(ctx, what, cmd); err != nil {
		return fmt.Errorf("mount %s:%s at %s: %w", m.FSName, m.Path, m.Point, err)
	}
	if err := c.Check(m); err != nil {
		return fmt.Errorf("mount %s:%s at %s: %w", m.FSName, m.Path, m.Point, err)
	}
	return nil
}

// Check tells whether m is mounted and answers: nil if so, an error
// wrapping ErrBroken if it is gone or does not answer (a ceph-fuse that
// died leaves a mount that answers ENOTCONN).
func (c CephFS) Check(m FSMount) error {
	mt, ok, err := mounts.At(m.Point)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%s is not mounted: %w", m.Point, ErrBroken)
	}
	if mt.FsType != "ceph" && mt.FsType != "fuse.ceph-fuse" && mt.FsType != "fuse" {
		return fmt.Errorf("%s is mounted from %s (%s), not CephFS: %w", m.Point, mt.Source, mt.FsType, ErrBroken)
	}
	if err := mounts.Probe(m.Point, c.ProbeTimeout); err != nil {
		if mounts.IsBroken(err) {
			return fmt.Errorf("%w: %w", err, ErrBroken)
		}
		return err
	}
	return nil
}

// Heal mounts m again from its work dir (a dead ceph-fuse's mount is
// detached first). Binds of the old mount keep failing until they are
// bound again.
func (c CephFS) Heal(ctx context.Context, m FSMount) error {
	if err := mounts.Unmount(m.Point); err != nil {
		return err
	}
	if err := os.MkdirAll(m.Point, 0o750); err != nil {
		return fmt.Errorf("create mount point: %w", err)
	}
	return c.start(ctx, m)
}

// Unmount unmounts m (lazily if busy) and removes its work dir. A mount
// that is gone is not an error.
func (c CephFS) Unmount(m FSMount) error {
	if err := mounts.Unmount(m.Point); err != nil {
		return err
	}
	if m.Mounter == CephFSFuse {
		c.waitFuseExit(m.Point)
	}
	if m.Dir == "" {
		return nil
	}
	for _, f := range []string{keyringFile, fsSecretFile, confFile, fsLogFile} {
		if err := os.Remove(filepath.Join(m.Dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", f, err)
		}
	}
	if err := os.Remove(m.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove work dir: %w", err)
	}
	return nil
}

// ParseFSMountOptions splits comma-separated mount options, refusing
// ones that could smuggle another argument or a path to the key.
func ParseFSMountOptions(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []string
	for _, o := range strings.Split(s, ",") {
		o = strings.TrimSpace(o)
		if o == "" || strings.HasPrefix(o, "-") || strings.ContainsAny(o, " \t\n'\"\\") {
			return nil, fmt.Errorf("mount options %q: bad option %q", s, o)
		}
		name, _, _ := strings.Cut(o, "=")
		switch name {
		case "name", "secret", "secretfile", "mds_namespace", "fs":
			return nil, fmt.Errorf("mount options %q: %s is set by the driver", s, name)
		}
		out = append(out, o)
	}
	return out, nil
}

// fuseDaemons are the PIDs of the ceph-fuse processes serving point (by
// their command line).
func (c CephFS) fuseDaemons(point string) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) < 2 || filepath.Base(args[0]) != filepath.Base(or(c.FuseBin, "ceph-fuse")) || args[1] != point {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// waitFuseExit waits a little for the ceph-fuse of a mount that was
// just unmounted to exit, so that an unstage returns with the daemon
// gone (it exits once the kernel tells it the mount went).
func (c CephFS) waitFuseExit(point string) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if len(c.fuseDaemons(point)) == 0 {
			return
		}
	}
}
