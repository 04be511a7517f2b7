package driver

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// mkfsOptions are what a new filesystem on a thin RBD image gets: no
// discard of the fresh (already empty) image, lazy initialisation, and for
// ext4 4 KiB blocks whatever the size, so that small volumes can later grow
// online far beyond one group descriptor block (mke2fs's "small" profile
// uses 1 KiB blocks, and then the kernel refuses such online growth).
func mkfsOptions(fsType string) []string {
	switch fsType {
	case "ext4":
		return []string{"-b", "4096", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"}
	case "xfs":
		return []string{"-K"}
	}
	return nil
}

// formatAndMount mounts dev at target, making the filesystem first when
// the device is blank. A blank device (a new thin image reads as zeros) is
// recognised by reading its first 64 KiB, where every ext4 and xfs
// superblock lives, instead of running blkid; it is formatted and mounted
// directly. Anything else goes through mount-utils, which identifies the
// filesystem, checks it (fsck) and mounts it.
func (n *node) formatAndMount(dev, target, fsType string, opts []string, ro bool) error {
	blank, err := isBlank(dev)
	if err != nil {
		return err
	}
	if !blank || ro {
		return n.mounter.FormatAndMountSensitiveWithFormatOptions(dev, target, fsType, opts, nil, mkfsOptions(fsType))
	}
	args := mkfsOptions(fsType)
	if fsType == "xfs" {
		args = append(args, "-f", dev)
	} else {
		args = append(args, "-F", "-m0", dev)
	}
	if out, err := n.mounter.Exec.Command("mkfs."+fsType, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.%s %s: %w: %s", fsType, dev, err, out)
	}
	if len(opts) > 0 {
		return n.mounter.Mount(dev, target, fsType, opts)
	}
	if err := unix.Mount(dev, target, fsType, 0, ""); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	return nil
}

func isBlank(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF {
		return false, fmt.Errorf("read %s: %w", dev, err)
	}
	for _, b := range buf[:n] {
		if b != 0 {
			return false, nil
		}
	}
	return true, nil
}
