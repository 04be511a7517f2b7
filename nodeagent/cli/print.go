package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// sandboxTable prints a sandbox as a one-row table, then its disks.
func sandboxTable(sb *apiv1.Sandbox) func(io.Writer) error {
	return func(w io.Writer) error {
		if err := printSandboxes(w, []*apiv1.Sandbox{sb}, time.Now()); err != nil {
			return err
		}
		if len(sb.GetDisks()) == 0 {
			return nil
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
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
}

func printSandboxes(w io.Writer, sbs []*apiv1.Sandbox, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tVCPUS\tMEM\tPID\tADDRESSES\tSTART\tAGE\tREASON")
	for _, sb := range sbs {
		spec := sb.GetSpec()
		pid, age := "-", "-"
		if sb.GetPid() != 0 {
			pid = fmt.Sprint(sb.GetPid())
		}
		if sb.GetCreatedAt() != nil {
			age = shortDuration(now.Sub(sb.GetCreatedAt().AsTime()))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%dMiB\t%s\t%s\t%s\t%s\t%s\n", spec.GetId(), stateTitle(sb.GetState()), spec.GetVcpus(),
			spec.GetMemoryMib(), pid, orDash(strings.Join(sb.GetAddresses(), ",")), orDash(sb.GetStart()), age, orDash(sb.GetReason()))
	}
	return tw.Flush()
}

const eventFormat = "%-20s  %-13s  %-24s  %-9s  %s\n"

// printEvent writes one event as a table row, one line of JSON, or one
// YAML document.
func printEvent(w io.Writer, e *apiv1.SandboxEvent, o output) error {
	switch o {
	case "json":
		b, err := protojson.Marshal(e)
		if err != nil {
			return fmt.Errorf("marshal event: %w", err)
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	case "yaml":
		b, err := toYAML(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "---\n%s", b)
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
