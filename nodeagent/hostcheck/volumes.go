package hostcheck

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// The kernel's ways to map an RBD image to a block device, best first, as
// csi-ceph's mapper chooses: krbd, rbd-nbd (the nbd module), rbd-fuse
// (/dev/fuse and loop devices). Any one is enough for volumes.

// KRBD checks the kernel's rbd module. It looks for the file csi-ceph's
// mapper looks for before it uses krbd: a module that could be loaded but
// is not does not count (nothing loads it for csi-ceph).
func (h Host) KRBD() Item {
	if _, err := os.Stat(filepath.Join(h.Sys, "bus", "rbd", "add_single_major")); err == nil {
		return ok(KRBDItem, "rbd module loaded")
	}
	if h.loadable("rbd") {
		return warn(KRBDItem, "rbd module not loaded (modprobe rbd): until it is, csi-ceph falls back to rbd-nbd or rbd-fuse")
	}
	return warn(KRBDItem, "no rbd module (not loaded%s): csi-ceph falls back to rbd-nbd or rbd-fuse", h.notIn())
}

// NBD checks the kernel's nbd module, which rbd-nbd maps images with.
func (h Host) NBD() Item {
	_, errMod := os.Stat(filepath.Join(h.Sys, "module", "nbd"))
	_, errDev := os.Stat(filepath.Join(h.Dev, "nbd0"))
	if errMod == nil || errDev == nil {
		return ok(NBDItem, "nbd module loaded")
	}
	if h.loadable("nbd") {
		return warn(NBDItem, "nbd module not loaded (modprobe nbd): until it is, csi-ceph cannot use rbd-nbd")
	}
	return warn(NBDItem, "no nbd module (not loaded%s): csi-ceph cannot use rbd-nbd", h.notIn())
}

// Fuse checks /dev/fuse and the loop devices that rbd-fuse maps images
// with (ceph-fuse needs only /dev/fuse). Without them volumes still work
// through a kernel mapper (krbd or nbd loaded: kernelMapper); with neither,
// csi-ceph has no way to map an image, and the item fails.
func (h Host) Fuse(kernelMapper bool) Item {
	severity, noMapper := warn, ""
	if !kernelMapper {
		severity, noMapper = fail, ", and neither krbd nor nbd is loaded: csi-ceph cannot map RBD volumes"
	}
	dev := filepath.Join(h.Dev, "fuse")
	if err := openCharDevice(dev); err != nil {
		return severity(FuseItem, "%s unusable (%v): no rbd-fuse or ceph-fuse%s", dev, err, noMapper)
	}
	loop := filepath.Join(h.Dev, "loop-control")
	if _, err := os.Stat(loop); err != nil {
		return severity(FuseItem, "%s usable but no %s: rbd-fuse needs loop devices (ceph-fuse works)%s", dev, loop, noMapper)
	}
	return ok(FuseItem, "%s usable, loop devices present: rbd-fuse and ceph-fuse can map", dev)
}

// Netns checks the directory where the runtime names pods' network
// namespaces, which the agent moves ENIs into.
func (h Host) Netns() Item {
	fi, err := os.Stat(h.NetnsDir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return warn(NetnsItem, "%s missing: the runtime makes it with the first pod (in a container, mount the host's with HostToContainer propagation)", h.NetnsDir)
	case err != nil:
		return warn(NetnsItem, "%s: %s", h.NetnsDir, errText(err))
	case !fi.IsDir():
		return warn(NetnsItem, "%s is not a directory", h.NetnsDir)
	}
	return ok(NetnsItem, "%s", h.NetnsDir)
}

// openCharDevice opens and closes dev, which must be a character device.
func openCharDevice(dev string) error {
	fi, err := os.Stat(dev)
	if err != nil {
		return errors.New(errText(err))
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return errors.New("not a character device")
	}
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// loadable reports whether modules.dep of the running kernel lists
// module: modprobe would load it.
func (h Host) loadable(module string) bool {
	if h.Modules == "" {
		return false
	}
	f, err := os.Open(filepath.Join(h.Modules, "modules.dep"))
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		// "kernel/drivers/block/rbd.ko.xz: kernel/net/ceph/libceph.ko.xz ..."
		file, _, _ := strings.Cut(s.Text(), ":")
		name := filepath.Base(file)
		for _, ext := range []string{".gz", ".xz", ".zst"} {
			name = strings.TrimSuffix(name, ext)
		}
		if name == module+".ko" {
			return true
		}
	}
	return false
}

// notIn says where a module was looked for, for a detail.
func (h Host) notIn() string {
	if h.Modules == "" {
		return ""
	}
	return ", none in " + h.Modules
}
