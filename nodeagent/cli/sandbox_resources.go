package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

func (a *app) sandboxUpdateCmd() *cobra.Command {
	req := &apiv1.UpdateSandboxResourcesRequest{}
	var res *resourceFlags
	var qos *qosFlags
	cmd := &cobra.Command{
		Use:   "update ID",
		Short: "Change a running sandbox's cgroup limits and disk QoS live",
		Long: `Change the cgroup limits of the sandbox ID, and the throttles of its disks
inside QEMU, without a restart. Only the limits given change; all change
or none does.`,
		Example: "  nodeagent sandbox update web-1 --cpus 0.5 --memory 768Mi --disk-qos disk0:read-bps=20Mi,write-iops=500",
		Args:    positional("ID"),
	}
	cmd.PreRunE = a.preRun(func(args []string) error {
		req.Id = args[0]
		var err error
		if req.Resources, err = res.build(); err != nil {
			return err
		}
		if req.DiskQos, err = qos.build(""); err != nil {
			return err
		}
		if req.Resources == nil && len(req.DiskQos) == 0 {
			return fmt.Errorf("nothing to change: give a limit (--cpus, --memory, ...) or --disk-qos")
		}
		return nil
	})
	out := addOutput(cmd)
	res = addResourceFlags(cmd.Flags(), "memory")
	qos = addQoSFlags(cmd.Flags(), false)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			sb, err := cl.UpdateSandboxResources(ctx, req)
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), sb, sandboxTable(sb))
		})
	}
	return cmd
}

func (a *app) sandboxStatsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats ID",
		Short: "Show what the kernel and QEMU account for a running sandbox",
		Long: `Show the CPU, memory, pids and IO the kernel accounts for the sandbox's
cgroup, with its limits, and QEMU's IO per disk (by disk ID).`,
		Args:    positional("ID"),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			st, err := cl.GetSandboxStats(ctx, &apiv1.GetSandboxStatsRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), st, func(w io.Writer) error { return printStats(w, st) })
		})
	}
	return cmd
}
