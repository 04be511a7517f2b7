// Package hostcheck tells whether a node is ready for sandboxes, ENIs and
// Ceph volumes, one item at a time: KVM, /dev/net/tun, the cgroup
// controllers, QEMU with its firmware and rbd driver, the guest kernel and
// initramfs, the kernel's RBD mappers (krbd, nbd, fuse) and the netns
// directory. Each item is ok, warn (the node works, with a fallback the
// detail names) or fail (sandboxes or volumes cannot run).
//
// The checks read files under the paths of a Host, so tests point them at
// fake trees; the one that runs something, the KVM boot probe, is a
// function of the Host too. `nodeagent check` prints them all, and the
// daemon's start-up check uses the items a sandbox cannot start without,
// so that both say the same. It knows nothing of gRPC.
package hostcheck

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
)

// Status is an item's verdict.
type Status int

const (
	// OK: the item is there and works.
	OK Status = iota
	// Warn: the node works without it, with the fallback the detail names.
	Warn
	// Fail: sandboxes or volumes cannot run until it is fixed.
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Warn:
		return "warn"
	case Fail:
		return "fail"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// MarshalText writes the status as String does, for JSON.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads what MarshalText writes.
func (s *Status) UnmarshalText(b []byte) error {
	for _, v := range []Status{OK, Warn, Fail} {
		if string(b) == v.String() {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("status %q: want ok, warn or fail", b)
}

// Item is one thing checked: its name (stable, for scripts), its verdict
// and a short detail for people.
type Item struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
}

// Item names.
const (
	KVMItem       = "kvm"
	TunItem       = "tun"
	CgroupsItem   = "cgroups"
	QEMUItem      = "qemu"
	FirmwareItem  = "qemu-firmware"
	RBDDriverItem = "qemu-rbd"
	KernelItem    = "guest-kernel"
	InitrdItem    = "guest-initrd"
	KRBDItem      = "krbd"
	NBDItem       = "nbd"
	FuseItem      = "fuse"
	NetnsItem     = "netns"
)

// Failed reports whether any item failed.
func Failed(items []Item) bool {
	for _, it := range items {
		if it.Status == Fail {
			return true
		}
	}
	return false
}

// Host is where the checks look. Default describes the real node.
type Host struct {
	Dev        string // "/dev"
	Sys        string // "/sys"
	CgroupRoot string // where the cgroup file systems are mounted
	NetnsDir   string // "/run/netns"
	// Modules is the running kernel's module directory
	// (/lib/modules/RELEASE), where a module that is not loaded may be
	// found; "" when unknown.
	Modules string
	// QEMU is the QEMU binary, a name looked up in $PATH or a path.
	QEMU string
	// Firmware is the -bios every sandbox boots with.
	Firmware string
	// QEMUModuleDirs are where QEMU's block-rbd.so may be, in the order
	// the sandbox manager looks.
	QEMUModuleDirs []string
	// Kernel and Initrd boot the guests.
	Kernel, Initrd string
	// LookPath finds the QEMU binary (exec.LookPath).
	LookPath func(string) (string, error)
	// ProbeKVM tells whether a guest boots under KVM (qemu.ProbeKVM).
	ProbeKVM func(ctx context.Context, qemuBinary, kernel string) error
}

// Firmware is the firmware nodeagent/qemu gives every guest (-bios).
const Firmware = "/usr/share/qemu/qboot.rom"

// QEMUModuleDirs are where distributions install QEMU's modules: Debian
// and Ubuntu, Fedora and RHEL, Arch.
var QEMUModuleDirs = []string{"/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib64/qemu", "/usr/lib/qemu"}

// Default returns the real node's paths, QEMU and the guest files the
// daemon boots by default (GuestDir), and the real KVM probe.
func Default() Host {
	var modules string
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		modules = filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	}
	dir := GuestDir()
	return Host{
		Dev: "/dev", Sys: "/sys", CgroupRoot: "/sys/fs/cgroup", NetnsDir: "/run/netns", Modules: modules,
		QEMU: "qemu-system-x86_64", Firmware: Firmware, QEMUModuleDirs: QEMUModuleDirs,
		Kernel: filepath.Join(dir, "vmlinux"), Initrd: filepath.Join(dir, "initramfs.cpio"),
		LookPath: exec.LookPath, ProbeKVM: qemu.ProbeKVM,
	}
}

// GuestDir is where `make build` puts the guest kernel and initramfs:
// nodeagent-guest/ beside the running binary.
func GuestDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "/usr/local/lib/nodeagent-guest"
	}
	return filepath.Join(filepath.Dir(exe), "nodeagent-guest")
}

// Check checks every item, in the order `nodeagent check` prints them.
// Only the KVM probe blocks (a few seconds at most).
func (h Host) Check(ctx context.Context) []Item {
	krbd, nbd := h.KRBD(), h.NBD()
	return []Item{
		h.KVM(ctx),
		h.Tun(),
		h.Cgroups(),
		h.QEMUBinary(),
		h.QEMUFirmware(),
		h.RBDDriver(),
		h.GuestKernel(),
		h.GuestInitrd(),
		krbd,
		nbd,
		h.Fuse(krbd.Status == OK || nbd.Status == OK),
		h.Netns(),
	}
}

// SandboxFiles are the items a sandbox cannot start without, apart from
// cgroups (which the daemon checks by opening its cgroup manager): the
// guest kernel and initramfs, QEMU and its firmware, /dev/net/tun. None
// blocks.
func (h Host) SandboxFiles() []Item {
	return []Item{h.GuestKernel(), h.GuestInitrd(), h.QEMUBinary(), h.QEMUFirmware(), h.Tun()}
}

func ok(name, format string, args ...any) Item {
	return Item{Name: name, Status: OK, Detail: fmt.Sprintf(format, args...)}
}

func warn(name, format string, args ...any) Item {
	return Item{Name: name, Status: Warn, Detail: fmt.Sprintf(format, args...)}
}

func fail(name, format string, args ...any) Item {
	return Item{Name: name, Status: Fail, Detail: fmt.Sprintf(format, args...)}
}

// errText is err without the path an *os.PathError repeats.
func errText(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}
