package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"github.com/nodeinfra/nodeinfra/pkg/version"
)

// multi is a repeatable string flag.
type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// cli holds what every client verb shares.
type cli struct {
	fs     *flag.FlagSet
	socket string
	output string
	stdout io.Writer
}

func newCLI(name string, withOutput bool) *cli {
	c := &cli{fs: flag.NewFlagSet(name, flag.ContinueOnError), stdout: os.Stdout}
	c.fs.StringVar(&c.socket, "socket", "", "agent socket (default $NODEAGENT_SOCKET or "+agentclient.DefaultSocket+")")
	if withOutput {
		c.fs.StringVar(&c.output, "o", "table", "output format: table or json")
	}
	return c
}

// call parses args, dials the agent and runs f with a deadline.
func (c *cli) call(args []string, f func(ctx context.Context, cl *agentclient.Client) error) int {
	if err := c.fs.Parse(args); err != nil {
		return 2
	}
	if c.fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "nodeagent %s: unexpected argument %q\n", c.fs.Name(), c.fs.Arg(0))
		return 2
	}
	if c.output != "" && c.output != "table" && c.output != "json" {
		fmt.Fprintf(os.Stderr, "nodeagent %s: -o %q: want table or json\n", c.fs.Name(), c.output)
		return 2
	}
	cl, err := agentclient.Dial(agentclient.SocketPath(c.socket))
	if err != nil {
		fmt.Fprintf(os.Stderr, "nodeagent %s: %v\n", c.fs.Name(), err)
		return 2
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f(ctx, cl); err != nil {
		if s, ok := status.FromError(err); ok {
			fmt.Fprintf(os.Stderr, "nodeagent %s: %s (%s)\n", c.fs.Name(), s.Message(), s.Code())
		} else {
			fmt.Fprintf(os.Stderr, "nodeagent %s: %v\n", c.fs.Name(), err)
		}
		return 1
	}
	return 0
}

func (c *cli) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(c.stdout, string(b))
	return err
}

func eniCmd(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	switch args[0] {
	case "add":
		return eniAdd(args[1:])
	case "assign":
		return eniAssign(args[1:])
	case "unassign":
		return eniUnassign(args[1:])
	case "list":
		return eniList(args[1:])
	case "remove":
		return eniRemove(args[1:])
	}
	fmt.Fprintf(os.Stderr, "nodeagent eni: unknown verb %q\n\n%s", args[0], usage)
	return 2
}

func eniAdd(args []string) int {
	c := newCLI("eni add", true)
	var mac, vpc string
	var mtu uint
	var ips, gws, routes multi
	c.fs.StringVar(&mac, "mac", "", "MAC address of the ENI (required)")
	c.fs.StringVar(&vpc, "vpc", "", "VPC of the ENI (required)")
	c.fs.Var(&ips, "ip", "address with prefix length (repeatable, one per family)")
	c.fs.Var(&gws, "gateway", "VPC gateway (repeatable, one per family)")
	c.fs.UintVar(&mtu, "mtu", 0, "MTU inside the pod (0 keeps the link's)")
	c.fs.Var(&routes, "route", "extra destination routed via the gateway (repeatable)")
	return c.call(args, func(ctx context.Context, cl *agentclient.Client) error {
		if mac == "" || vpc == "" || len(ips) == 0 || len(gws) == 0 {
			return fmt.Errorf("--mac, --vpc, --ip and --gateway are required")
		}
		e, err := cl.RegisterENI(ctx, &apiv1.RegisterENIRequest{Config: &apiv1.ENIConfig{
			Mac: mac, Vpc: vpc, Addresses: ips, Gateways: gws, Mtu: uint32(mtu), Routes: routes,
		}})
		if err != nil {
			return err
		}
		if c.output == "json" {
			return c.printJSON(e)
		}
		return printENIs(c.stdout, []*apiv1.ENI{e})
	})
}

func eniAssign(args []string) int {
	c := newCLI("eni assign", true)
	var pod, mac, vpc string
	c.fs.StringVar(&pod, "pod", "", "NAMESPACE/NAME of the pod (required)")
	c.fs.StringVar(&mac, "mac", "", "assign this ENI")
	c.fs.StringVar(&vpc, "vpc", "", "assign any free ENI of this VPC at sandbox creation")
	return c.call(args, func(ctx context.Context, cl *agentclient.Client) error {
		p, err := k8sname.ParsePod(pod)
		if err != nil {
			return err
		}
		if (mac == "") == (vpc == "") {
			return fmt.Errorf("give exactly one of --mac or --vpc")
		}
		a := &apiv1.Assignment{PodNamespace: p.Namespace, PodName: p.Name}
		if mac != "" {
			a.Target = &apiv1.Assignment_Mac{Mac: mac}
		} else {
			a.Target = &apiv1.Assignment_Vpc{Vpc: vpc}
		}
		got, err := cl.AssignPod(ctx, &apiv1.AssignPodRequest{Assignment: a})
		if err != nil {
			return err
		}
		if c.output == "json" {
			return c.printJSON(got)
		}
		fmt.Fprintf(c.stdout, "pod %s/%s assigned to %s\n", got.GetPodNamespace(), got.GetPodName(), target(got))
		return nil
	})
}

func target(a *apiv1.Assignment) string {
	if a.GetMac() != "" {
		return "ENI " + a.GetMac()
	}
	return "VPC " + a.GetVpc()
}

func eniUnassign(args []string) int {
	c := newCLI("eni unassign", false)
	var pod string
	c.fs.StringVar(&pod, "pod", "", "NAMESPACE/NAME of the pod (required)")
	return c.call(args, func(ctx context.Context, cl *agentclient.Client) error {
		p, err := k8sname.ParsePod(pod)
		if err != nil {
			return err
		}
		_, err = cl.UnassignPod(ctx, &apiv1.UnassignPodRequest{PodNamespace: p.Namespace, PodName: p.Name})
		return err
	})
}

func eniList(args []string) int {
	c := newCLI("eni list", true)
	var vpc string
	c.fs.StringVar(&vpc, "vpc", "", "only ENIs of this VPC")
	return c.call(args, func(ctx context.Context, cl *agentclient.Client) error {
		resp, err := cl.ListENIs(ctx, &apiv1.ListENIsRequest{Vpc: vpc})
		if err != nil {
			return err
		}
		if c.output == "json" {
			return c.printJSON(resp)
		}
		return printENIs(c.stdout, resp.GetEnis())
	})
}

func eniRemove(args []string) int {
	c := newCLI("eni remove", false)
	var mac string
	c.fs.StringVar(&mac, "mac", "", "MAC address of the ENI (required)")
	return c.call(args, func(ctx context.Context, cl *agentclient.Client) error {
		if mac == "" {
			return fmt.Errorf("--mac is required")
		}
		_, err := cl.RemoveENI(ctx, &apiv1.RemoveENIRequest{Mac: mac})
		return err
	})
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

func attachmentsCmd(args []string) int {
	c := newCLI("attachments", true)
	return c.call(args, func(ctx context.Context, cl *agentclient.Client) error {
		resp, err := cl.ListAttachments(ctx, &apiv1.ListAttachmentsRequest{})
		if err != nil {
			return err
		}
		if c.output == "json" {
			return c.printJSON(resp)
		}
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CONTAINER\tIFNAME\tPOD\tMAC\tCONFIRMED\tNETNS")
		for _, a := range resp.GetAttachments() {
			fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%s\t%v\t%s\n", a.GetContainerId(), a.GetIfname(), a.GetPodNamespace(), a.GetPodName(), a.GetMac(), a.GetConfirmed(), a.GetNetns())
		}
		return tw.Flush()
	})
}

func statusCmd(args []string) int {
	c := newCLI("status", true)
	return c.call(args, func(ctx context.Context, cl *agentclient.Client) error {
		resp, err := cl.Status(ctx, &apiv1.StatusRequest{})
		if err != nil {
			return err
		}
		if c.output == "json" {
			return c.printJSON(resp)
		}
		fmt.Fprintf(c.stdout, "nodeagent %s: serving\n", resp.GetVersion())
		tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VPC\tFREE\tATTACHED\tMISSING")
		for _, p := range resp.GetPools() {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", p.GetVpc(), p.GetFree(), p.GetAttached(), p.GetMissing())
		}
		return tw.Flush()
	})
}

func probeCmd(args []string) int {
	c := newCLI("probe", false)
	var pod, path string
	var port uint
	var timeout time.Duration
	c.fs.StringVar(&pod, "pod", "", "NAMESPACE/NAME of the pod (required)")
	c.fs.UintVar(&port, "port", 0, "port to probe (required)")
	c.fs.StringVar(&path, "http-path", "", "HTTP GET this path instead of a TCP connect")
	c.fs.DurationVar(&timeout, "timeout", time.Second, "probe timeout")
	return c.call(args, func(ctx context.Context, cl *agentclient.Client) error {
		p, err := k8sname.ParsePod(pod)
		if err != nil {
			return err
		}
		resp, err := cl.Probe(ctx, &apiv1.ProbeRequest{PodNamespace: p.Namespace, PodName: p.Name, Port: uint32(port), HttpPath: path, TimeoutMs: uint32(timeout.Milliseconds())})
		if err != nil {
			return err
		}
		if !resp.GetSuccess() {
			return fmt.Errorf("probe failed: %s", resp.GetMessage())
		}
		fmt.Fprintf(c.stdout, "probe succeeded: %s\n", resp.GetMessage())
		return nil
	})
}

func versionCmd() int {
	fmt.Println("nodeagent", version.Version)
	return 0
}
