package daemon

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
)

// sandboxHost is what the node offers sandboxes: the cgroup manager (nil
// without --cgroup-parent) and what is missing. A node that lacks
// something still runs the agent for ENIs and probes; only sandbox calls
// fail, naming what is missing.
type sandboxHost struct {
	cgroups  *cgroup.Manager
	problems []string
}

// checkSandboxHost checks the node for sandboxes: the guest kernel and
// initramfs, QEMU and its firmware, /dev/net/tun, and the cgroup
// controllers under --cgroup-root.
func checkSandboxHost(sb SandboxConfig, kernel, initrd string) sandboxHost {
	var h sandboxHost
	miss := func(format string, args ...any) { h.problems = append(h.problems, fmt.Sprintf(format, args...)) }
	for what, p := range map[string]string{"guest kernel": kernel, "guest initramfs": initrd} {
		if _, err := os.Stat(p); err != nil {
			miss("%s %s: %v (run make build, or pass --guest-kernel and --guest-initrd)", what, p, errText(err))
		}
	}
	if _, err := exec.LookPath(sb.QEMU); err != nil {
		miss("qemu %q: not found (install qemu-system-x86)", sb.QEMU)
	}
	if _, err := os.Stat(qbootROM); err != nil {
		miss("QEMU firmware %s: %v (install qemu-system-x86)", qbootROM, errText(err))
	}
	if fi, err := os.Stat("/dev/net/tun"); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		miss("/dev/net/tun: not a character device (the tun module, or the device in the agent's container)")
	}
	if sb.CgroupParent == "" {
		return h
	}
	mode := cgroup.V1
	if _, err := os.Stat(filepath.Join(sb.CgroupRoot, "cgroup.controllers")); err == nil {
		mode = cgroup.V2
	}
	m, err := cgroup.NewManager(mode, sb.CgroupParent, cgroup.WithMountpoint(sb.CgroupRoot))
	if err != nil {
		miss("cgroups under %s: %v", sb.CgroupRoot, err)
		return h
	}
	h.cgroups = m
	return h
}

// qbootROM is the firmware sandboxes boot with (nodeagent/qemu).
const qbootROM = "/usr/share/qemu/qboot.rom"

func errText(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}
