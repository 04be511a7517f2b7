// Package server adapts the agent's domain packages to its gRPC API and its
// HTTP endpoints. Errors are converted to gRPC codes here and only here.
package server

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/k8sname"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/eni"
	"github.com/nodeinfra/nodeinfra/nodeagent/metrics"
	"github.com/nodeinfra/nodeinfra/nodeagent/probe"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/nodeagent/vmtemplate"
	"github.com/nodeinfra/nodeinfra/pkg/eniconfig"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
)

// ENIServer serves apiv1.ENIService from an inventory.
type ENIServer struct {
	apiv1.UnimplementedENIServiceServer
	Inv *eni.Inventory
	// Prober runs the Probe RPC, within the limits it shares with the
	// probe HTTP endpoint.
	Prober  *probe.Prober
	Metrics *metrics.Metrics
	Version string
	// Node, when set, reports what Status tells beyond the ENIs.
	Node func() NodeInfo
}

// NodeInfo is the node's side of Status: uptime and sandboxes.
type NodeInfo struct {
	Started         time.Time
	Accel           string
	CgroupMode      string
	SandboxProblems []string
	Sandboxes       map[string]uint32 // by state
	FastStart       string
	Templates       []vmtemplate.Info
	Pool            []sandbox.PoolInfo
}

var _ apiv1.ENIServiceServer = (*ENIServer)(nil)

// RegisterENI implements apiv1.ENIServiceServer.
func (s *ENIServer) RegisterENI(ctx context.Context, req *apiv1.RegisterENIRequest) (*apiv1.ENI, error) {
	c, err := ConfigFromProto(req.GetConfig())
	if err != nil {
		return nil, err
	}
	e, err := s.Inv.Register(ctx, c)
	if err != nil {
		return nil, err
	}
	logging.From(ctx).Info("ENI registered", "mac", e.MAC, "vpc", e.VPC, "link", e.HostName)
	return eniToProto(e), nil
}

// RemoveENI implements apiv1.ENIServiceServer.
func (s *ENIServer) RemoveENI(ctx context.Context, req *apiv1.RemoveENIRequest) (*apiv1.RemoveENIResponse, error) {
	if err := s.Inv.Remove(ctx, req.GetMac()); err != nil {
		return nil, err
	}
	logging.From(ctx).Info("ENI removed", "mac", req.GetMac())
	return &apiv1.RemoveENIResponse{}, nil
}

// ListENIs implements apiv1.ENIServiceServer.
func (s *ENIServer) ListENIs(ctx context.Context, req *apiv1.ListENIsRequest) (*apiv1.ListENIsResponse, error) {
	resp := &apiv1.ListENIsResponse{}
	for _, e := range s.Inv.List(req.GetVpc()) {
		resp.Enis = append(resp.Enis, eniToProto(e))
	}
	return resp, nil
}

// AssignPod implements apiv1.ENIServiceServer.
func (s *ENIServer) AssignPod(ctx context.Context, req *apiv1.AssignPodRequest) (*apiv1.Assignment, error) {
	p := req.GetAssignment()
	a := eni.Assignment{Pod: k8sname.Pod{Namespace: p.GetPodNamespace(), Name: p.GetPodName()}, MAC: p.GetMac(), VPC: p.GetVpc()}
	a, err := s.Inv.Assign(ctx, a)
	if err != nil {
		return nil, err
	}
	logging.From(ctx).Info("pod assigned", "pod", a.Pod.String(), "mac", a.MAC, "vpc", a.VPC)
	return assignmentToProto(a), nil
}

// UnassignPod implements apiv1.ENIServiceServer.
func (s *ENIServer) UnassignPod(ctx context.Context, req *apiv1.UnassignPodRequest) (*apiv1.UnassignPodResponse, error) {
	if err := s.Inv.Unassign(ctx, k8sname.Pod{Namespace: req.GetPodNamespace(), Name: req.GetPodName()}); err != nil {
		return nil, err
	}
	return &apiv1.UnassignPodResponse{}, nil
}

// ListAssignments implements apiv1.ENIServiceServer.
func (s *ENIServer) ListAssignments(ctx context.Context, _ *apiv1.ListAssignmentsRequest) (*apiv1.ListAssignmentsResponse, error) {
	resp := &apiv1.ListAssignmentsResponse{}
	for _, a := range s.Inv.Assignments() {
		resp.Assignments = append(resp.Assignments, assignmentToProto(a))
	}
	return resp, nil
}

func key(cid, ifname string) eni.AttachmentKey {
	return eni.AttachmentKey{ContainerID: cid, IfName: ifname}
}

// Attach implements apiv1.ENIServiceServer.
func (s *ENIServer) Attach(ctx context.Context, req *apiv1.AttachRequest) (*apiv1.AttachResponse, error) {
	a, c, err := s.Inv.Attach(ctx, eni.AttachRequest{
		AttachmentKey: key(req.GetContainerId(), req.GetIfname()),
		Netns:         req.GetNetns(),
		Pod:           k8sname.Pod{Namespace: req.GetPodNamespace(), Name: req.GetPodName()},
	})
	if err != nil {
		return nil, err
	}
	logging.From(ctx).Info("ENI attaching", "container", a.ContainerID, "ifname", a.IfName, "pod", a.Pod.String(), "mac", a.MAC)
	return &apiv1.AttachResponse{Attachment: attachmentWithLink(a), Eni: ConfigToProto(c)}, nil
}

// attachmentWithLink renders a with the identity of its link, which DEL
// needs.
func attachmentWithLink(a eni.Attachment) *apiv1.Attachment {
	p := attachmentToProto(a)
	p.Link = eniconfig.IdentityToProto(a.Link)
	return p
}

// ConfirmAttach implements apiv1.ENIServiceServer.
func (s *ENIServer) ConfirmAttach(ctx context.Context, req *apiv1.ConfirmAttachRequest) (*apiv1.ConfirmAttachResponse, error) {
	link, _ := eniconfig.IdentityFromProto(req.GetLink()) // none: Confirm refuses the zero identity
	if err := s.Inv.Confirm(ctx, key(req.GetContainerId(), req.GetIfname()), link); err != nil {
		return nil, err
	}
	return &apiv1.ConfirmAttachResponse{}, nil
}

// GetAttachment implements apiv1.ENIServiceServer.
func (s *ENIServer) GetAttachment(ctx context.Context, req *apiv1.GetAttachmentRequest) (*apiv1.AttachResponse, error) {
	a, c, err := s.Inv.Get(ctx, key(req.GetContainerId(), req.GetIfname()))
	if err != nil {
		return nil, err
	}
	return &apiv1.AttachResponse{Attachment: attachmentWithLink(a), Eni: ConfigToProto(c)}, nil
}

// Detach implements apiv1.ENIServiceServer.
func (s *ENIServer) Detach(ctx context.Context, req *apiv1.DetachRequest) (*apiv1.DetachResponse, error) {
	state, mac, err := s.Inv.Detach(ctx, key(req.GetContainerId(), req.GetIfname()))
	if err != nil {
		return nil, err
	}
	if mac != "" {
		logging.From(ctx).Info("ENI detached", "container", req.GetContainerId(), "ifname", req.GetIfname(), "mac", mac, "state", string(state))
	}
	return &apiv1.DetachResponse{EniState: stateToProto[state], Mac: mac}, nil
}

// ListAttachments implements apiv1.ENIServiceServer.
func (s *ENIServer) ListAttachments(ctx context.Context, _ *apiv1.ListAttachmentsRequest) (*apiv1.ListAttachmentsResponse, error) {
	resp := &apiv1.ListAttachmentsResponse{}
	for _, a := range s.Inv.Attachments() {
		resp.Attachments = append(resp.Attachments, attachmentToProto(a))
	}
	return resp, nil
}

// Status implements apiv1.ENIServiceServer.
func (s *ENIServer) Status(ctx context.Context, _ *apiv1.StatusRequest) (*apiv1.StatusResponse, error) {
	resp := &apiv1.StatusResponse{Version: s.Version}
	for _, p := range s.Inv.Pools() {
		resp.Pools = append(resp.Pools, &apiv1.VPCPool{Vpc: p.VPC, Free: uint32(p.Free), Attached: uint32(p.Attached), Missing: uint32(p.Missing)})
	}
	if s.Node != nil {
		n := s.Node()
		resp.UptimeSeconds = int64(time.Since(n.Started).Seconds())
		resp.Accel, resp.CgroupMode, resp.SandboxProblems = n.Accel, n.CgroupMode, n.SandboxProblems
		resp.Sandboxes = map[string]uint32{}
		for st, c := range n.Sandboxes {
			resp.Sandboxes[strings.ToUpper(st)] = c
		}
		resp.FastStart = n.FastStart
		for _, t := range n.Templates {
			resp.Templates = append(resp.Templates, &apiv1.VMTemplate{Class: t.Class.String(), State: t.State, Key: t.Key,
				BuiltAt: timestamp(t.BuiltAt), BuildSeconds: t.BuildSeconds, StateBytes: uint64(t.StateBytes),
				Clones: t.Clones, Error: t.Error})
		}
		for _, p := range n.Pool {
			resp.Pool = append(resp.Pool, &apiv1.PoolClass{Class: p.Class.String(), Ready: uint32(p.Ready), Booting: uint32(p.Booting), Error: p.Error})
		}
	}
	return resp, nil
}

// Probe implements apiv1.ENIServiceServer.
func (s *ENIServer) Probe(ctx context.Context, req *apiv1.ProbeRequest) (*apiv1.ProbeResponse, error) {
	if s.Prober == nil {
		return nil, fmt.Errorf("probes are not served here: %w", errdefs.ErrUnavailable)
	}
	pod := k8sname.Pod{Namespace: req.GetPodNamespace(), Name: req.GetPodName()}
	r, err := s.Prober.Probe(ctx, pod, int(req.GetPort()), req.GetHttpPath(), time.Duration(req.GetTimeoutMs())*time.Millisecond)
	if err != nil {
		return nil, err
	}
	return &apiv1.ProbeResponse{Success: r.Success, HttpStatus: int32(r.HTTPStatus), Message: r.Message}, nil
}

// cniCommands are the commands ReportCNI counts.
var cniCommands = map[string]bool{"ADD": true, "DEL": true, "CHECK": true}

// ReportCNI implements apiv1.ENIServiceServer: the plugin's report of a
// command, for the metrics. Codes past the spec's range are counted as
// 999 (internal), so a plugin cannot grow the metric's label set.
func (s *ENIServer) ReportCNI(ctx context.Context, req *apiv1.ReportCNIRequest) (*apiv1.ReportCNIResponse, error) {
	d := time.Duration(req.GetDurationNano())
	if !cniCommands[req.GetCommand()] {
		return nil, fmt.Errorf("CNI command %q: want ADD, DEL or CHECK: %w", req.GetCommand(), errdefs.ErrInvalidArgument)
	}
	if d <= 0 || d > 10*time.Minute {
		return nil, fmt.Errorf("CNI duration %v: want (0, 10m]: %w", d, errdefs.ErrInvalidArgument)
	}
	code := req.GetCode()
	if !knownCNICode(code) {
		code = 999
	}
	if s.Metrics != nil {
		s.Metrics.ObserveCNI(req.GetCommand(), code, d)
	}
	return &apiv1.ReportCNIResponse{}, nil
}

// knownCNICode: success, the spec's codes (1-11, 50, 51, 999) and the
// plugin's own (100-102).
func knownCNICode(c uint32) bool {
	return c <= 11 || c == 50 || c == 51 || c == 999 || c >= 100 && c <= 102
}
