package hostcheck

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// tcgFallback is what sandboxes run under when KVM does not work.
const tcgFallback = "TCG fallback (emulation, slower)"

// KVM checks that guests boot under KVM. /dev/kvm being there is not
// enough (nested and paravirtual hosts refuse guest MSRs): like the
// sandbox manager, it boots the guest kernel under KVM (ProbeKVM). Without
// KVM the agent runs sandboxes under TCG, so this item never fails.
func (h Host) KVM(ctx context.Context) Item {
	dev := filepath.Join(h.Dev, "kvm")
	fi, err := os.Stat(dev)
	if err != nil {
		return warn(KVMItem, "%s: no %s (%s)", tcgFallback, dev, errText(err))
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return warn(KVMItem, "%s: %s is not a character device", tcgFallback, dev)
	}
	qemu, err := h.LookPath(h.QEMU)
	if err != nil {
		return warn(KVMItem, "%s is there but not boot-probed (no QEMU): the agent probes it at start, with %s", dev, tcgFallback)
	}
	if fi, err := os.Stat(h.Kernel); err != nil || !fi.Mode().IsRegular() {
		return warn(KVMItem, "%s is there but not boot-probed (no guest kernel): the agent probes it at start, with %s", dev, tcgFallback)
	}
	if err := h.ProbeKVM(ctx, qemu, h.Kernel); err != nil {
		return warn(KVMItem, "%s: %s is there but a test guest did not boot under KVM: %v", tcgFallback, dev, err)
	}
	return ok(KVMItem, "a test guest booted under KVM")
}

// Tun checks /dev/net/tun, which every sandbox's NIC (a tap) is opened
// from.
func (h Host) Tun() Item {
	dev := filepath.Join(h.Dev, "net", "tun")
	fi, err := os.Stat(dev)
	if err != nil {
		return fail(TunItem, "%s: %s (load the tun module, or give the agent's container the device)", dev, errText(err))
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fail(TunItem, "%s is not a character device (load the tun module, or give the agent's container the device)", dev)
	}
	return ok(TunItem, "%s", dev)
}

// cgroupController is a controller the agent uses, and what it is for
// when the agent can do without it.
type cgroupController struct {
	name string
	// refused names the limits refused without the controller; "" when
	// the agent needs it.
	refused string
}

// The controllers nodeagent/cgroup needs (a manager fails without them)
// and those whose limits it refuses without them, per mode.
var (
	cgroupV1 = []cgroupController{{"cpu", ""}, {"cpuacct", ""}, {"memory", ""}, {"pids", ""},
		{"cpuset", "cpuset limits"}, {"blkio", "block IO limits"}}
	cgroupV2 = []cgroupController{{"cpu", ""}, {"memory", ""}, {"pids", ""},
		{"cpuset", "cpuset limits"}, {"io", "block IO limits"}}
)

// Cgroups checks the cgroup mode under CgroupRoot and its controllers:
// those sandboxes need fail when missing, those of optional limits warn.
// The mode is v2 where the root has cgroup.controllers (the unified
// hierarchy), else v1 (a hybrid host's v2 mount under unified/ is not
// used), as the daemon decides.
func (h Host) Cgroups() Item {
	if b, err := os.ReadFile(filepath.Join(h.CgroupRoot, "cgroup.controllers")); err == nil {
		have := strings.Fields(string(b))
		return cgroupItem("v2", h.CgroupRoot, cgroupV2, func(c string) bool { return slices.Contains(have, c) })
	}
	// A mounted v1 hierarchy has cgroup.procs at its root; the tmpfs
	// that holds the mounts does not.
	mounted := func(c string) bool {
		_, err := os.Stat(filepath.Join(h.CgroupRoot, c, "cgroup.procs"))
		return err == nil
	}
	if !slices.ContainsFunc(cgroupV1, func(c cgroupController) bool { return mounted(c.name) }) {
		return fail(CgroupsItem, "nothing at %s: neither the v2 hierarchy nor v1 controllers (sandboxes get no quotas; pass --cgroup-root)", h.CgroupRoot)
	}
	return cgroupItem("v1", h.CgroupRoot, cgroupV1, mounted)
}

func cgroupItem(mode, root string, want []cgroupController, has func(string) bool) Item {
	var have, needed, refused []string
	for _, c := range want {
		switch {
		case has(c.name):
			have = append(have, c.name)
		case c.refused == "":
			needed = append(needed, c.name)
		default:
			refused = append(refused, fmt.Sprintf("no %s: %s will be refused", c.name, c.refused))
		}
	}
	if len(needed) > 0 {
		return fail(CgroupsItem, "%s at %s lacks %s, which sandboxes need", mode, root, strings.Join(needed, ", "))
	}
	detail := mode + ": " + strings.Join(have, ", ")
	if len(refused) > 0 {
		return warn(CgroupsItem, "%s; %s", detail, strings.Join(refused, "; "))
	}
	return ok(CgroupsItem, "%s", detail)
}

// QEMUBinary checks that the QEMU binary is found.
func (h Host) QEMUBinary() Item {
	p, err := h.LookPath(h.QEMU)
	if err != nil {
		return fail(QEMUItem, "%s not found (install qemu-system-x86, or pass --qemu)", h.QEMU)
	}
	return ok(QEMUItem, "%s", p)
}

// QEMUFirmware checks the firmware every guest boots with.
func (h Host) QEMUFirmware() Item {
	if err := regularFile(h.Firmware); err != nil {
		return fail(FirmwareItem, "%s: %v (install qemu-system-x86)", h.Firmware, err)
	}
	return ok(FirmwareItem, "%s", h.Firmware)
}

// RBDDriver checks QEMU's rbd block driver, a module QEMU loads when a
// sandbox first gets an RBD disk. Sandboxes run without it, with local
// disks only.
func (h Host) RBDDriver() Item {
	for _, d := range h.QEMUModuleDirs {
		p := filepath.Join(d, "block-rbd.so")
		if regularFile(p) == nil {
			return ok(RBDDriverItem, "%s", p)
		}
	}
	return warn(RBDDriverItem, "RBD disks unavailable: no block-rbd.so in %s (install qemu-block-extra)", strings.Join(h.QEMUModuleDirs, ", "))
}

// GuestKernel checks the kernel the guests boot.
func (h Host) GuestKernel() Item { return guestFile(KernelItem, h.Kernel, "--guest-kernel") }

// GuestInitrd checks the initramfs with the guest agent.
func (h Host) GuestInitrd() Item { return guestFile(InitrdItem, h.Initrd, "--guest-initrd") }

func guestFile(name, p, flag string) Item {
	if err := regularFile(p); err != nil {
		return fail(name, "%s: %v (run make build, or pass %s)", p, err, flag)
	}
	return ok(name, "%s", p)
}

// regularFile returns why p is not a regular file, or nil.
func regularFile(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return errors.New(errText(err))
	}
	if !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	return nil
}
