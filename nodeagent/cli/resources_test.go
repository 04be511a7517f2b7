package cli

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

func (f *fakeAgent) UpdateSandboxResources(_ context.Context, req *apiv1.UpdateSandboxResourcesRequest) (*apiv1.Sandbox, error) {
	if err := f.got("UpdateSandboxResources", req); err != nil {
		return nil, err
	}
	return &apiv1.Sandbox{Spec: &apiv1.SandboxSpec{Id: req.Id}, State: apiv1.Sandbox_READY, Resources: req.Resources}, nil
}

func (f *fakeAgent) GetSandboxStats(_ context.Context, req *apiv1.GetSandboxStatsRequest) (*apiv1.ResourceStats, error) {
	if err := f.got("GetSandboxStats", req); err != nil {
		return nil, err
	}
	return &apiv1.ResourceStats{CpuUsageNs: 1500000000, MemoryBytes: 64 << 20, MemoryLimitBytes: 384 << 20, Pids: 7, OomKills: 2,
		Cgroup: "/nodeagent/sandbox-" + req.Id, Io: []*apiv1.DeviceIOStats{{Device: "data", ReadBytes: 1 << 20, ReadOps: 16}}}, nil
}

func (f *fakeAgent) CreateGroup(_ context.Context, req *apiv1.CreateGroupRequest) (*apiv1.Group, error) {
	if err := f.got("CreateGroup", req); err != nil {
		return nil, err
	}
	return &apiv1.Group{Name: req.Name, Resources: req.Resources, Cgroup: "/nodeagent/group-" + req.Name}, nil
}

func (f *fakeAgent) AddProcess(_ context.Context, req *apiv1.AddProcessRequest) (*apiv1.Group, error) {
	if err := f.got("AddProcess", req); err != nil {
		return nil, err
	}
	return &apiv1.Group{Name: req.Name, Pids: []int32{req.Pid}}, nil
}

func (f *fakeAgent) ListGroups(_ context.Context, req *apiv1.ListGroupsRequest) (*apiv1.ListGroupsResponse, error) {
	if err := f.got("ListGroups", req); err != nil {
		return nil, err
	}
	cpus := 1.5
	return &apiv1.ListGroupsResponse{Groups: []*apiv1.Group{{Name: "mysql-1", Resources: &apiv1.Resources{Cpus: &cpus}, Pids: []int32{42, 43}}}}, nil
}

func (f *fakeAgent) DeleteGroup(_ context.Context, req *apiv1.DeleteGroupRequest) (*apiv1.DeleteGroupResponse, error) {
	if err := f.got("DeleteGroup", req); err != nil {
		return nil, err
	}
	return &apiv1.DeleteGroupResponse{}, nil
}

func TestSandboxUpdateFlags(t *testing.T) {
	f := &fakeAgent{}
	serveFake(t, f)
	cpus, mem, pids := 0.5, int64(512<<20), int64(100)
	for _, tc := range []struct {
		args  []string
		want  *apiv1.UpdateSandboxResourcesRequest
		usage bool
	}{
		{args: []string{"web-1", "--cpus", "0.5", "--memory", "512Mi", "--pids", "100"},
			want: &apiv1.UpdateSandboxResourcesRequest{Id: "web-1", Resources: &apiv1.Resources{Cpus: &cpus, MemoryBytes: &mem, Pids: &pids}}},
		{args: []string{"web-1", "--io-read-bps", "/dev/vda=10Mi", "--io-write-iops", "/dev/vda=100", "--disk-qos", "data:read-bps=1Mi,write-iops=50"},
			want: &apiv1.UpdateSandboxResourcesRequest{Id: "web-1",
				Resources: &apiv1.Resources{Io: []*apiv1.DeviceIOLimit{{Device: "/dev/vda", ReadBps: 10 << 20, WriteIops: 100}}},
				DiskQos:   map[string]*apiv1.DiskQoS{"data": {ReadBps: 1 << 20, WriteIops: 50}}}},
		{args: []string{"web-1"}, usage: true},
		{args: []string{"web-1", "--memory", "lots"}, usage: true},
		{args: []string{"web-1", "--io-read-bps", "10Mi"}, usage: true},
		{args: []string{"web-1", "--disk-qos", "read-bps=1"}, usage: true},
		{args: []string{"web-1", "--disk-qos", "data:speed=1"}, usage: true},
		{args: []string{"web-1", "--cpus", "x"}, usage: true},
	} {
		code, _, errOut := runCaptured(t, "", append([]string{"sandbox", "update"}, tc.args...)...)
		if tc.usage {
			if code != 2 {
				t.Errorf("update %q: exit %d (%s), want 2", tc.args, code, errOut)
			}
			continue
		}
		if got := f.request("UpdateSandboxResources"); code != 0 || !proto.Equal(got, tc.want) {
			t.Errorf("update %q: exit %d (%s), sent %v, want %v", tc.args, code, errOut, got, tc.want)
		}
	}
	// create and attach take the same limits and QoS.
	if code, _, errOut := runCaptured(t, "", "sandbox", "create", "db", "--disk", "/dev/sdb", "--cpus", "2", "--memory-limit", "1Gi",
		"--disk-qos", "disk0:read-iops=300", "--cgroup-parent", "/kubepods/pod1"); code != 0 {
		t.Fatalf("create: exit %d: %s", code, errOut)
	}
	spec := f.request("CreateSandbox").(*apiv1.CreateSandboxRequest).GetSpec()
	if spec.GetResources().GetCpus() != 2 || spec.GetResources().GetMemoryBytes() != 1<<30 || spec.GetDisks()[0].GetQos().GetReadIops() != 300 ||
		spec.GetDisks()[0].GetId() != "disk0" || spec.GetCgroupParent() != "/kubepods/pod1" {
		t.Errorf("create sent %v", spec)
	}
	if code, _, _ := runCaptured(t, "", "sandbox", "create", "db", "--disk", "/dev/sdb", "--disk-qos", "disk7:read-iops=1"); code != 2 {
		t.Errorf("create with QoS for a disk it has not: exit %d, want 2", code)
	}
	if code, _, errOut := runCaptured(t, "", "sandbox", "attach", "box", "--disk", "/dev/sdc", "--id", "logs", "--disk-qos", "write-bps=5Mi"); code != 0 {
		t.Fatalf("attach: exit %d: %s", code, errOut)
	}
	if d := f.request("AttachDisk").(*apiv1.AttachDiskRequest).GetDisk(); d.GetQos().GetWriteBps() != 5<<20 {
		t.Errorf("attach sent %v", d)
	}
}

func TestSandboxStatsAndGroups(t *testing.T) {
	f := &fakeAgent{}
	serveFake(t, f)
	code, out, errOut := runCaptured(t, "", "sandbox", "stats", "box")
	if code != 0 || !strings.Contains(out, "/nodeagent/sandbox-box") || !strings.Contains(out, "2 OOM kills") || !strings.Contains(out, "data") {
		t.Errorf("stats: exit %d: %s%s", code, out, errOut)
	}
	if code, out, _ := runCaptured(t, "", "sandbox", "stats", "box", "-o", "json"); code != 0 || !strings.Contains(out, `"oomKills"`) {
		t.Errorf("stats -o json: exit %d: %s", code, out)
	}
	if code, _, errOut := runCaptured(t, "", "group", "create", "mysql-1", "--cpus", "2", "--memory", "4Gi"); code != 0 {
		t.Fatalf("group create: exit %d: %s", code, errOut)
	}
	if r := f.request("CreateGroup").(*apiv1.CreateGroupRequest); r.GetName() != "mysql-1" || r.GetResources().GetMemoryBytes() != 4<<30 {
		t.Errorf("group create sent %v", r)
	}
	if code, _, _ := runCaptured(t, "", "group", "add", "mysql-1", "4242"); code != 0 || f.request("AddProcess").(*apiv1.AddProcessRequest).GetPid() != 4242 {
		t.Errorf("group add: exit %d", code)
	}
	if code, _, _ := runCaptured(t, "", "group", "add", "mysql-1", "-3"); code != 2 {
		t.Errorf("group add -3: exit %d, want 2", code)
	}
	if code, out, _ := runCaptured(t, "", "group", "list"); code != 0 || !strings.Contains(out, "mysql-1") || !strings.Contains(out, "42,43") {
		t.Errorf("group list: exit %d: %s", code, out)
	}
	if code, _, _ := runCaptured(t, "", "group", "update", "mysql-1"); code != 2 {
		t.Errorf("group update without a limit: exit %d, want 2", code)
	}
	if code, _, _ := runCaptured(t, "", "group", "delete", "mysql-1", "--force"); code != 0 || !f.request("DeleteGroup").(*apiv1.DeleteGroupRequest).GetForce() {
		t.Errorf("group delete --force: exit %d", code)
	}
}
