package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

func (a *app) eniCmd() *cobra.Command {
	cmd := group(&cobra.Command{
		Use:   "eni",
		Short: "Register ENIs and assign pods to them",
		Long: `An ENI is registered (eni add) while it is in the node's namespace; the
agent keeps it there, down, until a pod assigned to it (eni assign --mac)
or to its VPC (eni assign --vpc) gets a sandbox.`,
	}, "verb")
	cmd.AddCommand(a.eniAddCmd(), a.eniAssignCmd(), a.eniUnassignCmd(), a.eniListCmd(), a.eniRemoveCmd())
	return cmd
}

func (a *app) eniAddCmd() *cobra.Command {
	cfg := &apiv1.ENIConfig{}
	var mtu uint32
	cmd := &cobra.Command{
		Use:   "add MAC --vpc VPC --ip ADDR/PREFIX --gateway IP",
		Short: "Register the ENI with this MAC address",
		Long: `Register the ENI with MAC address MAC: its VPC, its addresses (one per
family) and the VPC's gateways. Registering the same ENI again is a no-op.`,
		Example: "  nodeagent eni add 02:00:00:00:00:05 --vpc vpc-a --ip 10.10.0.5/24 --gateway 10.10.0.1",
		Args:    positional("MAC"),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	f := cmd.Flags()
	f.StringVar(&cfg.Vpc, "vpc", "", "VPC of the ENI")
	f.StringArrayVar(&cfg.Addresses, "ip", nil, "address with prefix length (repeatable, one per family)")
	f.StringArrayVar(&cfg.Gateways, "gateway", nil, "VPC gateway (repeatable, one per family)")
	f.Uint32Var(&mtu, "mtu", 0, "MTU inside the pod (0 keeps the link's)")
	f.StringArrayVar(&cfg.Routes, "route", nil, "extra destination routed via the gateway (repeatable)")
	for _, name := range []string{"vpc", "ip", "gateway"} {
		_ = cmd.MarkFlagRequired(name)
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		cfg.Mac, cfg.Mtu = args[0], mtu
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			e, err := cl.RegisterENI(ctx, &apiv1.RegisterENIRequest{Config: cfg})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), e, func(w io.Writer) error { return printENIs(w, []*apiv1.ENI{e}) })
		})
	}
	return cmd
}

func (a *app) eniAssignCmd() *cobra.Command {
	var mac, vpc string
	var pod k8sname.Pod
	cmd := &cobra.Command{
		Use:   "assign NAMESPACE/NAME (--mac MAC | --vpc VPC)",
		Short: "Assign a pod to an ENI, or to any free ENI of a VPC",
		Long: `Assign the pod NAMESPACE/NAME to the ENI with MAC address MAC, or to any
ENI of VPC that is free when the pod's sandbox is created.`,
		Args: positional("NAMESPACE/NAME"),
	}
	cmd.PreRunE = a.preRun(func(args []string) error {
		var err error
		if pod, err = parsePod(args[0]); err != nil {
			return err
		}
		if (mac == "") == (vpc == "") {
			return fmt.Errorf("give exactly one of --mac or --vpc")
		}
		return nil
	})
	out := addOutput(cmd)
	cmd.Flags().StringVar(&mac, "mac", "", "assign this ENI")
	cmd.Flags().StringVar(&vpc, "vpc", "", "assign any free ENI of this VPC at sandbox creation")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		as := &apiv1.Assignment{PodNamespace: pod.Namespace, PodName: pod.Name}
		if mac != "" {
			as.Target = &apiv1.Assignment_Mac{Mac: mac}
		} else {
			as.Target = &apiv1.Assignment_Vpc{Vpc: vpc}
		}
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			got, err := cl.AssignPod(ctx, &apiv1.AssignPodRequest{Assignment: as})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), got, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "pod %s/%s assigned to %s\n", got.GetPodNamespace(), got.GetPodName(), target(got))
				return err
			})
		})
	}
	return cmd
}

func target(a *apiv1.Assignment) string {
	if a.GetMac() != "" {
		return "ENI " + a.GetMac()
	}
	return "VPC " + a.GetVpc()
}

func (a *app) eniUnassignCmd() *cobra.Command {
	var pod k8sname.Pod
	cmd := &cobra.Command{
		Use:   "unassign NAMESPACE/NAME",
		Short: "Drop a pod's assignment",
		Args:  positional("NAMESPACE/NAME"),
	}
	cmd.PreRunE = a.preRun(func(args []string) error {
		var err error
		pod, err = parsePod(args[0])
		return err
	})
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			_, err := cl.UnassignPod(ctx, &apiv1.UnassignPodRequest{PodNamespace: pod.Namespace, PodName: pod.Name})
			return err
		})
	}
	return cmd
}

func (a *app) eniListCmd() *cobra.Command {
	var vpc string
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List the registered ENIs, their state and their pods",
		Args:    positional(),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.Flags().StringVar(&vpc, "vpc", "", "only ENIs of this VPC")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			resp, err := cl.ListENIs(ctx, &apiv1.ListENIsRequest{Vpc: vpc})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), resp, func(w io.Writer) error { return printENIs(w, resp.GetEnis()) })
		})
	}
	return cmd
}

func (a *app) eniRemoveCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "remove MAC",
		Short:   "Unregister the ENI with this MAC address (it must have no pod)",
		Args:    positional("MAC"),
		PreRunE: a.checkSocket,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
				_, err := cl.RemoveENI(ctx, &apiv1.RemoveENIRequest{Mac: args[0]})
				return err
			})
		},
	}
}

func (a *app) attachmentsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "attachments",
		Short:   "List the pod attachments: which container has which ENI",
		Args:    positional(),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			resp, err := cl.ListAttachments(ctx, &apiv1.ListAttachmentsRequest{})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), resp, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "CONTAINER\tIFNAME\tPOD\tMAC\tCONFIRMED\tNETNS")
				for _, a := range resp.GetAttachments() {
					fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%s\t%v\t%s\n", a.GetContainerId(), a.GetIfname(), a.GetPodNamespace(), a.GetPodName(), a.GetMac(), a.GetConfirmed(), a.GetNetns())
				}
				return tw.Flush()
			})
		})
	}
	return cmd
}

func (a *app) statusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "status",
		Short:   "Print the agent's version, uptime, sandbox readiness and ENI pools (fails if the agent does not answer)",
		Args:    positional(),
		PreRunE: a.checkSocket,
	}
	out := addOutput(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			resp, err := cl.Status(ctx, &apiv1.StatusRequest{})
			if err != nil {
				return err
			}
			return out.print(cmd.OutOrStdout(), resp, func(w io.Writer) error {
				fmt.Fprintf(w, "nodeagent %s: serving for %s\n", resp.GetVersion(), time.Duration(resp.GetUptimeSeconds())*time.Second)
				if p := resp.GetSandboxProblems(); len(p) > 0 {
					fmt.Fprintln(w, "sandboxes: unavailable")
					for _, m := range p {
						fmt.Fprintf(w, "  missing: %s\n", m)
					}
				} else {
					accel := resp.GetAccel()
					if accel == "" {
						accel = "probing KVM"
					}
					cg := resp.GetCgroupMode()
					if cg == "" {
						cg = "none"
					}
					var states []string
					for st, n := range resp.GetSandboxes() {
						states = append(states, fmt.Sprintf("%s %d", strings.ToLower(st), n))
					}
					sort.Strings(states)
					if len(states) == 0 {
						states = []string{"none"}
					}
					fmt.Fprintf(w, "sandboxes: accel %s, cgroups %s; %s\n", accel, cg, strings.Join(states, ", "))
					printTemplates(w, resp)
				}
				// ENIs by state, in total then per VPC; attached counts
				// those being attached too.
				var free, attached, missing uint32
				for _, p := range resp.GetPools() {
					free, attached, missing = free+p.GetFree(), attached+p.GetAttached(), missing+p.GetMissing()
				}
				if len(resp.GetPools()) == 0 {
					_, err := fmt.Fprintln(w, "enis: none registered")
					return err
				}
				fmt.Fprintf(w, "enis: free %d, attached %d, missing %d\n", free, attached, missing)
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "VPC\tFREE\tATTACHED\tMISSING")
				for _, p := range resp.GetPools() {
					fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", p.GetVpc(), p.GetFree(), p.GetAttached(), p.GetMissing())
				}
				return tw.Flush()
			})
		})
	}
	return cmd
}

func (a *app) probeCmd() *cobra.Command {
	var pod k8sname.Pod
	var path string
	var port uint32
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "probe NAMESPACE/NAME --port N",
		Short: "Probe a pod's port from inside its network namespace, as the kubelet's probes do",
		Long: `Probe the pod NAMESPACE/NAME on port N of its ENI's address: a TCP connect,
or an HTTP GET of --http-path. Exit status 1 when the probe fails.`,
		Args: positional("NAMESPACE/NAME"),
	}
	cmd.PreRunE = a.preRun(func(args []string) error {
		var err error
		pod, err = parsePod(args[0])
		return err
	})
	cmd.Flags().Uint32Var(&port, "port", 0, "port to probe")
	cmd.Flags().StringVar(&path, "http-path", "", "HTTP GET this path instead of a TCP connect")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Second, "probe timeout")
	_ = cmd.MarkFlagRequired("port")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		return a.call(cmd, func(ctx context.Context, cl *agentclient.Client) error {
			resp, err := cl.Probe(ctx, &apiv1.ProbeRequest{PodNamespace: pod.Namespace, PodName: pod.Name, Port: port,
				HttpPath: path, TimeoutMs: uint32(timeout.Milliseconds())})
			if err != nil {
				return err
			}
			if !resp.GetSuccess() {
				return fmt.Errorf("probe failed: %s", resp.GetMessage())
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "probe succeeded: %s\n", resp.GetMessage())
			return err
		})
	}
	return cmd
}

// parsePod splits NAMESPACE/NAME; whether the names are valid is the
// agent's to say.
func parsePod(s string) (k8sname.Pod, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" {
		return k8sname.Pod{}, fmt.Errorf("pod %q: want NAMESPACE/NAME", s)
	}
	return k8sname.Pod{Namespace: ns, Name: name}, nil
}

func stateName(s apiv1.ENIState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ENI_STATE_"))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printENIs(w io.Writer, enis []*apiv1.ENI) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MAC\tVPC\tLINK\tADDRESSES\tGATEWAYS\tMTU\tSTATE\tASSIGNED\tPOD\tCONTAINER")
	for _, e := range enis {
		c := e.GetConfig()
		pod, cid := "-", "-"
		if a := e.GetAttachment(); a != nil {
			pod = a.GetPodNamespace() + "/" + a.GetPodName()
			cid = a.GetContainerId()
			if len(cid) > 12 {
				cid = cid[:12]
			}
		}
		mtu := "-"
		if c.GetMtu() != 0 {
			mtu = fmt.Sprint(c.GetMtu())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.GetMac(), c.GetVpc(), c.GetHostName(),
			strings.Join(c.GetAddresses(), ","), strings.Join(c.GetGateways(), ","), mtu,
			stateName(e.GetState()), orDash(e.GetAssignedPod()), pod, cid)
	}
	return tw.Flush()
}

// printTemplates writes the fast start mode and the VM templates.
func printTemplates(w io.Writer, resp *apiv1.StatusResponse) {
	fs := resp.GetFastStart()
	if fs == "" || fs == "off" {
		fmt.Fprintln(w, "fast start: off (cold boots)")
		return
	}
	fmt.Fprintf(w, "fast start: %s\n", fs)
	for _, p := range resp.GetPool() {
		line := fmt.Sprintf("  pool %s: %d ready, %d booting", p.GetClass(), p.GetReady(), p.GetBooting())
		if e := p.GetError(); e != "" {
			line += "; last boot failed: " + e
		}
		fmt.Fprintln(w, line)
	}
	for _, t := range resp.GetTemplates() {
		line := fmt.Sprintf("  template %s: %s", t.GetClass(), t.GetState())
		if t.GetState() == "ready" {
			line += fmt.Sprintf(" (key %s, built in %.2fs, state %d KiB, %d clones)", t.GetKey(), t.GetBuildSeconds(), t.GetStateBytes()/1024, t.GetClones())
		}
		if e := t.GetError(); e != "" {
			line += "; last build failed: " + e
		}
		fmt.Fprintln(w, line)
	}
}
