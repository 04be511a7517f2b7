package server

import (
	"context"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/groups"
)

// GroupServer serves apiv1.GroupService from a groups.Manager.
type GroupServer struct {
	apiv1.UnimplementedGroupServiceServer
	M *groups.Manager
}

var _ apiv1.GroupServiceServer = (*GroupServer)(nil)

// NewGroupServer returns a GroupServer for m.
func NewGroupServer(m *groups.Manager) *GroupServer { return &GroupServer{M: m} }

// GroupToProto renders a Group.
func GroupToProto(g groups.Group) *apiv1.Group {
	p := &apiv1.Group{Name: g.Name, Resources: ResourcesToProto(g.Resources), Cgroup: g.Cgroup, CreatedAt: timestamp(g.CreatedAt)}
	for _, pid := range g.PIDs {
		p.Pids = append(p.Pids, int32(pid))
	}
	return p
}

// CreateGroup implements apiv1.GroupServiceServer.
func (s *GroupServer) CreateGroup(ctx context.Context, req *apiv1.CreateGroupRequest) (*apiv1.Group, error) {
	r, err := ResourcesFromProto(req.GetResources())
	if err != nil {
		return nil, err
	}
	g, err := s.M.Create(req.GetName(), r)
	if err != nil {
		return nil, err
	}
	return GroupToProto(g), nil
}

// AddProcess implements apiv1.GroupServiceServer.
func (s *GroupServer) AddProcess(ctx context.Context, req *apiv1.AddProcessRequest) (*apiv1.Group, error) {
	g, err := s.M.AddProcess(req.GetName(), int(req.GetPid()))
	if err != nil {
		return nil, err
	}
	return GroupToProto(g), nil
}

// UpdateGroup implements apiv1.GroupServiceServer.
func (s *GroupServer) UpdateGroup(ctx context.Context, req *apiv1.UpdateGroupRequest) (*apiv1.Group, error) {
	r, err := ResourcesFromProto(req.GetResources())
	if err != nil {
		return nil, err
	}
	g, err := s.M.Update(req.GetName(), r)
	if err != nil {
		return nil, err
	}
	return GroupToProto(g), nil
}

// GetGroup implements apiv1.GroupServiceServer.
func (s *GroupServer) GetGroup(ctx context.Context, req *apiv1.GetGroupRequest) (*apiv1.Group, error) {
	g, err := s.M.Get(req.GetName())
	if err != nil {
		return nil, err
	}
	return GroupToProto(g), nil
}

// GetGroupStats implements apiv1.GroupServiceServer.
func (s *GroupServer) GetGroupStats(ctx context.Context, req *apiv1.GetGroupStatsRequest) (*apiv1.ResourceStats, error) {
	st, path, err := s.M.Stats(req.GetName())
	if err != nil {
		return nil, err
	}
	return StatsToProto(st, path, nil, 0, 0), nil
}

// ListGroups implements apiv1.GroupServiceServer.
func (s *GroupServer) ListGroups(ctx context.Context, req *apiv1.ListGroupsRequest) (*apiv1.ListGroupsResponse, error) {
	resp := &apiv1.ListGroupsResponse{}
	for _, g := range s.M.List() {
		resp.Groups = append(resp.Groups, GroupToProto(g))
	}
	return resp, nil
}

// DeleteGroup implements apiv1.GroupServiceServer.
func (s *GroupServer) DeleteGroup(ctx context.Context, req *apiv1.DeleteGroupRequest) (*apiv1.DeleteGroupResponse, error) {
	if err := s.M.Delete(req.GetName(), req.GetForce()); err != nil {
		return nil, err
	}
	return &apiv1.DeleteGroupResponse{}, nil
}
