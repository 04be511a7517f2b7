package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/nodeagent/server"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// sandboxSynopsis is the usage line of each sandbox verb (main's usage
// text repeats them).
var sandboxSynopsis = map[string]string{
	"create": "sandbox create ID [--vcpus N] [--memory MiB] [--netns PATH] [--disk PATH|rbd:POOL/IMAGE ...] [--wait] [-o table|json]",
	"list":   "sandbox list [-o table|json]",
	"get":    "sandbox get ID [-o table|json]",
	"stop":   "sandbox stop ID [--timeout DUR] [-o table|json]",
	"delete": "sandbox delete ID",
	"exec":   "sandbox exec ID [--env KEY=VALUE ...] [--dir DIR] -- CMD [ARGS...]",
	"attach": "sandbox attach ID --disk PATH|rbd:POOL/IMAGE [--id DISKID] [--read-only] [-o table|json]",
	"detach": "sandbox detach ID DISKID [-o table|json]",
	"events": "sandbox events [--current] [-o table|json]",
}

func sandboxCmd(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	verbs := map[string]func([]string) int{
		"create": sandboxCreate, "list": sandboxList, "get": sandboxGet, "stop": sandboxStop,
		"delete": sandboxDelete, "exec": sandboxExec, "attach": sandboxAttach, "detach": sandboxDetach,
		"events": sandboxEvents,
	}
	if verb, ok := verbs[args[0]]; ok {
		return verb(args[1:])
	}
	fmt.Fprintf(os.Stderr, "nodeagent sandbox: unknown verb %q\n\n%s", args[0], usage)
	return 2
}

// newSandboxCLI is newCLI with the verb's synopsis in its usage message.
func newSandboxCLI(verb string, withOutput bool) *cli {
	c := newCLI("sandbox "+verb, withOutput)
	c.fs.Usage = func() {
		fmt.Fprintf(c.fs.Output(), "usage: nodeagent %s\n", sandboxSynopsis[verb])
		c.fs.PrintDefaults()
	}
	return c
}

// usageError reports a misuse of the verb; its exit code is 2.
func (c *cli) usageError(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "nodeagent %s: %s\nusage: nodeagent %s\n", c.fs.Name(), fmt.Sprintf(format, args...),
		sandboxSynopsis[strings.TrimPrefix(c.fs.Name(), "sandbox ")])
	return 2
}

// parseArgs parses fs's flags, which may come before, between and after
// the positional arguments ("create ID --vcpus 2"), and returns the
// positionals. "--" ends the flags.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// positional parses args and checks that they hold one positional argument
// per name. On a usage error it has said what is wrong.
func (c *cli) positional(args []string, names ...string) ([]string, bool) {
	pos, err := parseArgs(c.fs, args)
	if err != nil {
		return nil, false // flag said why
	}
	if len(pos) < len(names) {
		c.usageError("missing %s", strings.Join(names[len(pos):], " "))
		return nil, false
	}
	if len(pos) > len(names) {
		c.usageError("unexpected argument %q", pos[len(names)])
		return nil, false
	}
	return pos, true
}

// execArgs parses "[FLAGS] ID [FLAGS] [--] CMD [ARGS...]": the command
// starts at the first argument after the ID that is not a flag, or after
// "--", so that its own flags stay its own. On a usage error it has said
// what is wrong.
func (c *cli) execArgs(args []string) (id string, argv []string, ok bool) {
	if err := c.fs.Parse(args); err != nil {
		return "", nil, false // flag said why
	}
	if c.fs.NArg() == 0 {
		c.usageError("missing ID")
		return "", nil, false
	}
	id = c.fs.Arg(0)
	if err := c.fs.Parse(c.fs.Args()[1:]); err != nil {
		return "", nil, false
	}
	if c.fs.NArg() == 0 {
		c.usageError("missing CMD")
		return "", nil, false
	}
	return id, c.fs.Args(), true
}

// parseDisk parses a --disk value: an absolute path of a block device or
// image file, or rbd:POOL/IMAGE. The disk has no ID yet.
func parseDisk(s string) (sandbox.Disk, error) {
	var d sandbox.Disk
	if rest, ok := strings.CutPrefix(s, "rbd:"); ok {
		pool, image, ok := strings.Cut(rest, "/")
		if !ok {
			return d, fmt.Errorf("--disk %q: want rbd:POOL/IMAGE: %w", s, errdefs.ErrInvalidArgument)
		}
		d.RBD = &sandbox.RBDImage{Pool: pool, Image: image}
	} else {
		d.Path = s
	}
	if err := d.ValidateSource(); err != nil {
		return sandbox.Disk{}, fmt.Errorf("--disk %q: %w", s, err)
	}
	return d, nil
}

// interruptible replaces call's deadline, which suits quick requests, by
// SIGINT and SIGTERM: for calls that last as long as a boot, a process or
// a watch.
func interruptible(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.WithoutCancel(ctx), os.Interrupt, syscall.SIGTERM)
}

func sandboxCreate(args []string) int {
	c := newSandboxCLI("create", true)
	var vcpus, mem uint
	var netns string
	var disks multi
	var wait bool
	c.fs.UintVar(&vcpus, "vcpus", 0, fmt.Sprintf("virtual CPUs, 1-%d (0: %d)", sandbox.MaxVCPUs, sandbox.DefaultVCPUs))
	c.fs.UintVar(&mem, "memory", 0, fmt.Sprintf("guest memory in MiB, %d-%d (0: %d)", sandbox.MinMemoryMiB, sandbox.MaxMemoryMiB, sandbox.DefaultMemoryMiB))
	c.fs.StringVar(&netns, "netns", "", "absolute path of the pod's network namespace (none: no network)")
	c.fs.Var(&disks, "disk", "disk attached at boot: PATH or rbd:POOL/IMAGE (repeatable; IDs disk0, disk1, ...)")
	c.fs.BoolVar(&wait, "wait", false, "return once the sandbox is Ready or Failed")
	pos, ok := c.positional(args, "ID")
	if !ok {
		return 2
	}
	if vcpus > math.MaxUint32 || mem > math.MaxUint32 {
		return c.usageError("--vcpus or --memory out of range")
	}
	spec := sandbox.Spec{ID: pos[0], VCPUs: uint32(vcpus), MemoryMiB: uint32(mem), NetNS: netns}
	for _, s := range disks {
		d, err := parseDisk(s)
		if err != nil {
			return c.usageError("%v", err)
		}
		spec.Disks = append(spec.Disks, d)
	}
	if err := spec.WithDefaults().Validate(); err != nil {
		return c.usageError("%v", err)
	}
	return c.call(nil, func(ctx context.Context, cl *agentclient.Client) error {
		if wait {
			var stop context.CancelFunc
			ctx, stop = interruptible(ctx)
			defer stop()
		}
		sb, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: server.SpecToProto(spec), Wait: wait})
		if err != nil {
			return err
		}
		return c.printSandbox(sb)
	})
}

func sandboxList(args []string) int {
	c := newSandboxCLI("list", true)
	if _, ok := c.positional(args); !ok {
		return 2
	}
	return c.call(nil, func(ctx context.Context, cl *agentclient.Client) error {
		resp, err := cl.ListSandboxes(ctx, &apiv1.ListSandboxesRequest{})
		if err != nil {
			return err
		}
		if c.output == "json" {
			return c.printJSON(resp)
		}
		return printSandboxes(c.stdout, resp.GetSandboxes(), time.Now())
	})
}

func sandboxGet(args []string) int {
	c := newSandboxCLI("get", true)
	pos, ok := c.positional(args, "ID")
	if !ok {
		return 2
	}
	return c.call(nil, func(ctx context.Context, cl *agentclient.Client) error {
		sb, err := cl.GetSandbox(ctx, &apiv1.GetSandboxRequest{Id: pos[0]})
		if err != nil {
			return err
		}
		return c.printSandbox(sb)
	})
}

func sandboxStop(args []string) int {
	c := newSandboxCLI("stop", true)
	var timeout time.Duration
	c.fs.DurationVar(&timeout, "timeout", 0, "time the guest gets to shut down before QEMU is killed (0: the agent's default)")
	pos, ok := c.positional(args, "ID")
	if !ok {
		return 2
	}
	if timeout < 0 || timeout.Seconds() > math.MaxUint32 {
		return c.usageError("--timeout %v out of range", timeout)
	}
	return c.call(nil, func(ctx context.Context, cl *agentclient.Client) error {
		ctx, stop := interruptible(ctx) // the stop takes as long as it takes
		defer stop()
		sb, err := cl.StopSandbox(ctx, &apiv1.StopSandboxRequest{Id: pos[0], TimeoutSeconds: uint32(math.Ceil(timeout.Seconds()))})
		if err != nil {
			return err
		}
		return c.printSandbox(sb)
	})
}

func sandboxDelete(args []string) int {
	c := newSandboxCLI("delete", false)
	pos, ok := c.positional(args, "ID")
	if !ok {
		return 2
	}
	return c.call(nil, func(ctx context.Context, cl *agentclient.Client) error {
		ctx, stop := interruptible(ctx) // a delete stops the sandbox first
		defer stop()
		_, err := cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{Id: pos[0]})
		return err
	})
}

func sandboxAttach(args []string) int {
	c := newSandboxCLI("attach", true)
	var disk, id string
	var readOnly bool
	c.fs.StringVar(&disk, "disk", "", "the disk: PATH or rbd:POOL/IMAGE (required)")
	c.fs.StringVar(&id, "id", "", "the disk's ID in the sandbox (default: the ID it has if attached, else the first free disk<N>)")
	c.fs.BoolVar(&readOnly, "read-only", false, "attach the disk read-only")
	pos, ok := c.positional(args, "ID")
	if !ok {
		return 2
	}
	if disk == "" {
		return c.usageError("--disk is required")
	}
	d, err := parseDisk(disk)
	if err != nil {
		return c.usageError("%v", err)
	}
	d.ID, d.ReadOnly = id, readOnly
	if id != "" {
		if err := sandbox.ValidateDiskID(id); err != nil {
			return c.usageError("--id: %v", err)
		}
	}
	return c.call(nil, func(ctx context.Context, cl *agentclient.Client) error {
		if d.ID == "" {
			sb, err := cl.GetSandbox(ctx, &apiv1.GetSandboxRequest{Id: pos[0]})
			if err != nil {
				return err
			}
			d.ID = diskIDFor(sb.GetDisks(), d)
		}
		sb, err := cl.AttachDisk(ctx, &apiv1.AttachDiskRequest{SandboxId: pos[0], Disk: server.DiskToProto(d)})
		if err != nil {
			return err
		}
		return c.printSandbox(sb)
	})
}

// diskIDFor picks the ID of a disk to attach: the ID of the same disk if it
// is attached already (so that attaching twice is harmless), else the
// first disk<N> not in use.
func diskIDFor(attached []*apiv1.Disk, d sandbox.Disk) string {
	used := map[string]bool{}
	for _, a := range attached {
		have := server.DiskFromProto(a)
		same := d
		same.ID = have.ID
		if have.Equal(same) {
			return have.ID
		}
		used[have.ID] = true
	}
	for i := 0; ; i++ {
		if id := fmt.Sprintf("disk%d", i); !used[id] {
			return id
		}
	}
}

func sandboxDetach(args []string) int {
	c := newSandboxCLI("detach", true)
	pos, ok := c.positional(args, "ID", "DISKID")
	if !ok {
		return 2
	}
	return c.call(nil, func(ctx context.Context, cl *agentclient.Client) error {
		sb, err := cl.DetachDisk(ctx, &apiv1.DetachDiskRequest{SandboxId: pos[0], DiskId: pos[1]})
		if err != nil {
			return err
		}
		return c.printSandbox(sb)
	})
}

func sandboxExec(args []string) int {
	c := newSandboxCLI("exec", false)
	var env multi
	var dir string
	c.fs.Var(&env, "env", "KEY=VALUE in the process's environment (repeatable)")
	c.fs.StringVar(&dir, "dir", "", "working directory in the guest")
	id, argv, ok := c.execArgs(args)
	if !ok {
		return 2
	}
	for _, kv := range env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return c.usageError("--env %q: want KEY=VALUE", kv)
		}
	}
	start := &apiv1.ExecStart{SandboxId: id, Argv: argv, Env: env, Dir: dir}
	exit := 0
	code := c.call(nil, func(ctx context.Context, cl *agentclient.Client) error {
		ctx, stop := interruptible(ctx)
		defer stop()
		var err error
		exit, err = runExec(ctx, cl, start, os.Stdin, c.stdout, os.Stderr)
		if err != nil && ctx.Err() != nil {
			exit = 130 // interrupted: the agent kills the process
			return nil
		}
		return err
	})
	if code != 0 {
		return code
	}
	return exit
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

func sandboxEvents(args []string) int {
	c := newSandboxCLI("events", true)
	var current bool
	c.fs.BoolVar(&current, "current", false, "start with one State event per existing sandbox")
	if _, ok := c.positional(args); !ok {
		return 2
	}
	return c.call(nil, func(ctx context.Context, cl *agentclient.Client) error {
		ctx, stop := interruptible(ctx)
		defer stop()
		stream, err := cl.WatchEvents(ctx, &apiv1.WatchEventsRequest{IncludeCurrent: current})
		if err != nil {
			return err
		}
		if c.output != "json" {
			fmt.Fprintf(c.stdout, eventFormat, "TIME", "EVENT", "SANDBOX", "STATE", "DETAIL")
		}
		for {
			e, err := stream.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return nil // interrupted: the normal end of a watch
				}
				return err
			}
			if err := printEvent(c.stdout, e, c.output == "json"); err != nil {
				return err
			}
		}
	})
}

const eventFormat = "%-20s  %-13s  %-24s  %-9s  %s\n"

// printEvent writes one event as a table row, or as one line of JSON.
func printEvent(w io.Writer, e *apiv1.SandboxEvent, asJSON bool) error {
	if asJSON {
		b, err := protojson.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	sb := e.GetSandbox()
	detail := sb.GetReason()
	if d := e.GetDisk(); d != nil {
		detail = d.GetId() + " " + diskSource(d)
	}
	_, err := fmt.Fprintf(w, eventFormat, e.GetTime().AsTime().Local().Format(time.DateTime),
		titleCase(e.GetType().String()), sb.GetSpec().GetId(), stateTitle(sb.GetState()), orDash(detail))
	return err
}

func (c *cli) printSandbox(sb *apiv1.Sandbox) error {
	if c.output == "json" {
		return c.printJSON(sb)
	}
	if err := printSandboxes(c.stdout, []*apiv1.Sandbox{sb}, time.Now()); err != nil {
		return err
	}
	if len(sb.GetDisks()) == 0 {
		return nil
	}
	fmt.Fprintln(c.stdout)
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DISK\tSOURCE\tMODE")
	for _, d := range sb.GetDisks() {
		mode := "rw"
		if d.GetReadOnly() {
			mode = "ro"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.GetId(), diskSource(d), mode)
	}
	return tw.Flush()
}

func printSandboxes(w io.Writer, sbs []*apiv1.Sandbox, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tVCPUS\tMEM\tPID\tADDRESSES\tAGE\tREASON")
	for _, sb := range sbs {
		spec := sb.GetSpec()
		pid, age := "-", "-"
		if sb.GetPid() != 0 {
			pid = fmt.Sprint(sb.GetPid())
		}
		if sb.GetCreatedAt() != nil {
			age = shortDuration(now.Sub(sb.GetCreatedAt().AsTime()))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%dMiB\t%s\t%s\t%s\t%s\n", spec.GetId(), stateTitle(sb.GetState()), spec.GetVcpus(),
			spec.GetMemoryMib(), pid, orDash(strings.Join(sb.GetAddresses(), ",")), age, orDash(sb.GetReason()))
	}
	return tw.Flush()
}

// diskSource renders a disk's source as --disk takes it.
func diskSource(d *apiv1.Disk) string {
	return server.DiskFromProto(d).String()
}

// stateTitle names a state as the agent's logs do: "Ready".
func stateTitle(s apiv1.Sandbox_State) string {
	if s == apiv1.Sandbox_STATE_UNSPECIFIED {
		return "-"
	}
	return titleCase(s.String())
}

// titleCase turns an enum name into CamelCase: DISK_ATTACHED → DiskAttached.
func titleCase(s string) string {
	var b strings.Builder
	for _, w := range strings.Split(strings.ToLower(s), "_") {
		if w != "" {
			b.WriteString(strings.ToUpper(w[:1]) + w[1:])
		}
	}
	return b.String()
}

// shortDuration renders an age in its largest whole unit, up to hours for
// two days: 45s, 12m, 5h, 47h, 3d.
func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
