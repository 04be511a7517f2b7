package daemon

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/hostcheck"
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
// initramfs, QEMU and its firmware, /dev/net/tun (the items of
// `nodeagent check` that fail the same way there), and the cgroup
// controllers under --cgroup-root, by opening the cgroup manager. It does
// not boot the KVM probe: the sandbox manager runs it in the background.
func checkSandboxHost(sb SandboxConfig, kernel, initrd string) sandboxHost {
	var h sandboxHost
	node := hostcheck.Default()
	node.QEMU, node.Kernel, node.Initrd = sb.QEMU, kernel, initrd
	for _, it := range node.SandboxFiles() {
		if it.Status == hostcheck.Fail {
			h.problems = append(h.problems, it.Name+": "+it.Detail)
		}
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
		h.problems = append(h.problems, fmt.Sprintf("cgroups under %s: %v", sb.CgroupRoot, err))
		return h
	}
	h.cgroups = m
	return h
}
