package server

import (
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/eni"
	"github.com/nodeinfra/nodeinfra/pkg/eniconfig"
)

// ConfigFromProto parses the text forms of an ENIConfig.
func ConfigFromProto(p *apiv1.ENIConfig) (eni.Config, error) {
	vpc, spec, err := eniconfig.FromProto(p)
	return eni.Config{VPC: vpc, Spec: spec}, err
}

// ConfigToProto renders a Config.
func ConfigToProto(c eni.Config) *apiv1.ENIConfig { return eniconfig.ToProto(c.VPC, c.Spec) }

var stateToProto = map[eni.State]apiv1.ENIState{
	eni.StateFree:      apiv1.ENIState_ENI_STATE_FREE,
	eni.StateAttaching: apiv1.ENIState_ENI_STATE_ATTACHING,
	eni.StateAttached:  apiv1.ENIState_ENI_STATE_ATTACHED,
	eni.StateMissing:   apiv1.ENIState_ENI_STATE_MISSING,
}

func attachmentToProto(a eni.Attachment) *apiv1.Attachment {
	return &apiv1.Attachment{
		ContainerId: a.ContainerID, Ifname: a.IfName, Netns: a.Netns,
		PodNamespace: a.Pod.Namespace, PodName: a.Pod.Name, Mac: a.MAC,
		Confirmed: a.Confirmed, CreatedUnixNano: a.Created.UnixNano(),
	}
}

func eniToProto(e eni.ENI) *apiv1.ENI {
	p := &apiv1.ENI{Config: ConfigToProto(e.Config), State: stateToProto[e.State]}
	if e.AssignedPod != nil {
		p.AssignedPod = e.AssignedPod.String()
	}
	if e.Attachment != nil {
		p.Attachment = attachmentToProto(*e.Attachment)
	}
	return p
}

func assignmentToProto(a eni.Assignment) *apiv1.Assignment {
	p := &apiv1.Assignment{PodNamespace: a.Pod.Namespace, PodName: a.Pod.Name}
	if a.MAC != "" {
		p.Target = &apiv1.Assignment_Mac{Mac: a.MAC}
	} else {
		p.Target = &apiv1.Assignment_Vpc{Vpc: a.VPC}
	}
	return p
}
