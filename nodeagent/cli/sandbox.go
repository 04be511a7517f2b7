package cli

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

func (a *app) sandboxCmd() *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "sandbox",
		Short: "Run pod sandboxes: QEMU VMs with a guest agent",
		Long: `A sandbox is a QEMU VM that boots the guest kernel and initramfs with the
guest agent, in a pod's network namespace, with block devices or RBD images
as disks. Its ID is lower-case letters, digits and '-'; the agent checks
the IDs, sizes and disks it is given and answers InvalidArgument.`,
	}, "verb")
	cmd.AddCommand(a.sandboxCreateCmd(), a.sandboxListCmd(), a.sandboxGetCmd(), a.sandboxStopCmd(), a.sandboxDeleteCmd(),
		a.sandboxExecCmd(), a.sandboxAttachCmd(), a.sandboxDetachCmd(), a.sandboxEventsCmd(), a.sandboxLogsCmd(),
		a.sandboxUpdateCmd(), a.sandboxStatsCmd())
	return cmd
}

// interruptible replaces call's deadline, which suits quick requests, by
// SIGINT and SIGTERM: for calls that last as long as a boot, a process or
// a watch.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.WithoutCancel(ctx), os.Interrupt, syscall.SIGTERM)
}

func (a *app) sandboxCreateCmd() *cobra.Command {
	spec := &apiv1.SandboxSpec{}
	var disks []string
	var ceph *cephFlags
	var res *resourceFlags
	var qos *qosFlags
	var wait bool
	cmd := &cobra.Command{
		Use:   "create ID",
		Short: "Create and boot a sandbox",
		Long: `Create the sandbox ID and boot it. Without --wait the command returns once
QEMU is started; the sandbox becomes Ready or Failed later (see get or
events).`,
		Example: "  nodeagent sandbox create web-1 --vcpus 2 --memory 512 --netns /var/run/netns/web-1 --disk rbd:rbd/vol-1 --wait",
		Args:    positional("ID"),
	}
	cmd.PreRunE = a.preRun(func(args []string) error {
		spec.Id = args[0]
		for _, s := range disks {
			d, err := parseDisk(s)
			if err != nil {
				return err
			}
			spec.Disks = append(spec.Disks, d)
		}
		var err error
		if spec.Resources, err = res.build(); err != nil {
			return err
		}
		byDisk, err := qos.build("")
		if err != nil {
			return err
		}
		for id, q := range byDisk {
			found := false
			for i, d := range spec.Disks {
				if name := fmt.Sprintf("disk%d", i); name == id { // the agent's default IDs
					d.Id, d.Qos, found = name, q, true
				}
			}
			if !found {
				return fmt.Errorf("--disk-qos: no disk %q (the disks are disk0, disk1, ... in --disk order)", id)
			}
		}
		return ceph.apply(spec.Disks...)
	})
	out := addOutput(cmd)
	f := cmd.Flags()
	f.Uint32Var(&spec.Vcpus, "vcpus", 0, "virtual CPUs (0: the agent's default)")
	f.Uint32Var(&spec.MemoryMib, "memory", 0, "guest memory in MiB (0: the agent's default)")
	f.StringVar(&spec.Netns, "netns", "", "absolute path of the pod's network namespace (none: no network)")
	f.StringArrayVar(&disks, "disk", nil, "disk attached at boot: PATH or rbd:POOL/IMAGE (repeatable; IDs disk0, disk1, ...)")
	ceph = addCephFlags(f)
	f.StringVar(&spec.CgroupParent, "cgroup-parent", "", "cgroup to put the sandbox's cgroup under, e.g. the pod's (default: the agent's)")
	res = addResourceFlags(f, "memory-limit")
	qos = addQoSFlags(f, false)
	f.BoolVar(&wait, "wait", false, "return once the sandbox is Ready or Failed")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			if wait {
				var stop context.CancelFunc
				ctx, stop = interruptible(ctx)
				defer stop()
			}
			sb, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: spec, Wait: wait})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), sb, sandboxTable(sb))
		})
	}
	return cmd
}

func (a *app) sandboxListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List the sandboxes",
		Args:    positional(),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			resp, err := cl.ListSandboxes(ctx, &apiv1.ListSandboxesRequest{})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), resp, func(w io.Writer) error {
				return printSandboxes(w, resp.GetSandboxes(), time.Now())
			})
		})
	}
	return cmd
}

func (a *app) sandboxGetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "get ID",
		Short:   "Show a sandbox and its disks",
		Args:    positional("ID"),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			sb, err := cl.GetSandbox(ctx, &apiv1.GetSandboxRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), sb, sandboxTable(sb))
		})
	}
	return cmd
}

func (a *app) sandboxStopCmd() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop ID",
		Short: "Stop a sandbox: shut the guest down, then kill QEMU after --timeout",
		Args:  positional("ID"),
	}
	cmd.PreRunE = a.preRun(func([]string) error {
		if timeout < 0 || timeout.Seconds() > math.MaxUint32 {
			return fmt.Errorf("--timeout %v out of range", timeout)
		}
		return nil
	})
	out := addOutput(cmd)
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "time the guest gets to shut down before QEMU is killed (0: the agent's default)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			ctx, stop := interruptible(ctx) // the stop takes as long as it takes
			defer stop()
			sb, err := cl.StopSandbox(ctx, &apiv1.StopSandboxRequest{Id: args[0], TimeoutSeconds: uint32(math.Ceil(timeout.Seconds()))})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), sb, sandboxTable(sb))
		})
	}
	return cmd
}

func (a *app) sandboxDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "delete ID",
		Short:   "Delete a sandbox, stopping it first",
		Args:    positional("ID"),
		PreRunE: a.checkSocket,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
				ctx, stop := interruptible(ctx) // a delete stops the sandbox first
				defer stop()
				_, err := cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{Id: args[0]})
				return err
			})
		},
	}
}

func (a *app) sandboxAttachCmd() *cobra.Command {
	var disk *apiv1.Disk
	var source, id string
	var readOnly bool
	cmd := &cobra.Command{
		Use:   "attach ID --disk PATH|rbd:POOL/IMAGE",
		Short: "Hot-plug a disk into a running sandbox",
		Long: `Hot-plug a disk into the sandbox ID. Attaching a disk that is attached
already, with the same mode, is a no-op.`,
		Args: positional("ID"),
	}
	var ceph *cephFlags
	var qos *qosFlags
	cmd.PreRunE = a.preRun(func([]string) error {
		var err error
		if disk, err = parseDisk(source); err != nil {
			return err
		}
		disk.Id, disk.ReadOnly = id, readOnly
		byDisk, err := qos.build("-")
		if err != nil {
			return err
		}
		for k, q := range byDisk {
			if k != "-" && k != id {
				return fmt.Errorf("--disk-qos: give the throttles without a disk ID, or with this disk's (--id)")
			}
			disk.Qos = q
		}
		return ceph.apply(disk)
	})
	out := addOutput(cmd)
	cmd.Flags().StringVar(&source, "disk", "", "the disk: PATH or rbd:POOL/IMAGE")
	cmd.Flags().StringVar(&id, "id", "", "the disk's ID in the sandbox (default: the ID it has if attached, else the first free disk<N>)")
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "attach the disk read-only")
	ceph = addCephFlags(cmd.Flags())
	qos = addQoSFlags(cmd.Flags(), true)
	_ = cmd.MarkFlagRequired("disk")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			if disk.GetId() == "" {
				sb, err := cl.GetSandbox(ctx, &apiv1.GetSandboxRequest{Id: args[0]})
				if err != nil {
					return err
				}
				disk.Id = diskIDFor(sb.GetDisks(), disk)
			}
			sb, err := cl.AttachDisk(ctx, &apiv1.AttachDiskRequest{SandboxId: args[0], Disk: disk})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), sb, sandboxTable(sb))
		})
	}
	return cmd
}

func (a *app) sandboxDetachCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "detach ID DISKID",
		Short:   "Hot-unplug a disk from a running sandbox",
		Args:    positional("ID", "DISKID"),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			sb, err := cl.DetachDisk(ctx, &apiv1.DetachDiskRequest{SandboxId: args[0], DiskId: args[1]})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), sb, sandboxTable(sb))
		})
	}
	return cmd
}

func (a *app) sandboxEventsCmd() *cobra.Command {
	var current bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Watch sandbox events until interrupted",
		Long: `Watch sandbox events (state changes, disks attached and detached,
deletions) until interrupted. With -o json each event is one line of JSON;
with -o yaml each is a YAML document.`,
		Args:    positional(),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.Flags().BoolVar(&current, "current", false, "start with one State event per existing sandbox")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		w := cmd.OutOrStdout()
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			ctx, stop := interruptible(ctx)
			defer stop()
			stream, err := cl.WatchEvents(ctx, &apiv1.WatchEventsRequest{IncludeCurrent: current})
			if err != nil {
				return err
			}
			if *out == "table" {
				fmt.Fprintf(w, eventFormat, "TIME", "EVENT", "SANDBOX", "STATE", "DETAIL")
			}
			for {
				e, err := stream.Recv()
				if err != nil {
					if ctx.Err() != nil {
						return nil // interrupted: the normal end of a watch
					}
					return err
				}
				if err := printEvent(w, e, *out); err != nil {
					return err
				}
			}
		})
	}
	return cmd
}

// parseDisk parses a --disk value: PATH, or rbd:POOL/IMAGE. The disk has
// no ID yet. Whether the path is absolute and the names are valid is the
// agent's to say.
func parseDisk(s string) (*apiv1.Disk, error) {
	if rest, ok := strings.CutPrefix(s, "rbd:"); ok {
		pool, image, ok := strings.Cut(rest, "/")
		if !ok || pool == "" || image == "" {
			return nil, fmt.Errorf("--disk %q: want rbd:POOL/IMAGE", s)
		}
		return &apiv1.Disk{Source: &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: pool, Image: image}}}, nil
	}
	if s == "" {
		return nil, fmt.Errorf("--disk is empty: want PATH or rbd:POOL/IMAGE")
	}
	return &apiv1.Disk{Source: &apiv1.Disk_Path{Path: s}}, nil
}

// diskSource renders a disk's source as --disk takes it.
func diskSource(d *apiv1.Disk) string {
	if r := d.GetRbd(); r != nil {
		return "rbd:" + r.GetPool() + "/" + r.GetImage()
	}
	return d.GetPath()
}

// sameDisk reports whether a and b are the same attachment but for their
// IDs: the same source, the same mode.
func sameDisk(a, b *apiv1.Disk) bool {
	ar, br := a.GetRbd(), b.GetRbd()
	return (ar == nil) == (br == nil) && ar.GetPool() == br.GetPool() && ar.GetImage() == br.GetImage() &&
		a.GetPath() == b.GetPath() && a.GetReadOnly() == b.GetReadOnly()
}

// diskIDFor picks the ID of a disk to attach: the ID of the same disk if it
// is attached already (so that attaching twice is harmless), else the
// first disk<N> not in use.
func diskIDFor(attached []*apiv1.Disk, d *apiv1.Disk) string {
	used := map[string]bool{}
	for _, a := range attached {
		if sameDisk(a, d) {
			return a.GetId()
		}
		used[a.GetId()] = true
	}
	for i := 0; ; i++ {
		if id := fmt.Sprintf("disk%d", i); !used[id] {
			return id
		}
	}
}

// cephFlags name the cephx user an RBD disk is opened as.
type cephFlags struct{ user, keyFile string }

func addCephFlags(f *pflag.FlagSet) *cephFlags {
	c := &cephFlags{}
	f.StringVar(&c.user, "ceph-user", "", "cephx user (without client.) for the RBD disks given here (default: the agent's --ceph-user)")
	f.StringVar(&c.keyFile, "ceph-key-file", "", "file holding --ceph-user's base64 key (as `ceph auth get-key` prints it), sent to the agent")
	return c
}

// apply sets the user and key on the RBD disks.
func (c *cephFlags) apply(disks ...*apiv1.Disk) error {
	if c.keyFile != "" && c.user == "" {
		return fmt.Errorf("--ceph-key-file needs --ceph-user")
	}
	key := ""
	if c.keyFile != "" {
		b, err := os.ReadFile(c.keyFile)
		if err != nil {
			return fmt.Errorf("--ceph-key-file: %w", err)
		}
		key = strings.TrimSpace(string(b))
	}
	for _, d := range disks {
		if r := d.GetRbd(); r != nil {
			r.User, r.Key = c.user, key
		}
	}
	return nil
}
