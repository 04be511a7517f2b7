package cli

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

func (a *app) groupCmd() *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "group",
		Short: "Hold host processes to cgroup limits (process groups)",
		Long: `A group is a cgroup under the agent's parent that holds plain host processes
(a database instance, say) to CPU, memory, pids and IO limits. Groups
survive an agent restart; deleting one that still holds processes needs
--force, which kills them.`,
	}, "verb")
	cmd.AddCommand(a.groupCreateCmd(), a.groupAddCmd(), a.groupUpdateCmd(), a.groupStatsCmd(), a.groupListCmd(), a.groupDeleteCmd())
	return cmd
}

func (a *app) groupCreateCmd() *cobra.Command {
	req := &apiv1.CreateGroupRequest{}
	var res *resourceFlags
	cmd := &cobra.Command{
		Use:     "create NAME",
		Short:   "Create a group with limits",
		Example: "  nodeagent group create mysql-1 --cpus 2 --memory 4Gi --pids 2048",
		Args:    positional("NAME"),
	}
	cmd.PreRunE = a.preRun(func(args []string) error {
		req.Name = args[0]
		var err error
		req.Resources, err = res.build()
		return err
	})
	out := addOutput(cmd)
	res = addResourceFlags(cmd.Flags(), "memory")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			g, err := cl.CreateGroup(ctx, req)
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), g, groupsTable(g))
		})
	}
	return cmd
}

func (a *app) groupAddCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "add NAME PID",
		Short: "Move a host process (all its threads) into a group",
		Args:  positional("NAME", "PID"),
	}
	var pid int32
	cmd.PreRunE = a.preRun(func(args []string) error {
		n, err := strconv.ParseInt(args[1], 10, 32)
		if err != nil || n <= 0 {
			return fmt.Errorf("PID %q: want a positive process ID", args[1])
		}
		pid = int32(n)
		return nil
	})
	out := addOutput(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			g, err := cl.AddProcess(ctx, &apiv1.AddProcessRequest{Name: args[0], Pid: pid})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), g, groupsTable(g))
		})
	}
	return cmd
}

func (a *app) groupUpdateCmd() *cobra.Command {
	req := &apiv1.UpdateGroupRequest{}
	var res *resourceFlags
	cmd := &cobra.Command{
		Use:     "update NAME",
		Short:   "Change a group's limits live (all or none)",
		Example: "  nodeagent group update mysql-1 --cpus 1.5",
		Args:    positional("NAME"),
	}
	cmd.PreRunE = a.preRun(func(args []string) error {
		req.Name = args[0]
		var err error
		if req.Resources, err = res.build(); err != nil {
			return err
		}
		if req.Resources == nil {
			return fmt.Errorf("nothing to change: give a limit (--cpus, --memory, ...)")
		}
		return nil
	})
	out := addOutput(cmd)
	res = addResourceFlags(cmd.Flags(), "memory")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			g, err := cl.UpdateGroup(ctx, req)
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), g, groupsTable(g))
		})
	}
	return cmd
}

func (a *app) groupStatsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "stats NAME",
		Short:   "Show what the kernel accounts for a group",
		Args:    positional("NAME"),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			st, err := cl.GetGroupStats(ctx, &apiv1.GetGroupStatsRequest{Name: args[0]})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), st, func(w io.Writer) error { return printStats(w, st) })
		})
	}
	return cmd
}

func (a *app) groupListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List the groups",
		Args:    positional(),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			resp, err := cl.ListGroups(ctx, &apiv1.ListGroupsRequest{})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), resp, groupsTable(resp.GetGroups()...))
		})
	}
	return cmd
}

func (a *app) groupDeleteCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Short:   "Delete a group (--force kills the processes it still holds)",
		Args:    positional("NAME"),
		PreRunE: a.checkSocket,
	}
	cmd.Flags().BoolVar(&force, "force", false, "kill the processes still in the group")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			if _, err := cl.DeleteGroup(ctx, &apiv1.DeleteGroupRequest{Name: args[0], Force: force}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "group %s deleted\n", args[0])
			return nil
		})
	}
	return cmd
}

// groupsTable prints groups one per row.
func groupsTable(gs ...*apiv1.Group) func(io.Writer) error {
	return func(w io.Writer) error {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tCPUS\tMEMORY\tPIDS LIMIT\tPROCESSES\tCGROUP\tAGE")
		for _, g := range gs {
			r := g.GetResources()
			if r == nil {
				r = &apiv1.Resources{}
			}
			cpus, mem, pids := "-", "-", "-"
			if r.Cpus != nil {
				cpus = strconv.FormatFloat(r.GetCpus(), 'f', -1, 64)
			}
			if r.MemoryBytes != nil {
				mem = mib(uint64(r.GetMemoryBytes()))
			}
			if r.Pids != nil {
				pids = strconv.FormatInt(r.GetPids(), 10)
			}
			procs := make([]string, 0, len(g.GetPids()))
			for _, p := range g.GetPids() {
				procs = append(procs, strconv.Itoa(int(p)))
			}
			age := "-"
			if g.GetCreatedAt() != nil {
				age = shortDuration(time.Since(g.GetCreatedAt().AsTime()))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.GetName(), cpus, mem, pids, orDash(strings.Join(procs, ",")), g.GetCgroup(), age)
		}
		return tw.Flush()
	}
}
