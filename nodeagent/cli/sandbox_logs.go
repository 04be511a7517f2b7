package cli

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

// logSources are --source's values.
var logSources = map[string]apiv1.SandboxLogsRequest_Source{
	"console": apiv1.SandboxLogsRequest_CONSOLE,
	"qemu":    apiv1.SandboxLogsRequest_QEMU,
}

func (a *app) sandboxLogsCmd() *cobra.Command {
	var source string
	var tail int64
	req := &apiv1.SandboxLogsRequest{}
	cmd := &cobra.Command{
		Use:   "logs ID [--follow] [--tail-bytes N] [--source console|qemu]",
		Short: "Print a sandbox's console log (or QEMU's), and follow it",
		Long: `Print the sandbox's serial console as the agent keeps it: the guest
kernel's messages, the guest agent's log, whatever the guest writes to
/dev/ttyS0, rotated on the node to at most 2 MiB (older output is gone).
--source qemu prints QEMU's own output instead. With --follow the command
then prints what the log gains until the sandbox's QEMU is gone or it is
interrupted. The logs stay after the sandbox stops or fails, until it is
deleted.`,
		Example: "  nodeagent sandbox logs web-1 --tail-bytes 4096 --follow",
		Args:    positional("ID"),
	}
	cmd.PreRunE = a.preRun(func(args []string) error {
		s, ok := logSources[source]
		if !ok {
			return fmt.Errorf("--source %q: want console or qemu", source)
		}
		if tail < 0 {
			return fmt.Errorf("--tail-bytes %d: want 0 (all) or more", tail)
		}
		req.Id, req.Source, req.TailBytes = args[0], s, uint64(tail)
		return nil
	})
	f := cmd.Flags()
	f.BoolVarP(&req.Follow, "follow", "f", false, "keep printing what the log gains until the sandbox's QEMU is gone")
	f.Int64Var(&tail, "tail-bytes", 0, "print only the last N bytes (0: all that is kept)")
	f.StringVar(&source, "source", "console", "the log: console (the guest's serial console) or qemu (QEMU's own output)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			if req.Follow {
				var stop context.CancelFunc
				ctx, stop = interruptible(ctx)
				defer stop()
			}
			err := copyLogs(ctx, cl, req, cmd.OutOrStdout())
			if err != nil && req.Follow && ctx.Err() != nil {
				return nil // interrupted: the normal end of a follow
			}
			return err
		})
	}
	return cmd
}

// copyLogs writes a SandboxLogs stream to w as it comes.
func copyLogs(ctx context.Context, cl apiv1.SandboxServiceClient, req *apiv1.SandboxLogsRequest, w io.Writer) error {
	stream, err := cl.SandboxLogs(ctx, req)
	if err != nil {
		return err
	}
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := w.Write(m.GetData()); err != nil {
			return fmt.Errorf("write the log: %w", err)
		}
	}
}
