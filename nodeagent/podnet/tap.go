package podnet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// VnetHdr says that the tap files OpenTap returns carry a virtio-net header
// before each frame: QEMU must be told vnet_hdr=on. The header lets the
// guest and the host hand each other checksum and segmentation offloads.
const VnetHdr = true

// tapFlags are the tap's TUNSETIFF flags: an Ethernet tap, no packet
// information prefix, a virtio-net header, one queue.
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// isTap reports whether l is a single-queue tap, the kind Setup makes.
func isTap(l netlink.Link) bool {
	t, ok := l.(*netlink.Tuntap)
	return ok && t.Mode == netlink.TUNTAP_MODE_TAP && t.Flags&netlink.TUNTAP_MULTI_QUEUE == 0
}

// ensureTap makes name a persistent tap with mtu that is up, in the current
// namespace, creating it unless it is there.
func ensureTap(name string, mtu int) (netlink.Link, error) {
	l, err := netlinksafe.LinkByName(name)
	switch {
	case err == nil:
		if !isTap(l) {
			return nil, fmt.Errorf("link %s exists and is not a single-queue tap: %w", name, errdefs.ErrAlreadyExists)
		}
	case isLinkNotFound(err):
		// The ioctl path: netlink cannot make a tap. No fd stays open, so the
		// tap's carrier is off until OpenTap attaches one.
		t := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR}
		if err := netlink.LinkAdd(t); err != nil {
			return nil, fmt.Errorf("create tap %s: %w", name, err)
		}
		if l, err = netlinksafe.LinkByName(name); err != nil {
			return nil, fmt.Errorf("find new tap %s: %w", name, err)
		}
	default:
		return nil, fmt.Errorf("find %s: %w", name, err)
	}
	// No IPv6 link-local address either: the host side of the tap stays
	// silent towards the guest.
	if err := disableIPv6(name); err != nil {
		return nil, err
	}
	if l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("set MTU of %s to %d: %w", name, mtu, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return l, nil
}

// disableIPv6 turns IPv6 off on the link name of the current namespace,
// when the kernel has IPv6.
func disableIPv6(name string) error {
	p := filepath.Join("/proc/sys/net/ipv6/conf", name, "disable_ipv6")
	err := os.WriteFile(p, []byte("1"), 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("disable IPv6 on %s: %w", name, err)
	}
	return nil
}

// deleteTap deletes the tap name from the current namespace, if it is
// there. A link of that name that is no tap of ours is left alone.
func deleteTap(name string) error {
	l, err := netlinksafe.LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if !isTap(l) {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

// OpenTap attaches a new file to the tap tapName that Setup made in the
// namespace at netnsPath and returns it, non-blocking, close-on-exec. Each
// read and write is one frame behind a virtio-net header (see VnetHdr); the
// file is meant for QEMU's -netdev tap,fd=N. Only one file can be attached
// at a time: while one is open (say, a running VM's), the error wraps
// errdefs.ErrFailedPrecondition. A missing tap wraps errdefs.ErrNotFound.
func OpenTap(netnsPath, tapName string) (*os.File, error) {
	if err := validIfname(tapName); err != nil {
		return nil, fmt.Errorf("open tap: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var f *os.File
	err := inNetNS(netnsPath, func() error {
		// TUNSETIFF makes a new tap when the name is free: look first.
		l, err := netlinksafe.LinkByName(tapName)
		if isLinkNotFound(err) {
			return fmt.Errorf("tap %s: %w", tapName, errdefs.ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("find tap %s: %w", tapName, err)
		}
		if !isTap(l) {
			return fmt.Errorf("link %s is not a single-queue tap: %w", tapName, errdefs.ErrFailedPrecondition)
		}
		// The file's network namespace is the opener's: open it in here.
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		if err := attachTap(fd, tapName); err != nil {
			unix.Close(fd)
			return err
		}
		// Non-blocking before os.NewFile, so that Go's poller takes it and
		// deadlines work; QEMU sets the mode it wants on its copy anyway.
		if err := unix.SetNonblock(fd, true); err != nil {
			unix.Close(fd)
			return fmt.Errorf("set tap %s file non-blocking: %w", tapName, err)
		}
		f = os.NewFile(uintptr(fd), "tap:"+tapName)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open tap %s in %s: %w", tapName, netnsPath, err)
	}
	return f, nil
}

// attachTap attaches fd, an open /dev/net/tun, to the persistent tap name.
func attachTap(fd int, name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("tap name %q: %w", name, err)
	}
	ifr.SetUint16(tapFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("attach to %s: another file is attached (a running VM?): %w", name, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("attach to %s: %w", name, err)
	}
	got, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, got); err != nil {
		return fmt.Errorf("read flags of %s: %w", name, err)
	}
	flags := got.Uint16()
	if flags&unix.IFF_PERSIST == 0 {
		// The tap went away between the look and the attach, and the
		// kernel made a new one that closing fd removes.
		return fmt.Errorf("tap %s: %w", name, errdefs.ErrNotFound)
	}
	if flags&tapFlags != tapFlags {
		return fmt.Errorf("tap %s has flags %#x, want %#x", name, flags, tapFlags)
	}
	return nil
}
