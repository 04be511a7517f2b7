package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// The agent's metrics endpoint inside the node namespace (each run has a
// node namespace of its own, so the fixed port collides with nobody).
const (
	metricsAddr = "127.0.0.1:9842"
	probeAddr   = "127.0.0.1:9807"
)

// Scripts of the project's Ceph test cluster, relative to the repository
// root (the working directory of `make soak`).
const (
	cephUp   = "e2e/setup/ceph-up.sh"
	cephDown = "e2e/setup/ceph-down.sh"
)

// The VPC the soak's ENIs belong to.
var vpcGateway = netip.MustParsePrefix("10.77.0.1/24")

// env is one simulated node under soak: a fabric node namespace with the
// agent and its ENIs, pod namespaces, csi-ceph on a Ceph cluster of its
// own, and the steps that take all of it down again.
type env struct {
	o   options
	dir string // this run's directory: everything it puts on disk
	tag string // this run's: cgroup parent, sandbox IDs, volume names

	teardown []step

	fab          *fabric.Fabric
	agent        *daemon
	cl           *agentclient.Client
	rt           *fabric.Runtime
	cniPods      []*fabric.Pod // ADDed and DELed over and over
	vmPods       []*fabric.Pod // netns of the networked sandboxes
	added        map[*fabric.Pod]bool
	cgroupParent string
	agentState   string
	cniCache     string
	sandboxSeq   int

	cephDone chan struct{}
	ceph     *testutil.CephCluster
	cephErr  error
	csi      *daemon
	csiState string
	csiConn  *grpc.ClientConn
	ctrl     csi.ControllerClient
	node     csi.NodeClient
	volumes  []string        // volume IDs
	staged   map[string]bool // volume ID → staged now
}

// step is one piece of teardown.
type step struct {
	name string
	f    func() error
}

// onTeardown adds a step; steps run in reverse order.
func (e *env) onTeardown(name string, f func() error) {
	e.teardown = append(e.teardown, step{name, f})
}

// close runs the teardown, every step even when one fails, and reports
// the failures on stderr.
func (e *env) close() {
	for i := len(e.teardown) - 1; i >= 0; i-- {
		s := e.teardown[i]
		if err := s.f(); err != nil {
			fmt.Fprintf(os.Stderr, "soak: teardown: %s: %v\n", s.name, err)
		}
	}
	e.teardown = nil
}

func sandboxPrefix(tag string) string { return "soak-" + tag + "-" }

func (e *env) agentPid() int {
	if e.agent == nil || !e.agent.alive() {
		return 0
	}
	return e.agent.pid()
}

func (e *env) csiPid() int {
	if e.csi == nil || !e.csi.alive() {
		return 0
	}
	return e.csi.pid()
}

func (e *env) allPods() []*fabric.Pod {
	return append(append([]*fabric.Pod(nil), e.cniPods...), e.vmPods...)
}

// setUp builds the node. It returns the env even on error: its teardown
// undoes whatever was built.
func setUp(ctx context.Context, o options) (*env, error) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	e := &env{o: o, tag: hex.EncodeToString(b), added: map[*fabric.Pod]bool{}, staged: map[string]bool{}}
	var err error
	if e.dir, err = os.MkdirTemp("", "nodeinfra-soak-"); err != nil {
		return e, err
	}
	e.onTeardown("remove "+e.dir, e.removeDir)
	// Mount points and loop backing files are compared by real path.
	if e.dir, err = filepath.EvalSymlinks(e.dir); err != nil {
		return e, err
	}

	e.startCeph(ctx) // ~20 s: in the background while the node is built
	e.onTeardown("leftovers under "+e.dir, e.sweep)

	if err := e.startNode(ctx); err != nil {
		return e, err
	}
	if err := e.startCSI(ctx); err != nil {
		return e, err
	}
	return e, nil
}

// startCeph runs ceph-up.sh in the background; startCSI waits for it.
func (e *env) startCeph(ctx context.Context) {
	cdir := filepath.Join(e.dir, "ceph")
	e.cephDone = make(chan struct{})
	ctx, cancel := context.WithCancel(ctx)
	e.onTeardown("Ceph cluster", func() error {
		cancel() // a set-up that failed early does not wait for the cluster
		<-e.cephDone
		if out, err := exec.Command(cephDown, cdir).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %w: %s", cephDown, err, bytes.TrimSpace(out))
		}
		return nil
	})
	fmt.Fprintln(os.Stderr, "soak: starting a Ceph cluster in", cdir)
	go func() {
		defer close(e.cephDone)
		cmd := exec.CommandContext(ctx, cephUp, cdir)
		cmd.WaitDelay = 5 * time.Second
		if out, err := cmd.CombinedOutput(); err != nil {
			e.cephErr = fmt.Errorf("%s: %w: %s", cephUp, err, out)
			return
		}
		c, err := testutil.LoadCeph(cdir)
		if err != nil {
			e.cephErr = err
			return
		}
		e.ceph = &c
	}()
}

// startNode builds the fabric (a node namespace, a VPC, ENIs, pod
// namespaces) and starts the agent in the node namespace with a cgroup
// parent of this run's own.
func (e *env) startNode(ctx context.Context) error {
	f, err := fabric.New()
	if err != nil {
		return err
	}
	e.fab = f
	e.onTeardown("fabric namespaces", func() error { f.Close(); return nil })

	e.cgroupParent = "/nodeinfra-soak-" + e.tag
	// Runs after the agent has stopped and every QEMU is gone.
	e.onTeardown("cgroup "+e.cgroupParent, func() error {
		left, err := fabric.RemoveCgroup(e.cgroupParent)
		if len(left) > 0 {
			return fmt.Errorf("sandbox cgroups were left under %s: %v (removed now)", e.cgroupParent, left)
		}
		return err
	})

	adir := filepath.Join(e.dir, "agent")
	if err := os.MkdirAll(adir, 0o755); err != nil {
		return err
	}
	e.agentState = filepath.Join(adir, "state")
	sock := filepath.Join(adir, "agent.sock")
	// nsenter, not `ip netns exec`: the agent needs the host's /sys (ip
	// netns exec remounts it, hiding the cgroup hierarchies).
	e.agent, err = startDaemon("nodeagent", filepath.Join(adir, "agent.log"),
		"nsenter", "--net="+f.Node.Path(), filepath.Join(e.o.bin, "nodeagent"), "serve",
		"--socket", sock, "--state-dir", e.agentState,
		"--metrics-addr", metricsAddr, "--probe-addr", probeAddr,
		"--reconcile-interval", "1s", "--log-level", "info",
		"--cgroup-parent", e.cgroupParent)
	if err != nil {
		return err
	}
	e.onTeardown("agent and its sandboxes", e.stopAgent)
	if err := e.agent.waitSocket(ctx, sock, 20*time.Second); err != nil {
		return err
	}
	if name := exeName(e.agent.pid()); name != "nodeagent" {
		return fmt.Errorf("pid %d runs %q, not nodeagent (nsenter did not exec?)", e.agent.pid(), name)
	}
	if e.cl, err = agentclient.Dial(sock); err != nil {
		return err
	}

	vpc, err := f.AddVPC("soak", vpcGateway)
	if err != nil {
		return err
	}
	pod := func(name string, i int) (*fabric.Pod, error) {
		eni, err := f.AddENI(vpc, "")
		if err != nil {
			return nil, err
		}
		addr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, 0, byte(10 + i)}), vpcGateway.Bits())
		if _, err := e.cl.RegisterENI(ctx, &apiv1.RegisterENIRequest{Config: &apiv1.ENIConfig{
			Mac: eni.MAC, Vpc: vpc.Name, Addresses: []string{addr.String()}, Gateways: []string{vpcGateway.Addr().String()},
		}}); err != nil {
			return nil, fmt.Errorf("register ENI %s: %w", eni.MAC, err)
		}
		p, err := f.NewPod("soak", name)
		if err != nil {
			return nil, err
		}
		if _, err := e.cl.AssignPod(ctx, &apiv1.AssignPodRequest{Assignment: &apiv1.Assignment{
			PodNamespace: p.Namespace, PodName: p.Name, Target: &apiv1.Assignment_Mac{Mac: eni.MAC},
		}}); err != nil {
			return nil, fmt.Errorf("assign %s to %s: %w", p.Name, eni.MAC, err)
		}
		return p, nil
	}
	for i := 0; i < e.o.pods; i++ {
		p, err := pod(fmt.Sprintf("cni-%d", i), i)
		if err != nil {
			return err
		}
		e.cniPods = append(e.cniPods, p)
	}
	for i := 0; i < e.o.vmPods; i++ {
		p, err := pod(fmt.Sprintf("vm-%d", i), e.o.pods+i)
		if err != nil {
			return err
		}
		e.vmPods = append(e.vmPods, p)
	}

	// CNI as containerd 1.6 drives it: cniVersion 1.0.0, through libcni,
	// from the node namespace.
	e.cniCache = filepath.Join(e.dir, "cni-cache")
	if e.rt, err = fabric.NewRuntime(f.Node, e.o.bin, e.cniCache, fabric.Conflist("1.0.0", sock)); err != nil {
		return err
	}
	e.onTeardown("CNI DEL of pods still added", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var errs []error
		for p := range e.added {
			errs = append(errs, e.cniDel(ctx, p))
		}
		return errors.Join(errs...)
	})
	return nil
}

// stopAgent deletes every sandbox, stops the agent, and kills any QEMU
// of this run that outlived it (QEMU outlives its agent by design).
func (e *env) stopAgent() error {
	var errs []error
	if e.cl != nil && e.agent.alive() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if list, err := e.cl.ListSandboxes(ctx, &apiv1.ListSandboxesRequest{}); err == nil {
			for _, s := range list.Sandboxes {
				if _, err := e.cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{Id: s.Spec.Id}); err != nil {
					errs = append(errs, fmt.Errorf("delete sandbox %s: %w", s.Spec.Id, err))
				}
			}
		} else {
			errs = append(errs, fmt.Errorf("list sandboxes: %w", err))
		}
		cancel()
		e.cl.Close()
	}
	errs = append(errs, e.agent.stop(10*time.Second))
	var pids []int
	for _, p := range fabric.Processes() {
		if isSandbox(p, e.tag) {
			pids = append(pids, p.Pid)
		}
	}
	if len(pids) > 0 {
		errs = append(errs, fmt.Errorf("QEMU of this run outlived the agent: killing %v", pids), killPids(pids))
	}
	return errors.Join(errs...)
}

// startCSI waits for the Ceph cluster, starts csi-ceph (mode all) against
// it and creates the volumes the CSI phase stages.
func (e *env) startCSI(ctx context.Context) error {
	select {
	case <-e.cephDone:
	case <-ctx.Done():
		return ctx.Err()
	}
	if e.cephErr != nil {
		return e.cephErr
	}
	cdir := filepath.Join(e.dir, "csi")
	if err := os.MkdirAll(cdir, 0o755); err != nil {
		return err
	}
	e.csiState = filepath.Join(cdir, "state")
	sock := filepath.Join(cdir, "csi.sock")
	var err error
	// --mapper-cgroup= keeps rbd-fuse in the driver's own cgroup, as
	// testutil.StartCSICeph does: nothing of the run's outside its dir.
	e.csi, err = startDaemon("csi-ceph", filepath.Join(cdir, "csi.log"),
		filepath.Join(e.o.bin, "csi-ceph"), "--endpoint", "unix://"+sock, "--nodeid", "soak-node", "--mode", "all",
		"--cluster-config", filepath.Join(e.ceph.Dir, "cluster.json"), "--state-dir", e.csiState,
		"--log-level", "info", "--mapper-cgroup=")
	if err != nil {
		return err
	}
	e.onTeardown("csi-ceph and its volumes", e.stopCSI)
	if err := e.csi.waitSocket(ctx, sock, 20*time.Second); err != nil {
		return err
	}
	if e.csiConn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return err
	}
	e.ctrl, e.node = csi.NewControllerClient(e.csiConn), csi.NewNodeClient(e.csiConn)
	for i := 0; i < e.o.volumes; i++ {
		resp, err := e.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name: fmt.Sprintf("soak-%s-%d", e.tag, i), CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{testutil.CSIExt4}, Parameters: e.ceph.Params("rbd"), Secrets: e.ceph.Secrets(),
		})
		if err != nil {
			return fmt.Errorf("create volume %d: %w", i, err)
		}
		e.volumes = append(e.volumes, resp.GetVolume().GetVolumeId())
	}
	return nil
}

// stopCSI unstages what is staged, deletes the volumes and stops the
// driver.
func (e *env) stopCSI() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if e.csiConn != nil && e.csi.alive() {
		for id := range e.staged {
			if _, err := e.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: e.stagingPath(id)}); err != nil {
				errs = append(errs, fmt.Errorf("unstage %s: %w", id, err))
			}
		}
		for _, id := range e.volumes {
			if _, err := e.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: e.ceph.Secrets()}); err != nil {
				errs = append(errs, fmt.Errorf("delete volume %s: %w", id, err))
			}
		}
	}
	if e.csiConn != nil {
		e.csiConn.Close()
	}
	errs = append(errs, e.csi.stop(10*time.Second))
	return errors.Join(errs...)
}

// sweep removes what a failed run left under its directory, in the order
// a mapping is built backwards: filesystem mounts, loop devices, this
// run's rbd-fuse daemons, their FUSE mounts. A run that went well leaves
// nothing here.
func (e *env) sweep() error {
	var errs []error
	unmount := func(fuse bool) {
		ms, _ := mounts()
		var points []string
		for _, m := range ms {
			if under(e.dir, m.point) && strings.HasPrefix(m.fstype, "fuse") == fuse {
				points = append(points, m.point)
			}
		}
		sort.Sort(sort.Reverse(sort.StringSlice(points))) // deepest first
		for _, p := range points {
			if err := syscall.Unmount(p, 0); err != nil {
				if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil {
					errs = append(errs, fmt.Errorf("umount %s: %w", p, err))
					continue
				}
			}
			errs = append(errs, fmt.Errorf("left mounted: %s (unmounted now)", p))
		}
	}
	unmount(false)
	for _, dev := range loopsUnder(e.dir) {
		out, err := exec.Command("losetup", "-d", dev).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Errorf("losetup -d %s: %w: %s", dev, err, bytes.TrimSpace(out)))
			continue
		}
		errs = append(errs, fmt.Errorf("left attached: %s (detached now)", dev))
	}
	var pids []int
	for _, p := range fabric.Processes() {
		if isFuseOf(p, e.dir) {
			pids = append(pids, p.Pid)
		}
	}
	if len(pids) > 0 {
		errs = append(errs, fmt.Errorf("rbd-fuse left running: killing %v", pids), killPids(pids))
	}
	unmount(true)
	return errors.Join(errs...)
}

// removeDir removes the run's directory unless --keep, and never while
// something is still mounted below it (RemoveAll would empty the mount).
func (e *env) removeDir() error {
	if e.dir == "" {
		return nil
	}
	if e.o.keep {
		fmt.Fprintln(os.Stderr, "soak: kept", e.dir)
		return nil
	}
	if n, _, err := mountCount(e.dir); err != nil || n > 0 {
		return fmt.Errorf("not removed: %d mounts still below it (%v)", n, err)
	}
	return os.RemoveAll(e.dir)
}

func (e *env) stagingPath(volumeID string) string {
	for i, id := range e.volumes {
		if id == volumeID {
			return filepath.Join(e.dir, "csi", "staging", fmt.Sprint(i))
		}
	}
	return filepath.Join(e.dir, "csi", "staging", "unknown")
}
