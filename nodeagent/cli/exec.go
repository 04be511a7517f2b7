package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

// exitInterrupted is exec's status when it is interrupted: the agent
// kills the process.
const exitInterrupted = 130

func (a *app) sandboxExecCmd() *cobra.Command {
	var env []string
	var dir string
	var start *apiv1.ExecStart
	cmd := &cobra.Command{
		Use:   "exec ID [--env KEY=VALUE ...] [--dir DIR] -- CMD [ARGS...]",
		Short: "Run a process in a sandbox, with stdin, stdout and stderr forwarded",
		Long: `Run CMD with ARGS in the sandbox ID, forwarding stdin, stdout and stderr.
The command exits with the process's status (130 when interrupted: the
agent kills the process). Flags go before CMD; CMD starts at the first
argument after ID that is not a flag, or after "--", so that its own
flags stay its own.`,
		Example:               "  nodeagent sandbox exec web-1 --env LANG=C -- sh -c 'cat; exit 3' < input",
		Args:                  cobra.ArbitraryArgs, // execArgs checks them
		DisableFlagsInUseLine: true,
	}
	cmd.Flags().SetInterspersed(false) // cobra's parse stops at ID; execArgs does the rest
	cmd.Flags().StringArrayVar(&env, "env", nil, "KEY=VALUE in the process's environment (repeatable)")
	cmd.Flags().StringVar(&dir, "dir", "", "working directory in the guest")
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		id, argv, err := execArgs(cmd.Flags(), args)
		if help, _ := cmd.Flags().GetBool("help"); help {
			return pflag.ErrHelp // "exec ID --help": cobra prints the help
		}
		if err != nil {
			return err
		}
		for _, kv := range env {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				return fmt.Errorf("--env %q: want KEY=VALUE", kv)
			}
		}
		if err := a.checkSocket(cmd, nil); err != nil {
			return err
		}
		start = &apiv1.ExecStart{SandboxId: id, Argv: argv, Env: env, Dir: dir}
		return nil
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		exit := 0
		err := a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			ctx, stop := interruptible(ctx)
			defer stop()
			var err error
			exit, err = runExec(ctx, cl, start, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil && ctx.Err() != nil {
				exit = exitInterrupted
				return nil
			}
			return err
		})
		if err != nil {
			return err
		}
		if exit != 0 {
			return exitStatus(exit)
		}
		return nil
	}
	return cmd
}

// execArgs parses "[FLAGS] ID [FLAGS] [--] CMD [ARGS...]" with fs, which
// must not be interspersed: the command starts at the first argument after
// the ID that is not a flag, or after "--".
func execArgs(fs *pflag.FlagSet, args []string) (id string, argv []string, err error) {
	if err := fs.Parse(args); err != nil {
		return "", nil, err
	}
	if fs.NArg() == 0 {
		return "", nil, errors.New("missing ID")
	}
	id = fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		return "", nil, err
	}
	if fs.NArg() == 0 {
		return "", nil, errors.New("missing CMD")
	}
	return id, fs.Args(), nil
}

// runExec runs a process in a sandbox with stdin, stdout and stderr
// forwarded, and returns its exit code (0-255).
func runExec(ctx context.Context, cl apiv1.SandboxServiceClient, start *apiv1.ExecStart, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	ctx, cancel := context.WithCancel(ctx) // ends the call, and the process, on an early return
	defer cancel()
	stream, err := cl.Exec(ctx)
	if err != nil {
		return 0, err
	}
	if err := stream.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Start{Start: start}}); err != nil && !errors.Is(err, io.EOF) {
		return 0, err // on io.EOF, Recv has the reason
	}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				if stream.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Stdin{Stdin: bytes.Clone(buf[:n])}}) != nil {
					return // the call is over
				}
			}
			if err != nil { // EOF, or stdin is unreadable: the process's stdin ends either way
				_ = stream.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_CloseStdin{CloseStdin: true}})
				_ = stream.CloseSend()
				return
			}
		}
	}()
	var exit *apiv1.ExitStatus
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, err
		}
		switch k := m.GetKind().(type) {
		case *apiv1.ExecResponse_Stdout:
			if _, err := stdout.Write(k.Stdout); err != nil {
				return 0, fmt.Errorf("write stdout: %w", err)
			}
		case *apiv1.ExecResponse_Stderr:
			if _, err := stderr.Write(k.Stderr); err != nil {
				return 0, fmt.Errorf("write stderr: %w", err)
			}
		case *apiv1.ExecResponse_Exit:
			exit = k.Exit
		}
	}
	if exit == nil {
		return 0, errors.New("the agent ended the call without an exit status")
	}
	if c := exit.GetCode(); c >= 0 && c <= 255 {
		return int(c), nil
	}
	return 255, nil
}
