// Package daemon is `nodeagent serve`: the agent's configuration, its
// flags, its listeners (the API's unix socket, the metrics and probe HTTP
// endpoints) and the wiring of the ENI inventory, the sandbox manager and
// their gRPC adapters.
package daemon

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"

	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/nodeagent/vmtemplate"

	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
)

// Config is the daemon's configuration.
type Config struct {
	Socket            string
	StateDir          string
	MetricsAddr       string
	ProbeAddr         string
	ReconcileInterval time.Duration
	LogLevel          string
	Sandbox           SandboxConfig
}

// SandboxConfig configures the pod sandboxes (QEMU VMs).
type SandboxConfig struct {
	// Kernel and Initrd boot the guests; defaults are the files `make
	// build` puts in nodeagent-guest/ beside the agent's binary. When the
	// defaults are absent the sandbox API answers FailedPrecondition.
	Kernel, Initrd string
	QEMU           string
	Accel          string // auto, kvm or tcg
	KernelArgs     string // appended to the guest kernel command line
	// CgroupParent is the cgroup (under each v1 controller, or under the
	// v2 root) that holds one cgroup per sandbox; "" disables quotas.
	CgroupParent string
	// CgroupRoot is where the cgroup file systems are mounted (the v2
	// hierarchy, or the folder of the v1 controllers).
	CgroupRoot  string
	BootTimeout time.Duration
	// MemoryOverheadMiB is added to a sandbox's guest memory for its
	// default cgroup memory limit: QEMU's own memory and, under TCG, its
	// translation cache (README: measured).
	MemoryOverheadMiB uint32
	CephConf          string
	CephUser          string
	CephKeyring       string
	// Confine runs each QEMU under seccomp, as its own uid from UIDs
	// ("FIRST-LAST"), chrooted into its sandbox dir.
	Confine bool
	UIDs    string
	// FastStart is "off" (cold boots) or "template" (sandboxes of
	// FastStartClasses start from a VM template; see README).
	FastStart         string
	FastStartClasses  string // "VCPUSxMIB,..."
	FastStartPoolSize int    // idle VMs per class with "pool"
}

// uidRange parses UIDs.
func (sb SandboxConfig) uidRange() (first, count int, err error) {
	a, b, ok := strings.Cut(sb.UIDs, "-")
	f, err1 := strconv.Atoi(a)
	l, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || f < 1 || l < f || l > 1<<31-2 {
		return 0, 0, fmt.Errorf("--qemu-uids %q: want FIRST-LAST, positive, below 2^31", sb.UIDs)
	}
	return f, l - f + 1, nil
}

// DefaultConfig returns the configuration that `nodeagent serve` runs with
// when no flag is given.
func DefaultConfig() Config {
	return Config{
		Socket:            agentclient.DefaultSocket,
		StateDir:          "/var/lib/nodeagent",
		MetricsAddr:       "127.0.0.1:9842",
		ProbeAddr:         "127.0.0.1:9807",
		ReconcileInterval: 30 * time.Second,
		LogLevel:          "info",
		Sandbox: SandboxConfig{
			QEMU:              "qemu-system-x86_64",
			Accel:             "auto",
			CgroupParent:      "/nodeagent",
			CgroupRoot:        cgroup.DefaultMountpoint,
			BootTimeout:       60 * time.Second,
			MemoryOverheadMiB: 256,
			Confine:           true,
			FastStart:         sandbox.FastStartOff,
			FastStartClasses:  "1x128",
			FastStartPoolSize: 2,
			UIDs:              fmt.Sprintf("%d-%d", sandbox.DefaultUIDFirst, sandbox.DefaultUIDFirst+sandbox.DefaultUIDCount-1),
		},
	}
}

// Validate checks the configuration. Its errors name the flags.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.Socket) {
		return fmt.Errorf("--socket %q must be an absolute path", c.Socket)
	}
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("--state-dir %q must be an absolute path", c.StateDir)
	}
	for name, a := range map[string]string{"--metrics-addr": c.MetricsAddr, "--probe-addr": c.ProbeAddr} {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("%s %q: want HOST:PORT (empty disables): %v", name, a, err)
		}
	}
	if c.ReconcileInterval < time.Second {
		return fmt.Errorf("--reconcile-interval %v: at least 1s", c.ReconcileInterval)
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		return err
	}
	sb := c.Sandbox
	switch sb.Accel {
	case "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("--accel %q: want auto, kvm or tcg", sb.Accel)
	}
	for name, p := range map[string]string{"--guest-kernel": sb.Kernel, "--guest-initrd": sb.Initrd,
		"--ceph-conf": sb.CephConf, "--ceph-keyring": sb.CephKeyring} {
		if p != "" && !filepath.IsAbs(p) {
			return fmt.Errorf("%s %q must be an absolute path", name, p)
		}
	}
	if sb.CgroupParent != "" && (strings.Contains(sb.CgroupParent, "..") || !strings.HasPrefix(sb.CgroupParent, "/") || sb.CgroupParent == "/") {
		return fmt.Errorf("--cgroup-parent %q: want a cgroup path such as /nodeagent", sb.CgroupParent)
	}
	if _, _, err := sb.uidRange(); err != nil {
		return err
	}
	if sb.MemoryOverheadMiB < 16 || sb.MemoryOverheadMiB > 65536 {
		return fmt.Errorf("--memory-overhead %d: want 16-65536 MiB", sb.MemoryOverheadMiB)
	}
	switch sb.FastStart {
	case sandbox.FastStartOff, sandbox.FastStartTemplate, sandbox.FastStartPool:
	default:
		return fmt.Errorf("--fast-start %q: want off, pool or template", sb.FastStart)
	}
	if sb.FastStartPoolSize < 1 || sb.FastStartPoolSize > 64 {
		return fmt.Errorf("--fast-start-pool-size %d: want 1-64", sb.FastStartPoolSize)
	}
	if classes, err := vmtemplate.ParseClasses(sb.FastStartClasses); err != nil {
		return fmt.Errorf("--fast-start-classes: %w", err)
	} else if sb.FastStart != sandbox.FastStartOff && len(classes) == 0 {
		return fmt.Errorf("--fast-start %s needs --fast-start-classes", sb.FastStart)
	}
	if sb.BootTimeout < time.Second {
		return fmt.Errorf("--boot-timeout %v: at least 1s", sb.BootTimeout)
	}
	return nil
}

// guestDir is where `make build` puts the guest kernel and initramfs,
// beside the agent's binary.
func guestDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "/usr/local/lib/nodeagent-guest"
	}
	return filepath.Join(filepath.Dir(exe), "nodeagent-guest")
}
