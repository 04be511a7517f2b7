package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/nodeinfra/nodeinfra/pkg/eniconfig"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"github.com/nodeinfra/nodeinfra/pkg/enilink"
)

// call is one plugin invocation: its config, logger and agent client.
type call struct {
	conf   *NetConf
	args   *skel.CmdArgs
	cniArg map[string]string
	log    *slog.Logger
	agent  *agentclient.Client
	ctx    context.Context
	start  time.Time
	done   func()
}

func newCall(args *skel.CmdArgs) (*call, error) {
	start := time.Now()
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	cniArgs, err := parseArgs(args.Args)
	if err != nil {
		return nil, err
	}
	log, closeLog := conf.logger(map[string]string{"container": args.ContainerID, "ifname": args.IfName})
	agent, err := agentclient.Dial(conf.AgentSocket)
	if err != nil {
		closeLog()
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid agentSocket", err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
	return &call{conf: conf, args: args, cniArg: cniArgs, log: log, agent: agent, ctx: ctx, start: start,
		done: func() { cancel(); agent.Close(); closeLog() }}, nil
}

// agentError maps an error from the agent to a CNI error, once, here.
func (c *call) agentError(what string, err error) *types.Error {
	s := status.Convert(err)
	msg := s.Message()
	switch s.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s: node agent unreachable at %s", what, c.conf.AgentSocket),
			"is nodeagent running on this node? "+msg)
	case codes.NotFound:
		return types.NewError(CodeNoENI, what+": no ENI for this pod", msg)
	case codes.ResourceExhausted, codes.FailedPrecondition, codes.Aborted, codes.AlreadyExists:
		return types.NewError(types.ErrTryAgainLater, what+": ENI not available now", msg)
	case codes.InvalidArgument:
		return types.NewError(types.ErrInvalidEnvironmentVariables, what+": refused by the node agent", msg)
	}
	return types.NewError(types.ErrInternal, what+": node agent failed", msg)
}

func buildResult(spec enilink.Spec, ifname, netnsPath string) *types100.Result {
	mac := spec.MAC
	r := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	iface := &types100.Interface{Name: ifname, Mac: mac, Mtu: spec.MTU, Sandbox: netnsPath}
	r.Interfaces = []*types100.Interface{iface}
	idx := 0
	for _, a := range spec.Addresses {
		ipc := &types100.IPConfig{Interface: &idx, Address: net.IPNet{IP: net.IP(a.Addr().AsSlice()), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
		if gw, ok := spec.Gateway(a.Addr()); ok {
			ipc.Gateway = net.IP(gw.AsSlice())
		}
		r.IPs = append(r.IPs, ipc)
	}
	for _, rt := range spec.PodRoutes() {
		r.Routes = append(r.Routes, &types.Route{
			Dst: net.IPNet{IP: net.IP(rt.Dst.Addr().AsSlice()), Mask: net.CIDRMask(rt.Dst.Bits(), rt.Dst.Addr().BitLen())},
			GW:  net.IP(rt.GW.AsSlice()),
		})
	}
	return r
}

func cmdAdd(args *skel.CmdArgs) (retErr error) {
	c, err := newCall(args)
	if err != nil {
		return err
	}
	defer c.done()
	pod, err := podFromArgs(c.cniArg)
	if err != nil {
		return err
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, "cannot open CNI_NETNS", err.Error())
	}
	defer podNS.Close()

	resp, err := c.agent.Attach(c.ctx, &apiv1.AttachRequest{
		ContainerId: args.ContainerID, Ifname: args.IfName, Netns: args.Netns,
		PodNamespace: pod.Namespace, PodName: pod.Name,
	})
	if err != nil {
		return c.agentError("attach ENI", err)
	}
	tAttach := time.Now()
	_, spec, err := eniconfig.FromProto(resp.GetEni())
	if err != nil {
		return types.NewError(types.ErrInternal, "bad ENI from agent", err.Error())
	}
	log := c.log.With("pod", pod.Namespace+"/"+pod.Name, "mac", spec.MAC)
	// From here on the ENI is ours: give it back on any failure.
	var link *enilink.Identity
	defer func() {
		if retErr == nil {
			return
		}
		if err := c.undoAdd(args.ContainerID, args.IfName, spec, link, podNS); err != nil {
			log.Error("undo failed ADD", "error", err)
		}
	}()
	unlock, err := c.lockMoves()
	if err != nil {
		return err
	}
	defer unlock()
	if err := enilink.MoveIn(spec, podNS, args.IfName); err != nil {
		if errors.Is(err, enilink.ErrLinkNotFound) {
			return types.NewError(CodeLinkNotFound, "ENI link not found", err.Error())
		}
		return types.NewError(types.ErrInternal, "move ENI into pod", err.Error())
	}
	tMoved := time.Now()
	id, err := enilink.Configure(spec, podNS, args.IfName)
	if err != nil {
		return types.NewError(types.ErrInternal, "configure ENI in pod", err.Error())
	}
	link = &id
	tConfigured := time.Now()
	unlock()
	// The attachment is on disk since Attach. The confirmation records what
	// identifies the link in the pod, read before the pod's containers
	// run; DEL moves back nothing else, so ADD fails without it.
	if _, err := c.agent.ConfirmAttach(c.ctx, &apiv1.ConfirmAttachRequest{
		ContainerId: args.ContainerID, Ifname: args.IfName,
		Link: eniconfig.IdentityToProto(link),
	}); err != nil {
		return c.agentError("confirm attachment", err)
	}
	log.Info("ENI attached", "seconds", time.Since(c.start).Seconds(), "attachedAtSeconds", tAttach.Sub(c.start).Seconds(),
		"movedAtSeconds", tMoved.Sub(c.start).Seconds(), "configuredAtSeconds", tConfigured.Sub(c.start).Seconds(), "ifindex", id.Index)
	return types.PrintResult(buildResult(spec, args.IfName, args.Netns), c.conf.CNIVersion)
}

// lockMoves serializes the part of ADD that takes the kernel's RTNL lock
// (the move, then the addresses and routes) across concurrent ADDs on the
// node. The kernel serializes the moves anyway, each waiting for an RCU
// barrier; without this lock an ADD's address and route requests queue
// behind every move started after its own, so all concurrent ADDs finish
// together at the end. With it each ADD finishes right after its move.
// The lock is a flock, released by the kernel if the plugin dies.
func (c *call) lockMoves() (func(), error) {
	path := filepath.Join(filepath.Dir(c.conf.AgentSocket), "cni-eni.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, "open lock file", err.Error())
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, types.NewError(types.ErrIOFailure, "lock "+path, err.Error())
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }, nil
}

// undoAdd gives the ENI of a failed ADD back: it moves the link back to
// the node (by its identity when ADD learned it, else by the ENI's MAC: the
// pod's containers do not run before ADD succeeds) and tells the agent.
func (c *call) undoAdd(containerID, ifname string, spec enilink.Spec, link *enilink.Identity, podNS ns.NetNS) error {
	host, err := ns.GetCurrentNS()
	if err != nil {
		return types.NewError(types.ErrInternal, "open node netns", err.Error())
	}
	defer host.Close()
	if link != nil {
		_, err = enilink.MoveOut(spec, *link, podNS, host)
	} else {
		_, err = enilink.MoveOutByMAC(spec, podNS, host)
	}
	if err != nil {
		return types.NewError(types.ErrInternal, "move ENI back to the node", err.Error())
	}
	if _, err := c.agent.Detach(c.ctx, &apiv1.DetachRequest{ContainerId: containerID, Ifname: ifname}); err != nil {
		return c.agentError("detach ENI", err)
	}
	return nil
}

// openNetns opens the first of paths that exists; nil when none does.
func openNetns(paths ...string) (ns.NetNS, error) {
	for _, p := range paths {
		if p == "" {
			continue
		}
		n, err := ns.GetNS(p)
		if err == nil {
			return n, nil
		}
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if !errors.As(err, &notExist) && !errors.As(err, &notNS) {
			return nil, err
		}
	}
	return nil, nil
}

// detach ends one attachment: the common part of DEL and GC. The agent
// says what the attachment holds; the plugin moves back only the link ADD
// moved in, found by the identity recorded at ADD (never by the name, MAC
// or alias, which the pod controls), under the name the agent registered.
// A link the pod put in the ENI's place stays in the pod, and the agent
// marks the ENI missing (a hardware ENI comes back to the node when the
// pod's namespace dies).
func (c *call) detach(containerID, ifname, netnsHint string) error {
	resp, err := c.agent.GetAttachment(c.ctx, &apiv1.GetAttachmentRequest{ContainerId: containerID, Ifname: ifname})
	if status.Code(err) == codes.NotFound {
		return nil // nothing attached: DEL is idempotent
	}
	if err != nil {
		return c.agentError("look up attachment", err)
	}
	_, spec, err := eniconfig.FromProto(resp.GetEni())
	if err != nil {
		return types.NewError(types.ErrInternal, "bad ENI from agent", err.Error())
	}
	podNS, err := openNetns(netnsHint, resp.GetAttachment().GetNetns())
	if err != nil {
		return types.NewError(types.ErrInternal, "open pod netns", err.Error())
	}
	if podNS != nil {
		defer podNS.Close()
	}
	link, known := eniconfig.IdentityFromProto(resp.GetAttachment().GetLink())
	outcome, err := c.reclaim(spec, link, known, podNS)
	if err != nil {
		return err
	}
	dresp, err := c.agent.Detach(c.ctx, &apiv1.DetachRequest{
		ContainerId: containerID, Ifname: ifname,
	})
	if err != nil {
		return c.agentError("detach ENI", err)
	}
	c.log.Info("ENI detached", "mac", spec.MAC, "link", outcome, "state", dresp.GetEniState().String(), "seconds", time.Since(c.start).Seconds())
	return nil
}

// reclaim moves the ENI's link from podNS back to the node when it is
// there, and says what it found.
func (c *call) reclaim(spec enilink.Spec, link enilink.Identity, known bool, podNS ns.NetNS) (string, error) {
	switch {
	case podNS == nil:
		return "netns gone", nil
	case !known:
		// Its ADD never confirmed: nothing tells the ENI from a look-alike.
		c.log.Warn("attachment has no link identity: nothing moved", "mac", spec.MAC)
		return "unidentified, left in the pod", nil
	}
	host, err := ns.GetCurrentNS()
	if err != nil {
		return "", types.NewError(types.ErrInternal, "open node netns", err.Error())
	}
	defer host.Close()
	unlock, err := c.lockMoves()
	if err != nil {
		return "", err
	}
	moved, err := enilink.MoveOut(spec, link, podNS, host)
	unlock()
	switch {
	case errors.Is(err, enilink.ErrForeignLink):
		c.log.Warn("the link in the ENI's place is not the ENI: left in the pod", "mac", spec.MAC, "error", err)
		return "foreign link left in the pod", nil
	case err != nil:
		return "", types.NewError(types.ErrInternal, "move ENI back to the node", err.Error())
	case moved:
		return "moved back as " + spec.HostName, nil
	}
	return "gone from the pod", nil
}

func cmdDel(args *skel.CmdArgs) error {
	c, err := newCall(args)
	if err != nil {
		return err
	}
	defer c.done()
	return c.detach(args.ContainerID, args.IfName, args.Netns)
}

func cmdCheck(args *skel.CmdArgs) error {
	c, err := newCall(args)
	if err != nil {
		return err
	}
	defer c.done()
	if c.conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult", "the runtime passed no prevResult")
	}
	prev, err := types100.NewResultFromResult(c.conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "cannot convert prevResult", err.Error())
	}
	resp, err := c.agent.GetAttachment(c.ctx, &apiv1.GetAttachmentRequest{ContainerId: args.ContainerID, Ifname: args.IfName})
	if status.Code(err) == codes.NotFound {
		return types.NewError(types.ErrUnknownContainer, "no ENI is attached to this container", status.Convert(err).Message())
	}
	if err != nil {
		return c.agentError("look up attachment", err)
	}
	_, spec, err := eniconfig.FromProto(resp.GetEni())
	if err != nil {
		return types.NewError(types.ErrInternal, "bad ENI from agent", err.Error())
	}
	if d := prevDrift(prev, spec, args.IfName); d != "" {
		return types.NewError(CodeDrift, "ENI drifted from its result", d)
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(CodeDrift, "pod netns is gone", err.Error())
	}
	defer podNS.Close()
	if err := enilink.Verify(spec, podNS, args.IfName); err != nil {
		if errors.Is(err, enilink.ErrDrift) {
			return types.NewError(CodeDrift, "ENI drifted from its spec", err.Error())
		}
		return types.NewError(types.ErrInternal, "inspect pod link", err.Error())
	}
	return nil
}

// prevDrift compares the result the runtime kept with the ENI's spec.
func prevDrift(prev *types100.Result, spec enilink.Spec, ifname string) string {
	var found *types100.Interface
	for _, i := range prev.Interfaces {
		if i.Name == ifname && i.Sandbox != "" {
			found = i
		}
	}
	if found == nil {
		return fmt.Sprintf("prevResult has no interface %s in a sandbox", ifname)
	}
	if !strings.EqualFold(found.Mac, spec.MAC) {
		return fmt.Sprintf("prevResult interface %s has MAC %s, the ENI is %s", ifname, found.Mac, spec.MAC)
	}
	want := map[string]bool{}
	for _, a := range spec.Addresses {
		want[a.String()] = true
	}
	for _, ip := range prev.IPs {
		p, ok := netip.AddrFromSlice(ip.Address.IP)
		ones, _ := ip.Address.Mask.Size()
		if !ok || !want[netip.PrefixFrom(p.Unmap(), ones).String()] {
			return fmt.Sprintf("prevResult address %v is not the ENI's", ip.Address.String())
		}
	}
	if len(prev.IPs) != len(spec.Addresses) {
		return fmt.Sprintf("prevResult has %d addresses, the ENI has %d", len(prev.IPs), len(spec.Addresses))
	}
	return ""
}

func cmdStatus(args *skel.CmdArgs) error {
	c, err := newCall(args)
	if err != nil {
		return err
	}
	defer c.done()
	ctx, cancel := context.WithTimeout(c.ctx, 3*time.Second)
	defer cancel()
	if _, err := c.agent.Status(ctx, &apiv1.StatusRequest{}); err != nil {
		return types.NewError(CodePluginNotAvailable,
			fmt.Sprintf("node agent unreachable at %s", c.conf.AgentSocket),
			fmt.Sprintf("start the nodeagent DaemonSet on this node (or check agentSocket in the network config): %s", status.Convert(err).Message()))
	}
	return nil
}

func cmdGC(args *skel.CmdArgs) error {
	c, err := newCall(args)
	if err != nil {
		return err
	}
	defer c.done()
	valid := map[types.GCAttachment]bool{}
	for _, a := range c.conf.ValidAttachments {
		valid[a] = true
	}
	resp, err := c.agent.ListAttachments(c.ctx, &apiv1.ListAttachmentsRequest{})
	if err != nil {
		return c.agentError("list attachments", err)
	}
	var failed []string
	for _, a := range resp.GetAttachments() {
		if valid[types.GCAttachment{ContainerID: a.GetContainerId(), IfName: a.GetIfname()}] {
			continue
		}
		if err := c.detach(a.GetContainerId(), a.GetIfname(), ""); err != nil {
			failed = append(failed, fmt.Sprintf("%s/%s: %v", a.GetContainerId(), a.GetIfname(), err))
			continue
		}
		c.log.Info("GC released stale attachment", "container", a.GetContainerId(), "ifname", a.GetIfname(), "mac", a.GetMac())
	}
	if len(failed) > 0 {
		return types.NewError(types.ErrTryAgainLater, "GC could not release every stale attachment", strings.Join(failed, "; "))
	}
	return nil
}
