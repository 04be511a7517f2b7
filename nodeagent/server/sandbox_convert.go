package server

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
)

// SpecFromProto converts a sandbox spec; nil gives the zero Spec, which
// fails validation. Only resources naming no device of this host fail
// here.
func SpecFromProto(p *apiv1.SandboxSpec) (sandbox.Spec, error) {
	s := sandbox.Spec{ID: p.GetId(), VCPUs: p.GetVcpus(), MemoryMiB: p.GetMemoryMib(), NetNS: p.GetNetns(), CgroupParent: p.GetCgroupParent()}
	for _, d := range p.GetDisks() {
		s.Disks = append(s.Disks, DiskFromProto(d))
	}
	r, err := ResourcesFromProto(p.GetResources())
	if err != nil {
		return s, fmt.Errorf("sandbox %q: %w", s.ID, err)
	}
	s.Resources = r
	return s, nil
}

// SpecToProto renders a Spec.
func SpecToProto(s sandbox.Spec) *apiv1.SandboxSpec {
	p := &apiv1.SandboxSpec{Id: s.ID, Vcpus: s.VCPUs, MemoryMib: s.MemoryMiB, Netns: s.NetNS, CgroupParent: s.CgroupParent}
	if !s.Resources.IsZero() {
		p.Resources = ResourcesToProto(s.Resources)
	}
	for _, d := range s.Disks {
		p.Disks = append(p.Disks, DiskToProto(d))
	}
	return p
}

// DiskFromProto converts a disk. A source left unset (or an rbd left nil)
// gives a Disk without a source, which fails validation.
func DiskFromProto(p *apiv1.Disk) sandbox.Disk {
	d := sandbox.Disk{ID: p.GetId(), ReadOnly: p.GetReadOnly(), QoS: QoSFromProto(p.GetQos())}
	switch src := p.GetSource().(type) {
	case *apiv1.Disk_Path:
		d.Path = src.Path
	case *apiv1.Disk_Rbd:
		if src.Rbd != nil {
			d.RBD = &sandbox.RBDImage{Pool: src.Rbd.GetPool(), Image: src.Rbd.GetImage(), User: src.Rbd.GetUser(), Key: src.Rbd.GetKey()}
		}
	}
	return d
}

// DiskToProto renders a Disk.
func DiskToProto(d sandbox.Disk) *apiv1.Disk {
	p := &apiv1.Disk{Id: d.ID, ReadOnly: d.ReadOnly, Qos: QoSToProto(d.QoS)}
	switch {
	case d.RBD != nil:
		// Never the key.
		p.Source = &apiv1.Disk_Rbd{Rbd: &apiv1.RBDImage{Pool: d.RBD.Pool, Image: d.RBD.Image, User: d.RBD.User}}
	case d.Path != "":
		p.Source = &apiv1.Disk_Path{Path: d.Path}
	}
	return p
}

var sandboxStateToProto = map[sandbox.State]apiv1.Sandbox_State{
	sandbox.StateCreating: apiv1.Sandbox_CREATING,
	sandbox.StateReady:    apiv1.Sandbox_READY,
	sandbox.StateStopping: apiv1.Sandbox_STOPPING,
	sandbox.StateStopped:  apiv1.Sandbox_STOPPED,
	sandbox.StateFailed:   apiv1.Sandbox_FAILED,
}

var eventTypeToProto = map[sandbox.EventType]apiv1.SandboxEvent_Type{
	sandbox.EventState:        apiv1.SandboxEvent_STATE,
	sandbox.EventDiskAttached: apiv1.SandboxEvent_DISK_ATTACHED,
	sandbox.EventDiskDetached: apiv1.SandboxEvent_DISK_DETACHED,
	sandbox.EventDeleted:      apiv1.SandboxEvent_DELETED,
	sandbox.EventOOMKill:      apiv1.SandboxEvent_OOM_KILL,
}

// SandboxToProto renders a Sandbox.
func SandboxToProto(s sandbox.Sandbox) *apiv1.Sandbox {
	p := &apiv1.Sandbox{
		Spec: SpecToProto(s.Spec), State: sandboxStateToProto[s.State], Reason: s.Reason,
		Pid: int32(s.PID), Accel: s.Accel, Addresses: s.Addresses, WorkDir: s.WorkDir,
		CreatedAt: timestamp(s.CreatedAt), ReadyAt: timestamp(s.ReadyAt), Cgroup: s.Cgroup,
		Start: s.Start,
	}
	if !s.Resources.IsZero() {
		p.Resources = ResourcesToProto(s.Resources)
	}
	for _, d := range s.Disks {
		p.Disks = append(p.Disks, DiskToProto(d))
	}
	return p
}

// EventToProto renders an Event.
func EventToProto(e sandbox.Event) *apiv1.SandboxEvent {
	p := &apiv1.SandboxEvent{Time: timestamp(e.Time), Type: eventTypeToProto[e.Type], Group: e.Group}
	if e.Group == "" {
		p.Sandbox = SandboxToProto(e.Sandbox)
	}
	if e.Disk != nil {
		p.Disk = DiskToProto(*e.Disk)
	}
	return p
}

// timestamp leaves a zero time unset.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
