package mapper

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Loop devices are read through sysfs and ioctls, never through
// `losetup -a` or `losetup --associated`: both stat every backing file,
// and one on a FUSE mount whose daemon died hangs them.

// loops reads what the loop devices under sysRoot are bound to: device
// path (under devRoot) to backing file, as the kernel prints it (it may
// end in " (deleted)").
func loops(sysRoot, devRoot string) (map[string]string, error) {
	dir := filepath.Join(sysRoot, "block")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "loop", "backing_file"))
		if err != nil {
			continue // not bound
		}
		out[filepath.Join(devRoot, e.Name())] = strings.TrimSuffix(string(b), "\n")
	}
	return out, nil
}

// loopBacking returns the backing file of loop device dev, if it is bound.
func loopBacking(sysRoot, dev string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(sysRoot, "block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return "", false
	}
	return strings.TrimSuffix(string(b), "\n"), true
}

// loopFileDev returns the device number of the file system that holds
// dev's backing file (LOOP_GET_STATUS64's lo_device): it tells which
// FUSE mount a loop device reads from without touching the mount.
func loopFileDev(dev string) (uint64, error) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return 0, fmt.Errorf("status of %s: %w", dev, err)
	}
	return info.Device, nil
}

// detachLoop unbinds loop device dev. A device in use (a mounted file
// system on it) is unbound by the kernel once its last user closes it;
// one that is bound to nothing is fine.
func detachLoop(dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s: %w", dev, err)
	}
	return nil
}
