// Package cli is nodeagent's admin CLI: verbs that speak the agent's gRPC
// API (nodeagent/api/v1) over its unix socket, through pkg/agentclient.
// It knows nothing of the daemon's internals: it turns arguments into API
// messages, checking their syntax only (an ID is present, a disk looks like
// PATH or rbd:POOL/IMAGE); whether they are valid is the agent's to say,
// and it says so with InvalidArgument.
//
// Exit status, for every command built here and any added to the root
// (such as `nodeagent serve`):
//
//	0  success, and --help of any command
//	2  usage: what cobra refuses (an unknown verb or flag, a bad flag value,
//	   a missing required flag), or what a command's Args or PreRunE
//	   refuse (missing or extra arguments, bad syntax)
//	1  failure: an error returned by a command's RunE (the agent refused,
//	   or could not be reached)
//
// An error with an ExitCode() int method sets the status itself and is not
// printed: `sandbox exec` passes on its process's status, and `serve` has
// logged why it stopped.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"github.com/nodeinfra/nodeinfra/pkg/version"
)

// Exit statuses.
const (
	ExitFailure = 1
	ExitUsage   = 2
)

// callTimeout bounds a quick request; calls that last as long as a boot, a
// process or a watch are interruptible instead.
const callTimeout = 30 * time.Second

// Run runs the admin CLI with args (without the program name) and returns
// the exit status.
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return Execute(NewRoot(), args, stdin, stdout, stderr)
}

// NewRoot returns the `nodeagent` command with the admin verbs. Commands
// added to it before Execute follow the same exit statuses.
func NewRoot() *cobra.Command {
	a := &app{}
	root := &cobra.Command{
		Use:   "nodeagent",
		Short: "Node agent for Kubernetes: ENIs, pod sandboxes and their admin CLI",
		Long: `nodeagent serve runs the node agent daemon. The other commands are its
admin CLI: they speak the agent's gRPC API over its unix socket, chosen by
--socket, else $` + agentclient.EnvSocket + `, else ` + agentclient.DefaultSocket + `.

Exit status: 0 on success, 1 when the agent refuses or cannot be reached,
2 on a usage error.`,
	}
	group(root, "command")
	root.PersistentFlags().StringVar(&a.socket, "socket", agentclient.SocketPath(""),
		"the agent's unix socket ($"+agentclient.EnvSocket+" sets the default)")
	root.AddCommand(a.eniCmd(), a.attachmentsCmd(), a.statusCmd(), a.checkCmd(), a.probeCmd(), a.sandboxCmd(), a.groupCmd(), versionCmd())
	return root
}

// app is what the client verbs share: the --socket flag.
type app struct {
	socket string
}

// checkSocket is the PreRunE of the client verbs that need no other
// check; the others call it first.
func (a *app) checkSocket(*cobra.Command, []string) error {
	if s := agentclient.SocketPath(a.socket); !filepath.IsAbs(s) {
		return fmt.Errorf("agent socket %q must be an absolute path (--socket or %s)", s, agentclient.EnvSocket)
	}
	return nil
}

// preRun returns a PreRunE that checks the socket, then runs check.
func (a *app) preRun(check func(args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := a.checkSocket(cmd, args); err != nil {
			return err
		}
		return check(args)
	}
}

// call dials the agent and runs f with a deadline. An agent that cannot
// be reached gives one line that names the socket and how to choose
// another.
func (a *app) call(cmd *cobra.Command, f func(ctx context.Context, cl *agentclient.Client) error) error {
	socket := agentclient.SocketPath(a.socket)
	cl, err := agentclient.Dial(socket)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
	defer cancel()
	err = f(ctx, cl)
	var u *agentclient.UnreachableError
	if errors.As(cl.Unreachable(err), &u) {
		return fmt.Errorf("cannot reach the agent at %s (%v): is it running? Choose another socket with --socket or %s",
			u.Socket, u.Err, agentclient.EnvSocket)
	}
	return err
}

// group makes cmd a group of verbs: run without one, or with an unknown
// one, it is a usage error (cobra would print the help and succeed).
func group(cmd *cobra.Command, what string) *cobra.Command {
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return fmt.Errorf("missing %s", what)
		}
		msg := fmt.Sprintf("unknown %s %q", what, args[0])
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += "; did you mean " + strings.Join(s, " or ") + "?"
		}
		return errors.New(msg)
	}
	cmd.RunE = func(*cobra.Command, []string) error { return nil } // never reached: Args refuses
	cmd.SuggestionsMinimumDistance = 2
	return cmd
}

// positional returns an Args check that wants one argument per name.
func positional(names ...string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < len(names) {
			return fmt.Errorf("missing %s", strings.Join(names[len(args):], " "))
		}
		if len(args) > len(names) {
			return fmt.Errorf("unexpected argument %q", args[len(names)])
		}
		return nil
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print nodeagent's version",
		Args:  positional(),
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "nodeagent", version.Version)
		},
	}
}

// runError marks an error returned by a RunE: a failure, not a usage
// error.
type runError struct{ err error }

func (e *runError) Error() string { return e.err.Error() }
func (e *runError) Unwrap() error { return e.err }

// markedRunE is the annotation that says a command's RunE marks its errors.
const markedRunE = "nodeagent/cli:marked-run"

// markRunErrors wraps the RunE of cmd and its subcommands so that their
// errors are told apart from cobra's and the PreRunE's.
func markRunErrors(cmd *cobra.Command) {
	if run := cmd.RunE; run != nil && cmd.Annotations[markedRunE] == "" {
		cmd.RunE = func(cmd *cobra.Command, args []string) error {
			if err := run(cmd, args); err != nil {
				return &runError{err}
			}
			return nil
		}
		if cmd.Annotations == nil {
			cmd.Annotations = map[string]string{}
		}
		cmd.Annotations[markedRunE] = "yes"
	}
	for _, sub := range cmd.Commands() {
		markRunErrors(sub)
	}
}

// Execute runs root with args and the given streams, prints what went
// wrong, and returns the exit status (see the package comment).
func Execute(root *cobra.Command, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if args == nil {
		args = []string{} // nil would make cobra read os.Args
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SilenceErrors, root.SilenceUsage = true, true
	root.InitDefaultCompletionCmd() // after SetOut, which it keeps
	if c, _, err := root.Find([]string{"completion"}); err == nil && c != root {
		group(c, "shell")
	}
	markRunErrors(root)
	cmd, err := root.ExecuteContextC(context.Background())
	if err == nil {
		return 0
	}
	if cmd == nil {
		cmd = root
	}
	var coded interface{ ExitCode() int }
	if errors.As(err, &coded) {
		return coded.ExitCode()
	}
	var r *runError
	if !errors.As(err, &r) {
		fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for usage.\n", cmd.CommandPath(), err, cmd.CommandPath())
		return ExitUsage
	}
	if s, ok := status.FromError(r.err); ok {
		fmt.Fprintf(stderr, "%s: %s (%s)\n", cmd.CommandPath(), s.Message(), s.Code())
	} else {
		fmt.Fprintf(stderr, "%s: %v\n", cmd.CommandPath(), r.err)
	}
	return ExitFailure
}

// exitStatus ends a command with a status and nothing more to say.
type exitStatus int

func (s exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(s)) }
func (s exitStatus) ExitCode() int { return int(s) }
