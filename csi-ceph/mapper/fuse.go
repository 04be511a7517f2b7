package mapper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
)

// FuseLoop maps with rbd-fuse, which shows the image as a file in a FUSE
// mount, and a loop device on that file. For hosts with neither krbd nor
// nbd; slower, but needs only /dev/fuse and loop devices.
//
// A loop device is the image's when its backing file is the image's file
// in the mapping's work dir, or (seen from another mount namespace, where
// the kernel prints the path differently) a file of that name on the
// work dir's FUSE mount, by device number. It serves the image while
// that FUSE mount answers.
type FuseLoop struct {
	Bin     string // "rbd-fuse"
	Losetup string // "losetup"
	SysRoot string // "/sys" ("" too)
	DevRoot string // "/dev" ("" too)
	// Daemons starts rbd-fuse; nil: in the caller's cgroup.
	Daemons *Daemons
	// ProbeTimeout bounds the stat that tells a live FUSE mount from a
	// dead or hung one (0: mounts.DefaultProbeTimeout).
	ProbeTimeout time.Duration
}

var (
	_ Mapper = FuseLoop{}
	_ Healer = FuseLoop{}
)

// Name implements Mapper.
func (FuseLoop) Name() string { return Fuse }

func (f FuseLoop) sysRoot() string { return or(f.SysRoot, "/sys") }
func (f FuseLoop) devRoot() string { return or(f.DevRoot, "/dev") }

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Map implements Mapper. work holds the config, the keyring (0600) and the
// FUSE mount for as long as the mapping lives.
func (f FuseLoop) Map(ctx context.Context, t Target, work string) (Mapping, error) {
	if err := t.Validate(); err != nil {
		return Mapping{}, err
	}
	m := Mapping{Mapper: Fuse, Dir: work, Pool: t.Pool, PoolID: t.PoolID, Image: t.Image, ImageID: t.ImageID,
		User: t.User, ReadOnly: t.ReadOnly}
	if own := f.withOwnDevice(m); f.Check(ctx, own) == nil {
		return own, nil // mapped already (a retried stage)
	}
	// Whatever an earlier attempt left (a dead FUSE mount, its loop
	// devices) goes first.
	if err := f.release(m); err != nil {
		return m, fmt.Errorf("fuse map %s/%s: %w", t.Pool, t.Image, err)
	}
	if err := os.MkdirAll(filepath.Join(work, fuseDir), 0o700); err != nil {
		return m, fmt.Errorf("fuse map: %w", err)
	}
	keyring := filepath.Join(work, keyringFile)
	if err := writePrivate(keyring, keyringFor(t.User, t.Key)); err != nil {
		return m, fmt.Errorf("fuse map: write keyring: %w", err)
	}
	if err := writePrivate(filepath.Join(work, confFile), confFor(t.Monitors, keyring, filepath.Join(work, fuseLog))); err != nil {
		return m, fmt.Errorf("fuse map: write config: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Unmap(context.Background(), m)
		}
	}()
	dev, err := f.start(ctx, m)
	if err != nil {
		return m, fmt.Errorf("fuse map %s/%s: %w", t.Pool, t.Image, err)
	}
	m.Device = dev
	ok = true
	return m, nil
}

// withOwnDevice fills in m's device: the first loop device that is m's.
func (f FuseLoop) withOwnDevice(m Mapping) Mapping {
	if devs, err := f.owned(m); err == nil && len(devs) > 0 {
		m.Device = devs[0]
	}
	return m
}

// start starts rbd-fuse with the work dir's config (it daemonizes once the
// FUSE mount is up) and binds a loop device to the image's file.
func (f FuseLoop) start(ctx context.Context, m Mapping) (string, error) {
	mnt := filepath.Join(m.Dir, fuseDir)
	if _, err := run(ctx, f.Bin, f.Daemons.command(ctx, f.Bin, "-c", filepath.Join(m.Dir, confFile), "--id", m.User,
		"-p", m.Pool, "-r", m.Image, mnt)); err != nil {
		return "", err
	}
	file := filepath.Join(mnt, m.Image)
	if err := mounts.Probe(file, f.ProbeTimeout); err != nil {
		return "", fmt.Errorf("image not visible in the FUSE mount: %w", err)
	}
	args := []string{"--find", "--show"}
	if m.ReadOnly {
		args = append(args, "--read-only")
	}
	out, err := run(ctx, "losetup", newCmd(ctx, f.Losetup, append(args, file)...))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// fuseMount returns the FUSE mount in m's work dir, if there is one.
func fuseMount(m Mapping) (mounts.Mount, bool, error) {
	mt, ok, err := mounts.At(filepath.Join(m.Dir, fuseDir))
	if err != nil || !ok || !strings.HasPrefix(mt.FsType, "fuse") {
		return mounts.Mount{}, false, err
	}
	return mt, true, nil
}

// isOwn reports whether loop device dev, bound to backing, reads m's
// image file.
func isOwn(m Mapping, dev, backing string, fm mounts.Mount, mounted bool) bool {
	backing = strings.TrimSuffix(backing, " (deleted)")
	if m.Image == "" || m.Dir == "" || filepath.Base(backing) != m.Image {
		return false
	}
	if backing == filepath.Join(m.Dir, fuseDir, m.Image) {
		return true
	}
	if !mounted {
		return false
	}
	d, err := loopFileDev(dev)
	return err == nil && d == fm.Dev()
}

// owned lists the loop devices that read m's image file.
func (f FuseLoop) owned(m Mapping) ([]string, error) {
	all, err := loops(f.sysRoot(), f.devRoot())
	if err != nil {
		return nil, err
	}
	fm, mounted, err := fuseMount(m)
	if err != nil {
		return nil, err
	}
	var out []string
	for dev, backing := range all {
		if isOwn(m, dev, backing, fm, mounted) {
			out = append(out, dev)
		}
	}
	return out, nil
}

// Check implements Mapper.
func (f FuseLoop) Check(ctx context.Context, m Mapping) error {
	if m.Device == "" || m.Dir == "" || m.Image == "" {
		return fmt.Errorf("no device recorded: %w", ErrStale)
	}
	backing, bound := loopBacking(f.sysRoot(), m.Device)
	if !bound {
		return fmt.Errorf("%s is bound to nothing: %w", m.Device, ErrStale)
	}
	fm, mounted, err := fuseMount(m)
	if err != nil {
		return err
	}
	if !isOwn(m, m.Device, backing, fm, mounted) {
		return fmt.Errorf("%s reads %s, not the image %s: %w", m.Device, backing, m.Image, ErrStale)
	}
	if !mounted {
		return fmt.Errorf("the FUSE mount of %s is gone: %w", m.Image, ErrBroken)
	}
	if d, err := loopFileDev(m.Device); err != nil || d != fm.Dev() {
		return fmt.Errorf("%s reads from an earlier FUSE mount: %w", m.Device, ErrBroken)
	}
	if err := mounts.Probe(fm.Point, f.ProbeTimeout); err != nil {
		if mounts.IsBroken(err) {
			return fmt.Errorf("rbd-fuse of %s does not answer (%v): %w", m.Image, err, ErrBroken)
		}
		return err
	}
	return nil
}

// release detaches m's loop devices and unmounts its FUSE mount, keeping
// the work dir's files.
func (f FuseLoop) release(m Mapping) error {
	if m.Dir == "" {
		return nil
	}
	devs, err := f.owned(m)
	if err != nil {
		return err
	}
	// While rbd-fuse serves the image, a loop device that is still
	// mounted would only be unbound once unmounted, and its file system
	// lives on: mapping again would make it two. A dead rbd-fuse serves
	// nothing, so its loop devices go (a heal, an unstage).
	if fm, mounted, err := fuseMount(m); err == nil && mounted && mounts.Probe(fm.Point, f.ProbeTimeout) == nil {
		for _, d := range devs {
			if err := checkUnused(d); err != nil {
				return err
			}
		}
	}
	for _, d := range devs {
		if err := detachLoop(d); err != nil {
			return err
		}
	}
	mnt := filepath.Join(m.Dir, fuseDir)
	// The loop devices let go of the file asynchronously: a moment of
	// EBUSY is normal. Past it, mounts.Unmount detaches lazily.
	for i := 0; i < 20; i++ {
		if _, ok, err := mounts.At(mnt); err != nil || !ok {
			break
		}
		if err := unix.Unmount(mnt, 0); err == nil || !errors.Is(err, unix.EBUSY) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return mounts.Unmount(mnt)
}

// Unmap implements Mapper: detach the loop devices that read the image's
// file (m.Device only if it is one of them), unmount FUSE (which ends
// rbd-fuse) and remove the work dir with the keyring.
func (f FuseLoop) Unmap(ctx context.Context, m Mapping) error {
	if err := f.release(m); err != nil {
		return fmt.Errorf("fuse unmap: %w", err)
	}
	if err := removeWorkDir(m.Dir); err != nil {
		return fmt.Errorf("fuse unmap: %w", err)
	}
	return nil
}

// Heal implements Healer: rbd-fuse died, so its FUSE mount and every loop
// device on it are dead for good. Start rbd-fuse again from the work dir's
// config and bind a new loop device.
func (f FuseLoop) Heal(ctx context.Context, m Mapping) (Mapping, error) {
	if m.Dir == "" || m.Image == "" || m.Pool == "" {
		return m, fmt.Errorf("fuse heal: the mapping does not name its image and work dir: %w", ErrStale)
	}
	if m.User == "" {
		m.User = keyringUser(filepath.Join(m.Dir, keyringFile))
	}
	if _, err := os.Stat(filepath.Join(m.Dir, confFile)); err != nil || m.User == "" {
		return m, fmt.Errorf("fuse heal: no config in the work dir to start rbd-fuse with: %v", err)
	}
	if err := f.release(m); err != nil {
		return m, fmt.Errorf("fuse heal: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(m.Dir, fuseDir), 0o700); err != nil {
		return m, fmt.Errorf("fuse heal: %w", err)
	}
	dev, err := f.start(ctx, m)
	if err != nil {
		_ = f.release(m)
		return m, fmt.Errorf("fuse heal %s/%s: %w", m.Pool, m.Image, err)
	}
	m.Device = dev
	return m, nil
}

// keyringUser reads the user a keyring is for ("[client.NAME]").
func keyringUser(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if u, ok := strings.CutPrefix(line, "[client."); ok {
			return strings.TrimSuffix(u, "]")
		}
	}
	return ""
}
