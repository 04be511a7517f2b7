package daemon

import (
	"fmt"
	"log/slog"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nodeinfra/nodeinfra/pkg/logging"
)

// BindFlags defines the flags of `nodeagent serve` on fs, each setting a
// field of c and defaulting to its current value.
func (c *Config) BindFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Socket, "socket", c.Socket, "unix socket of the gRPC API (created with mode 0600)")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory of the agent's state")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", c.MetricsAddr, "address of the Prometheus /metrics endpoint (empty disables)")
	fs.StringVar(&c.ProbeAddr, "probe-addr", c.ProbeAddr, "address of the pod probe endpoint for the kubelet (empty disables)")
	fs.DurationVar(&c.ReconcileInterval, "reconcile-interval", c.ReconcileInterval, "how often ENI state is reconciled with the node's links")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	sb := &c.Sandbox
	fs.StringVar(&sb.Kernel, "guest-kernel", sb.Kernel, "guest kernel (vmlinux) of the sandboxes (default nodeagent-guest/vmlinux beside this binary)")
	fs.StringVar(&sb.Initrd, "guest-initrd", sb.Initrd, "guest initramfs with the guest agent (default nodeagent-guest/initramfs.cpio beside this binary)")
	fs.StringVar(&sb.QEMU, "qemu", sb.QEMU, "QEMU binary")
	fs.StringVar(&sb.KernelArgs, "guest-kernel-args", sb.KernelArgs, "appended to the guests' kernel command line (e.g. \"loglevel=7\" to debug a boot)")
	fs.StringVar(&sb.Accel, "accel", sb.Accel, "sandbox accelerator: auto (probe KVM, fall back to TCG), kvm or tcg")
	fs.StringVar(&sb.CgroupParent, "cgroup-parent", sb.CgroupParent, "cgroup holding one cgroup per sandbox (empty disables quotas)")
	fs.StringVar(&sb.CgroupRoot, "cgroup-root", sb.CgroupRoot, "where the cgroup file systems are mounted (the v2 hierarchy, or the folder of the v1 controllers)")
	fs.StringVar(&sb.FastStart, "fast-start", sb.FastStart, "how sandboxes start: off (a cold boot each), pool (a VM booted ahead from a warm pool per size class; nothing shared) or template (restored from a VM template per size class, sharing unwritten guest memory pages between tenants' sandboxes): README")
	fs.StringVar(&sb.FastStartClasses, "fast-start-classes", sb.FastStartClasses, "size classes (VCPUSxMIB, comma-separated) served by the warm pool or kept as templates; other sizes boot cold")
	fs.IntVar(&sb.FastStartPoolSize, "fast-start-pool-size", sb.FastStartPoolSize, "idle VMs the warm pool keeps per size class (--fast-start pool)")
	fs.Uint32Var(&sb.MemoryOverheadMiB, "memory-overhead", sb.MemoryOverheadMiB, "MiB added to a sandbox's guest memory for its default cgroup memory limit (QEMU's own memory)")
	fs.DurationVar(&sb.BootTimeout, "boot-timeout", sb.BootTimeout, "time a sandbox has from QEMU start to the guest agent's first answer")
	fs.StringVar(&sb.CephConf, "ceph-conf", sb.CephConf, "ceph.conf for RBD disks of sandboxes")
	fs.StringVar(&sb.CephUser, "ceph-user", sb.CephUser, "default cephx user for RBD disks that name none (without client.; none by default: give each tenant its own least-privilege user)")
	fs.StringVar(&sb.CephKeyring, "ceph-keyring", sb.CephKeyring, "keyring (or key file) with the keys of --ceph-user and of disks' users given without a key")
	fs.BoolVar(&sb.Confine, "qemu-confine", sb.Confine, "run each QEMU under seccomp, as its own unprivileged uid, chrooted into its sandbox dir")
	fs.StringVar(&sb.UIDs, "qemu-uids", sb.UIDs, "uids (and gids) FIRST-LAST for confined QEMUs, one per sandbox; nothing else on the node may use them")
}

// Command returns `nodeagent serve`. A configuration that Validate refuses
// is a usage error (its PreRunE fails); a daemon that stops on an error
// has logged why and fails with exit status 1.
func Command() *cobra.Command {
	cfg := DefaultConfig()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the node agent daemon",
		Long: `Run the node agent: keep the node's ENIs (inventory, pod assignments,
reconciliation with the node's links), run pod sandboxes (QEMU VMs), and
serve the gRPC API on a unix socket, Prometheus metrics and the kubelet's
pod probes over HTTP. Logs are JSON on stderr. SIGINT or SIGTERM stops the
agent; running sandboxes keep running for the next agent to adopt.`,
		Args:    cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error { return cfg.Validate() },
		RunE: func(cmd *cobra.Command, _ []string) error {
			level, _ := logging.ParseLevel(cfg.LogLevel) // Validate checked it
			log := logging.NewJSON(cmd.ErrOrStderr(), level)
			slog.SetDefault(log)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if err := Run(ctx, cfg, log); err != nil {
				log.Error("nodeagent stopped", "error", err)
				return exitStatus(1)
			}
			return nil
		},
	}
	cfg.BindFlags(cmd.Flags())
	return cmd
}

// exitStatus ends a command with a status once the log has said why:
// nodeagent/cli prints nothing more for an error with an ExitCode method.
type exitStatus int

func (s exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(s)) }
func (s exitStatus) ExitCode() int { return int(s) }
