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

	"golang.org/x/sys/unix"
)

// FuseLoop maps with rbd-fuse, which shows the image as a file in a FUSE
// mount, and a loop device on that file. For hosts with neither krbd nor
// nbd; slower, but needs only /dev/fuse and loop devices.
type FuseLoop struct {
	Bin     string // "rbd-fuse"
	Losetup string // "losetup"
}

var _ Mapper = FuseLoop{}

// Name implements Mapper.
func (FuseLoop) Name() string { return Fuse }

// Map implements Mapper. work holds the config, the keyring (0600) and the
// FUSE mount for as long as the mapping lives.
func (f FuseLoop) Map(ctx context.Context, t Target, work string) (Mapping, error) {
	if err := t.Validate(); err != nil {
		return Mapping{}, err
	}
	m := Mapping{Mapper: Fuse, Dir: work}
	mnt := filepath.Join(work, "fuse")
	file := filepath.Join(mnt, t.Image)
	if isMountPoint(mnt) {
		if dev, ok := f.loopOf(ctx, file); ok {
			m.Device = dev // mapped already (a retried stage)
			return m, nil
		}
	}
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return m, fmt.Errorf("fuse map: %w", err)
	}
	conf := filepath.Join(work, "ceph.conf")
	keyring := filepath.Join(work, "keyring")
	if err := os.WriteFile(keyring, []byte(fmt.Sprintf("[client.%s]\n\tkey = %s\n", t.User, t.Key)), 0o600); err != nil {
		return m, fmt.Errorf("fuse map: write keyring: %w", err)
	}
	cfg := fmt.Sprintf("[global]\nmon host = %s\nkeyring = %s\nlog file = %s\n", strings.Join(t.Monitors, ","), keyring, filepath.Join(work, "rbd-fuse.log"))
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		return m, fmt.Errorf("fuse map: write config: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Unmap(context.Background(), m)
		}
	}()
	if !isMountPoint(mnt) {
		// rbd-fuse daemonizes once the FUSE mount is up.
		if _, err := run(ctx, f.Bin, "-c", conf, "--id", t.User, "-p", t.Pool, "-r", t.Image, mnt); err != nil {
			return m, fmt.Errorf("fuse map %s/%s: %w", t.Pool, t.Image, err)
		}
	}
	if _, err := os.Stat(file); err != nil {
		return m, fmt.Errorf("fuse map %s/%s: image not visible in the FUSE mount: %w", t.Pool, t.Image, err)
	}
	args := []string{"--find", "--show"}
	if t.ReadOnly {
		args = append(args, "--read-only")
	}
	out, err := run(ctx, f.Losetup, append(args, file)...)
	if err != nil {
		return m, fmt.Errorf("fuse map %s/%s: %w", t.Pool, t.Image, err)
	}
	m.Device = strings.TrimSpace(out)
	ok = true
	return m, nil
}

// loopOf returns the loop device backed by file, if any.
func (f FuseLoop) loopOf(ctx context.Context, file string) (string, bool) {
	out, err := run(ctx, f.Losetup, "--noheadings", "--output", "NAME", "--associated", file)
	if err != nil {
		return "", false
	}
	dev := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	return dev, dev != ""
}

// Unmap implements Mapper: detach the loop device, unmount FUSE (which
// ends rbd-fuse) and remove the directory with the keyring.
func (f FuseLoop) Unmap(ctx context.Context, m Mapping) error {
	if m.Device != "" {
		if _, err := run(ctx, f.Losetup, "--detach", m.Device); err != nil && !strings.Contains(err.Error(), "No such device") {
			return fmt.Errorf("fuse unmap: %w", err)
		}
	}
	if m.Dir == "" {
		return nil
	}
	mnt := filepath.Join(m.Dir, "fuse")
	var err error
	for i := 0; i < 50 && isMountPoint(mnt); i++ {
		// The loop device lets go of the file asynchronously: retry.
		if err = unix.Unmount(mnt, 0); err == nil || errors.Is(err, unix.EINVAL) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if isMountPoint(mnt) {
		return fmt.Errorf("fuse unmap: unmount %s: %v", mnt, err)
	}
	if err := os.RemoveAll(m.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("fuse unmap: %w", err)
	}
	return nil
}

// isMountPoint reports whether p is a mount point (its device differs from
// its parent's).
func isMountPoint(p string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(p, &st) != nil || unix.Stat(filepath.Dir(p), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
