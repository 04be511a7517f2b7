package sandbox_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

func ptr[T any](v T) *T { return &v }

// cpuOver measures the sandbox's CPU use over d from its cgroup's own
// accounting (GetSandboxStats), in CPUs.
func (e *env) cpuOver(id string, d time.Duration) (float64, *apiv1.ResourceStats) {
	e.t.Helper()
	s0, err := e.cl.GetSandboxStats(e.ctx, &apiv1.GetSandboxStatsRequest{Id: id})
	if err != nil {
		e.t.Fatal(err)
	}
	t0 := time.Now()
	time.Sleep(d)
	s1, err := e.cl.GetSandboxStats(e.ctx, &apiv1.GetSandboxStatsRequest{Id: id})
	if err != nil {
		e.t.Fatal(err)
	}
	return float64(s1.CpuUsageNs-s0.CpuUsageNs) / float64(time.Since(t0).Nanoseconds()), s1
}

// readRate reads n MiB of the guest's disk from offset MiB (in 64 KiB
// blocks, past anything read before so that no cache answers) and
// returns the rate the guest saw (busybox time -p around dd), in bytes
// per second.
func (e *env) readRate(id, disk string, offsetMiB, n int) float64 {
	e.t.Helper()
	_, errOut, rc := e.exec(id, "", "sh", "-c", findDisk+fmt.Sprintf("dev=$(find_disk %s) || exit 1; time -p sh -c 'dd if=$0 of=/dev/null bs=65536 skip=%d count=%d 2>/dev/null' $dev", disk, offsetMiB*16, n*16))
	var secs float64
	for _, l := range strings.Split(errOut, "\n") {
		if v, ok := strings.CutPrefix(l, "real "); ok {
			secs, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if rc != 0 || secs <= 0 {
		e.t.Fatalf("read %s in %s: exit %d: %s", disk, id, rc, errOut)
	}
	return float64(n<<20) / secs
}

// A sandbox's CPU quota and its disk's QoS hold, and change live; stats
// read back what the kernel and QEMU count; what the kernel or this
// host cannot do is refused with the right code; the VM can sit under
// another cgroup parent (a pod's).
func TestSandboxResources(t *testing.T) {
	e := newEnv(t)
	disk := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 128<<20); err != nil {
		t.Fatal(err)
	}
	podCgroup := "/nodeinfra-e2e-pod-" + randHex(4)
	t.Cleanup(func() {
		// The sandbox first (its cgroup goes with it), then the pod's.
		_, _ = e.cl.DeleteSandbox(context.Background(), &apiv1.DeleteSandboxRequest{Id: "vm-quota"})
		if left, err := removeCgroupParent(podCgroup); err != nil || len(left) > 0 {
			t.Errorf("pod cgroup %s: left %v, %v", podCgroup, left, err)
		}
	})
	const rate = 4 << 20
	s := e.create(&apiv1.SandboxSpec{Id: "vm-quota", CgroupParent: podCgroup,
		Resources: &apiv1.Resources{Cpus: ptr(0.5)},
		Disks: []*apiv1.Disk{{Id: "data", Source: &apiv1.Disk_Path{Path: disk},
			Qos: &apiv1.DiskQoS{ReadBps: rate}}}})
	if !strings.HasPrefix(s.Cgroup, podCgroup+"/") || s.GetResources().GetCpus() != 0.5 || s.GetResources().GetPids() != 1024 {
		t.Errorf("sandbox cgroup %q resources %v", s.Cgroup, s.GetResources())
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", s.Pid)); err != nil || !strings.Contains(string(b), ":cpu:"+s.Cgroup+"\n") && !strings.Contains(string(b), ":cpu,cpuacct:"+s.Cgroup+"\n") && !strings.Contains(string(b), "::"+s.Cgroup+"\n") {
		t.Errorf("QEMU is not in %s: %s (%v)", s.Cgroup, b, err)
	}

	t.Run("cpu quota", func(t *testing.T) {
		// Busy loops on the guest's vCPU, detached from the exec.
		e.sh("vm-quota", "for i in 1 2; do (while :; do :; done) >/dev/null 2>&1 </dev/null & echo $! >>/loops; done")
		cpu, st := e.cpuOver("vm-quota", 5*time.Second)
		t.Logf("at 0.5 CPU: %.3f CPU over 5 s (throttled %d of %d periods)", cpu, st.CpuThrottledPeriods, st.CpuPeriods)
		if cpu < 0.45 || cpu > 0.55 {
			t.Errorf("a CPU-bound guest at 0.5 CPU used %.3f CPU", cpu)
		}
		if st.CpuThrottledPeriods == 0 {
			t.Errorf("no throttled periods: %v", st)
		}
		sb, err := e.cl.UpdateSandboxResources(e.ctx, &apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{Cpus: ptr(0.2)}})
		if err != nil {
			t.Fatal(err)
		}
		if sb.GetResources().GetCpus() != 0.2 || sb.GetResources().GetMemoryBytes() == 0 {
			t.Errorf("resources after update: %v", sb.GetResources())
		}
		time.Sleep(300 * time.Millisecond)
		cpu, _ = e.cpuOver("vm-quota", 5*time.Second)
		t.Logf("live update to 0.2 CPU: %.3f CPU over 5 s", cpu)
		if cpu < 0.15 || cpu > 0.25 {
			t.Errorf("after a live update to 0.2 CPU the guest used %.3f CPU", cpu)
		}
		if out := e.sh("vm-quota", "echo alive"); strings.TrimSpace(out) != "alive" {
			t.Errorf("guest after the update: %q", out)
		}
		// Give the rest of the test its CPU back.
		if _, err := e.cl.UpdateSandboxResources(e.ctx, &apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{Cpus: ptr(1.0)}}); err != nil {
			t.Fatal(err)
		}
		e.sh("vm-quota", "kill $(cat /loops)")
	})

	// A live update is in the record by the time the agent stops, even
	// one made just before SIGTERM (the record is written in the
	// background, batched): the next agent reports it, and the kernel
	// still holds it.
	t.Run("limits across an agent restart", func(t *testing.T) {
		if _, err := e.cl.UpdateSandboxResources(e.ctx, &apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{Cpus: ptr(0.9), Pids: ptr(int64(900))}}); err != nil {
			t.Fatal(err)
		}
		e.Agent.Stop()
		if err := e.Agent.Start(); err != nil {
			t.Fatal(err)
		}
		sb := e.waitState("vm-quota", apiv1.Sandbox_READY, 30*time.Second)
		if r := sb.GetResources(); r.GetCpus() != 0.9 || r.GetPids() != 900 {
			t.Errorf("resources after the restart: %v, want cpus 0.9 and pids 900", r)
		}
		st, err := e.cl.GetSandboxStats(e.ctx, &apiv1.GetSandboxStatsRequest{Id: "vm-quota"})
		if err != nil || st.GetPidsLimit() != 900 {
			t.Errorf("the kernel's pids limit after the restart: %d, %v", st.GetPidsLimit(), err)
		}
	})

	t.Run("disk qos", func(t *testing.T) {
		got := e.readRate("vm-quota", "data", 0, 12)
		t.Logf("read throttled to %d MiB/s: %.2f MiB/s", rate>>20, got/(1<<20))
		if got < rate*0.85 || got > rate*1.15 {
			t.Errorf("read at %.2f MiB/s on a disk throttled to %d MiB/s", got/(1<<20), rate>>20)
		}
		if _, err := e.cl.UpdateSandboxResources(e.ctx, &apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota",
			DiskQos: map[string]*apiv1.DiskQoS{"data": {ReadBps: 2 * rate}}}); err != nil {
			t.Fatal(err)
		}
		got = e.readRate("vm-quota", "data", 16, 16)
		t.Logf("after a live change to %d MiB/s: %.2f MiB/s", 2*rate>>20, got/(1<<20))
		if got < 2*rate*0.85 || got > 2*rate*1.15 {
			t.Errorf("read at %.2f MiB/s after a live change to %d MiB/s", got/(1<<20), 2*rate>>20)
		}
		if d := e.get("vm-quota").Disks[0]; d.GetQos().GetReadBps() != 2*rate {
			t.Errorf("the disk's recorded QoS: %v", d.GetQos())
		}
		st, err := e.cl.GetSandboxStats(e.ctx, &apiv1.GetSandboxStatsRequest{Id: "vm-quota"})
		if err != nil {
			t.Fatal(err)
		}
		var seen bool
		for _, d := range st.Io {
			if d.Device == "data" {
				seen = d.ReadBytes >= 24<<20
			}
		}
		if !seen || st.MemoryBytes == 0 || st.Pids == 0 || st.MemoryLimitBytes == 0 || st.Cgroup != s.Cgroup {
			t.Errorf("stats: %v", st)
		}
	})

	t.Run("hot-plug qos", func(t *testing.T) {
		extra := filepath.Join(t.TempDir(), "extra.img")
		if err := os.WriteFile(extra, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(extra, 64<<20); err != nil {
			t.Fatal(err)
		}
		if _, err := e.cl.AttachDisk(e.ctx, &apiv1.AttachDiskRequest{SandboxId: "vm-quota",
			Disk: &apiv1.Disk{Id: "extra", Source: &apiv1.Disk_Path{Path: extra}, Qos: &apiv1.DiskQoS{ReadBps: rate}}}); err != nil {
			t.Fatal(err)
		}
		got := e.readRate("vm-quota", "extra", 0, 12)
		t.Logf("hot-plugged disk throttled to %d MiB/s: %.2f MiB/s", rate>>20, got/(1<<20))
		if got < rate*0.85 || got > rate*1.15 {
			t.Errorf("read at %.2f MiB/s on a hot-plugged disk throttled to %d MiB/s", got/(1<<20), rate>>20)
		}
		if _, err := e.cl.DetachDisk(e.ctx, &apiv1.DetachDiskRequest{SandboxId: "vm-quota", DiskId: "extra"}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("memory overhead", func(t *testing.T) {
		// The guest fills most of its 128 MiB (its root file system is in
		// RAM): what the cgroup was charged on top is QEMU's own.
		e.sh("vm-quota", "dd if=/dev/zero of=/fill bs=1048576 count=96 2>/dev/null; rm /fill")
		st, err := e.cl.GetSandboxStats(e.ctx, &apiv1.GetSandboxStatsRequest{Id: "vm-quota"})
		if err != nil {
			t.Fatal(err)
		}
		// Guest RAM is a memfd (RssShmem); QEMU's own memory, the TCG
		// translation cache included, is anonymous (RssAnon) or file.
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.Pid))
		var rss []string
		for _, l := range strings.Split(string(status), "\n") {
			if strings.HasPrefix(l, "Rss") {
				rss = append(rss, strings.Join(strings.Fields(l), " "))
			}
		}
		t.Logf("guest 128 MiB, filled: cgroup max %d MiB; QEMU %s (overhead = anon + file; default allowance 256 MiB, --memory-overhead)",
			st.MemoryMaxBytes>>20, strings.Join(rss, ", "))
		if st.MemoryMaxBytes >= st.MemoryLimitBytes {
			t.Errorf("the sandbox reached its memory limit: %v", st)
		}
	})

	t.Run("refused", func(t *testing.T) {
		before := e.get("vm-quota").GetResources()
		for name, c := range map[string]struct {
			req  *apiv1.UpdateSandboxResourcesRequest
			want codes.Code
		}{
			"quota under 1 ms":       {&apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{Cpus: ptr(0.001)}}, codes.InvalidArgument},
			"negative pids":          {&apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{Pids: ptr(int64(-5))}}, codes.InvalidArgument},
			"memory under usage":     {&apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{MemoryBytes: ptr(int64(1 << 20))}}, codes.InvalidArgument},
			"unknown device":         {&apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{Io: []*apiv1.DeviceIOLimit{{Device: "/dev/nonexistent", ReadBps: 1}}}}, codes.InvalidArgument},
			"unknown disk":           {&apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", DiskQos: map[string]*apiv1.DiskQoS{"nope": {ReadBps: 1}}}, codes.NotFound},
			"unknown sandbox":        {&apiv1.UpdateSandboxResourcesRequest{Id: "nope", Resources: &apiv1.Resources{Cpus: ptr(1.0)}}, codes.NotFound},
			"bad cpuset":             {&apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{CpusetCpus: ptr("1-0x")}}, codes.InvalidArgument},
			"half bad, nothing done": {&apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{Cpus: ptr(0.3), MemoryBytes: ptr(int64(1 << 20))}}, codes.InvalidArgument},
		} {
			_, err := e.cl.UpdateSandboxResources(e.ctx, c.req)
			if code(err) != c.want {
				t.Errorf("%s: %v, want %s", name, err, c.want)
			} else {
				t.Logf("%s: %v", name, err)
			}
		}
		if after := e.get("vm-quota").GetResources(); !proto.Equal(after, before) {
			t.Errorf("resources after refused updates: %v, want %v (nothing half-applied)", after, before)
		}
		// An IO weight where the group's IO controller has a weight file
		// (BFQ's, in child groups here), else FailedPrecondition.
		want := ioWeightCode(s.Cgroup)
		_, err := e.cl.UpdateSandboxResources(e.ctx, &apiv1.UpdateSandboxResourcesRequest{Id: "vm-quota", Resources: &apiv1.Resources{IoWeight: ptr(uint64(100))}})
		if code(err) != want {
			t.Errorf("io weight: %v, want %s", err, want)
		}
		if _, err := e.cl.CreateSandbox(e.ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "vm-bad", CgroupParent: "../etc"}}); code(err) != codes.InvalidArgument {
			t.Errorf("create under cgroup parent ../etc: %v", err)
		}
	})

	// The CLI's verbs over the same API.
	out := e.CLI("sandbox", "update", "vm-quota", "--cpus", "0.75", "--memory", "512Mi", "--disk-qos", "data:read-bps=1Mi,write-iops=100")
	if !strings.Contains(out, "vm-quota") {
		t.Errorf("sandbox update printed %q", out)
	}
	if r := e.get("vm-quota").GetResources(); r.GetCpus() != 0.75 || r.GetMemoryBytes() != 512<<20 {
		t.Errorf("after the CLI's update: %v", r)
	}
	if out := e.CLI("sandbox", "stats", "vm-quota"); !strings.Contains(out, "MEMORY") || !strings.Contains(out, "data") {
		t.Errorf("sandbox stats printed %q", out)
	}
	e.deleteSandbox("vm-quota")
}

// ioWeightCode is what an IO weight of cgroup p gets on this host:
// FailedPrecondition where its IO controller has no weight file (CFQ's or
// BFQ's on v1, io.weight or io.bfq.weight on v2), OK where it has one.
func ioWeightCode(p string) codes.Code {
	for _, f := range []string{"/sys/fs/cgroup/blkio" + p + "/blkio.weight", "/sys/fs/cgroup/blkio" + p + "/blkio.bfq.weight",
		"/sys/fs/cgroup" + p + "/io.weight", "/sys/fs/cgroup" + p + "/io.bfq.weight"} {
		if _, err := os.Stat(f); err == nil {
			return codes.OK
		}
	}
	return codes.FailedPrecondition
}

// removeCgroupParent removes a cgroup from every v1 hierarchy (or the v2
// one) and reports the children left in it.
func removeCgroupParent(p string) ([]string, error) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", p))
	if len(dirs) == 0 {
		dirs = []string{filepath.Join("/sys/fs/cgroup", p)}
	}
	var left []string
	var last error
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, en := range ents {
			if en.IsDir() {
				left = append(left, filepath.Join(d, en.Name()))
			}
		}
		if err := syscall.Rmdir(d); err != nil && !os.IsNotExist(err) {
			last = err
		}
	}
	return left, last
}

// Host process groups through the API and the CLI: a memory hog is
// OOM-killed and the kill arrives on WatchEvents within a second.
func TestHostGroupOOMEvent(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3 for the memory hog")
	}
	e := newEnv(t)
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	events, err := e.cl.WatchEvents(ctx, &apiv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Header(); err != nil {
		t.Fatal(err)
	}
	out := e.CLI("group", "create", "hog", "--memory", "32Mi", "--pids", "64")
	if !strings.Contains(out, "hog") {
		t.Errorf("group create printed %q", out)
	}
	hog := exec.Command("python3", "-c", "import sys; sys.stdin.readline(); b = b'a' * (256 << 20); print(len(b))")
	in, _ := hog.StdinPipe()
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hog.Process.Kill() }()
	e.CLI("group", "add", "hog", fmt.Sprint(hog.Process.Pid))
	if out := e.CLI("group", "list"); !strings.Contains(out, fmt.Sprint(hog.Process.Pid)) {
		t.Errorf("group list does not show the process: %q", out)
	}
	in.Write([]byte("go\n"))
	_ = hog.Wait()
	killed := time.Now()
	got := make(chan *apiv1.SandboxEvent, 1)
	go func() {
		for {
			ev, err := events.Recv()
			if err != nil {
				close(got)
				return
			}
			if ev.Type == apiv1.SandboxEvent_OOM_KILL {
				got <- ev
				return
			}
		}
	}()
	select {
	case ev, ok := <-got:
		if !ok || ev.Group != "hog" {
			t.Fatalf("event %v", ev)
		}
		t.Logf("OOM_KILL of group %s arrived %v after the hog's death was seen", ev.Group, time.Since(killed).Round(time.Millisecond))
	case <-time.After(time.Second):
		t.Fatal("no OOM_KILL event within 1 s")
	}
	if out := e.CLI("group", "stats", "hog"); !strings.Contains(out, "1 OOM kills") {
		t.Errorf("group stats: %q", out)
	}
	e.CLI("group", "delete", "hog")
	if out := e.CLI("group", "list"); strings.Contains(out, "hog") {
		t.Errorf("group left: %q", out)
	}
}

// A guest that outgrows its sandbox's memory limit has its QEMU killed by
// the OOM killer: the sandbox is Failed and the kill arrives on
// WatchEvents.
func TestSandboxOOMEvent(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	events, err := e.cl.WatchEvents(ctx, &apiv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := events.Header(); err != nil {
		t.Fatal(err)
	}
	e.create(&apiv1.SandboxSpec{Id: "vm-oom"})
	st, err := e.cl.GetSandboxStats(e.ctx, &apiv1.GetSandboxStatsRequest{Id: "vm-oom"})
	if err != nil {
		t.Fatal(err)
	}
	limit := int64(st.MemoryBytes) + 16<<20
	if _, err := e.cl.UpdateSandboxResources(e.ctx, &apiv1.UpdateSandboxResourcesRequest{Id: "vm-oom", Resources: &apiv1.Resources{MemoryBytes: &limit}}); err != nil {
		t.Fatal(err)
	}
	// The guest fills its RAM-backed root: QEMU's memfd grows past the limit.
	// Its exec ends with the guest: no answer to wait for.
	fill, err := e.cl.Exec(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := fill.Send(&apiv1.ExecRequest{Kind: &apiv1.ExecRequest_Start{Start: &apiv1.ExecStart{SandboxId: "vm-oom",
		Argv: []string{"sh", "-c", "dd if=/dev/zero of=/fill bs=1048576 count=110"}}}}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(60 * time.Second)
	for {
		got := make(chan *apiv1.SandboxEvent, 1)
		go func() {
			ev, err := events.Recv()
			if err != nil {
				close(got)
				return
			}
			got <- ev
		}()
		select {
		case ev, ok := <-got:
			if !ok {
				t.Fatal("watch ended")
			}
			if ev.Type == apiv1.SandboxEvent_OOM_KILL && ev.GetSandbox().GetSpec().GetId() == "vm-oom" {
				t.Logf("OOM_KILL of sandbox vm-oom at %s", ev.Time.AsTime().Format(time.StampMilli))
				s := e.waitState("vm-oom", apiv1.Sandbox_FAILED, 10*time.Second)
				t.Logf("sandbox: %s (%s)", s.State, s.Reason)
				return
			}
		case <-deadline:
			t.Fatalf("no OOM_KILL event; sandbox %v", e.get("vm-oom"))
		}
	}
}
