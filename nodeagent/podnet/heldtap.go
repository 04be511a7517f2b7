package podnet

import (
	"fmt"
	"os"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// A held tap is the network card's tap of a VM booted before its pod
// exists (the agent's warm pool): made in the agent's own namespace, kept
// down there (frames its VM sends are dropped, and nothing on the node
// can reach the VM through it), and moved into the pod's namespace when
// the VM becomes the pod's sandbox, where Resume plugs it.

// NewHeldTap makes tap name, down, in the agent's namespace and opens it
// for QEMU.
func NewHeldTap(name string) (*os.File, error) {
	if err := validIfname(name); err != nil {
		return nil, fmt.Errorf("held tap: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	l, err := ensureTap(name, 1500)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetDown(l); err != nil {
		_ = deleteTap(name)
		return nil, fmt.Errorf("set held tap %s down: %w", name, err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = deleteTap(name)
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	if err := attachTap(fd, name); err != nil {
		unix.Close(fd)
		_ = deleteTap(name)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "tap-"+name), nil
}

// DeleteHeldTap deletes held tap name from the agent's namespace; a tap
// that is gone (moved to its pod, or deleted) is no error.
func DeleteHeldTap(name string) error { return deleteTap(name) }

// MoveTap moves held tap name into the pod's namespace at netnsPath and
// names it cfg.Tap there, down: Resume then plugs it as it plugs a tap it
// made. The pod's namespace must not have a link named cfg.Tap.
func MoveTap(name, netnsPath string, cfg Config) error {
	if err := validIfname(name); err != nil {
		return fmt.Errorf("move tap: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find held tap %s: %w", name, err)
	}
	if !isTap(l) {
		return fmt.Errorf("link %s is not a single-queue tap: %w", name, errdefs.ErrFailedPrecondition)
	}
	target, err := ns.GetNS(netnsPath)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", netnsPath, err)
	}
	defer target.Close()
	if err := netlink.LinkSetNsFd(l, int(target.Fd())); err != nil {
		return fmt.Errorf("move tap %s into %s: %w", name, netnsPath, err)
	}
	return inNetNS(netnsPath, func() error {
		l, err := netlinksafe.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find moved tap %s: %w", name, err)
		}
		if name == cfg.Tap {
			return nil
		}
		if err := netlink.LinkSetName(l, cfg.Tap); err != nil {
			_ = netlink.LinkDel(l)
			return fmt.Errorf("rename moved tap %s to %s: %w", name, cfg.Tap, err)
		}
		return nil
	})
}
