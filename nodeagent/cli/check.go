package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/nodeinfra/nodeinfra/nodeagent/hostcheck"
)

// checkReport is what `check -o json|yaml` prints.
type checkReport struct {
	// Ready: no item failed, so sandboxes and volumes can run.
	Ready bool             `json:"ready"`
	Items []hostcheck.Item `json:"items"`
}

// checkCmd is the one verb that does not speak to the agent: it looks at
// the node itself, before an agent runs there or while it does not start.
func (a *app) checkCmd() *cobra.Command {
	h := hostcheck.Default()
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that this node is ready for sandboxes, ENIs and Ceph volumes (needs no running agent)",
		Long: `Check this node as the agent and csi-ceph will use it, without a running
agent: KVM (a test guest is booted, as the agent does at start), /dev/net/tun,
the cgroup controllers, QEMU with its firmware and rbd driver, the guest kernel
and initramfs, the kernel's RBD mappers (krbd, nbd, fuse) and /run/netns.

One line per item: ok, warn (the node works, with the fallback the line
names) or fail, the item, and a detail. Run it as the agent runs (root, or
in the agent's container) for the truth about devices and modules.

Exit status: 0 when sandboxes and volumes can run (only ok and warn), 1 when
an item fails.`,
		Example: "  nodeagent check\n  nodeagent check --guest-kernel /opt/nodeagent-guest/vmlinux --guest-initrd /opt/nodeagent-guest/initramfs.cpio -o json",
		Args:    positional(),
	}
	out := addOutput(cmd)
	f := cmd.Flags()
	f.StringVar(&h.Kernel, "guest-kernel", h.Kernel, "guest kernel (vmlinux) of the sandboxes, as for serve")
	f.StringVar(&h.Initrd, "guest-initrd", h.Initrd, "guest initramfs with the guest agent, as for serve")
	f.StringVar(&h.QEMU, "qemu", h.QEMU, "QEMU binary, as for serve")
	f.StringVar(&h.CgroupRoot, "cgroup-root", h.CgroupRoot, "where the cgroup file systems are mounted, as for serve")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		items := h.Check(cmd.Context())
		if err := printCheck(cmd.OutOrStdout(), *out, items); err != nil {
			return err
		}
		if hostcheck.Failed(items) {
			return exitStatus(ExitFailure) // the lines say why
		}
		return nil
	}
	return cmd
}

// printCheck prints the items one per line, or as a checkReport in JSON
// or YAML.
func printCheck(w io.Writer, o output, items []hostcheck.Item) error {
	report := checkReport{Ready: !hostcheck.Failed(items), Items: items}
	switch o {
	case "json":
		b, err := json.MarshalIndent(report, "", "  ")
		if err != nil {
			return fmt.Errorf("marshal check: %w", err)
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	case "yaml":
		b, err := yaml.Marshal(report)
		if err != nil {
			return fmt.Errorf("marshal check: %w", err)
		}
		_, err = w.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, it := range items {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", it.Status, it.Name, it.Detail)
	}
	return tw.Flush()
}
