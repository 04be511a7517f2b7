package driver

import (
	"fmt"
	"io"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// mkfsOptions are what a new filesystem gets before the device: the
// StorageClass's mkfsOptions when it has them (they replace these, as in
// ceph-csi), else what suits a thin RBD image: no discard of the fresh
// (already empty) image, lazy initialisation, and for ext4 4 KiB blocks
// whatever the size, so that small volumes can later grow online far
// beyond one group descriptor block (mke2fs's "small" profile uses 1 KiB
// blocks, and then the kernel refuses such online growth).
func mkfsOptions(fsType string, custom []string) []string {
	if len(custom) > 0 {
		return custom
	}
	switch fsType {
	case "ext4":
		return []string{"-b", "4096", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"}
	case "xfs":
		return []string{"-K"}
	}
	return nil
}

// mountOptions are the options a staging mount gets: the capability's
// mount flags, "ro" for a read-only volume, and "nouuid" for xfs.
//
// xfs refuses to mount a filesystem whose UUID a mounted one has, and a
// clone or a snapshot restore has its source's UUID: without nouuid it
// cannot be staged on a node where its source is staged. nouuid (as
// ceph-csi does) rather than a fresh UUID written at first stage: it
// needs no write to the volume (a read-only restore mounts too), works
// for a clone whose log is dirty (xfs_admin -U refuses those until the
// log is replayed), and also lets a healed staging mount come up while
// the broken instance of the same filesystem lingers until its pods let
// go. What the UUID check guards against, one filesystem mounted twice
// read-write, the staging record and the per-volume lock already prevent.
// ext4 has no such check.
func mountOptions(fsType string, flags []string, ro bool) []string {
	opts := append([]string{}, flags...)
	if ro {
		opts = append(opts, "ro")
	}
	if fsType == "xfs" && !slices.Contains(opts, "nouuid") {
		opts = append(opts, "nouuid")
	}
	return opts
}

// formatAndMount mounts dev at target, making the filesystem first when
// the device is blank. A blank device (a new thin image reads as zeros) is
// recognised by reading its first 64 KiB, where every ext4 and xfs
// superblock lives, instead of running blkid; it is formatted and mounted
// directly. Anything else goes through mount-utils, which identifies the
// filesystem, checks it (fsck) and mounts it.
func (n *node) formatAndMount(dev, target, fsType string, opts []string, ro bool, mkfs []string) error {
	blank, err := isBlank(dev)
	if err != nil {
		return err
	}
	if !blank || ro {
		return n.mounter.FormatAndMountSensitiveWithFormatOptions(dev, target, fsType, opts, nil, mkfsOptions(fsType, mkfs))
	}
	args := mkfsOptions(fsType, mkfs)
	switch {
	case fsType == "xfs":
		args = append(args, "-f", dev)
	case len(mkfs) > 0:
		args = append(args, "-F", dev)
	default:
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
