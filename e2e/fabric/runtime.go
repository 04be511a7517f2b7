package fabric

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
)

// Agent is a nodeagent daemon running in the node namespace.
type Agent struct {
	Bin, Dir, Socket, StateDir string
	// Addresses inside the node namespace.
	MetricsAddr, ProbeAddr string
	Node                   ns.NetNS
	// Extra flags for `nodeagent serve`.
	Extra []string
	// Env is added to the daemon's environment at each Start.
	Env    []string
	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

// StartAgent starts `nodeagent serve` inside node (nil: the machine's own
// namespace, without HTTP endpoints), with its socket and
// state under dir, and waits until it answers. extra flags are appended
// (a later --reconcile-interval overrides the tests' 1s).
func StartAgent(bin string, node ns.NetNS, dir string, extra ...string) (*Agent, error) {
	a := &Agent{Bin: bin, Dir: dir, Socket: filepath.Join(dir, "agent.sock"), StateDir: filepath.Join(dir, "state"),
		MetricsAddr: "127.0.0.1:9842", ProbeAddr: "127.0.0.1:9807", Node: node, Extra: extra}
	if node == nil { // fixed ports would collide with other agents
		a.MetricsAddr, a.ProbeAddr = "", ""
	}
	return a, a.Start()
}

// Start (re)starts the daemon.
func (a *Agent) Start() error {
	f, err := os.OpenFile(filepath.Join(a.Dir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	a.log = f
	// nsenter, not `ip netns exec`: the agent needs the host's mounts
	// (ip netns exec remounts /sys, which hides the cgroup hierarchies).
	args := []string{a.Bin, "serve", "--socket", a.Socket, "--state-dir", a.StateDir,
		"--metrics-addr", a.MetricsAddr, "--probe-addr", a.ProbeAddr,
		"--reconcile-interval", "1s", "--log-level", "debug",
		// No sandbox cgroups unless a test asks (in Extra, which wins): the
		// agent would leave its parent cgroup on the machine.
		"--cgroup-parent", ""}
	if a.Node != nil {
		args = append([]string{"nsenter", "--net=" + a.Node.Path()}, args...)
	}
	a.cmd = exec.Command(args[0], args[1:]...)
	a.cmd.Args = append(a.cmd.Args, a.Extra...)
	if len(a.Env) > 0 {
		a.cmd.Env = append(os.Environ(), a.Env...)
	}
	a.cmd.Stdout, a.cmd.Stderr = f, f
	if err := a.cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start nodeagent: %w", err)
	}
	a.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(a.cmd, a.exited)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", a.Socket); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-a.exited:
			deadline = time.Now()
		case <-time.After(20 * time.Millisecond):
		}
	}
	a.Kill()
	log, _ := os.ReadFile(f.Name())
	return fmt.Errorf("nodeagent did not come up; its log:\n%s", log)
}

// Kill sends SIGKILL and reaps the daemon.
func (a *Agent) Kill() { a.signal(syscall.SIGKILL) }

// Stop sends SIGTERM and reaps the daemon.
func (a *Agent) Stop() { a.signal(syscall.SIGTERM) }

func (a *Agent) signal(s syscall.Signal) {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(s)
	<-a.exited
	a.cmd = nil
	a.log.Close()
}

// Exited is closed once the running daemon has exited on its own (or been
// killed): a test that makes the agent crash waits on it, then calls Kill
// to reap it before the next Start.
func (a *Agent) Exited() <-chan struct{} { return a.exited }

// Pid is the daemon's process ID.
func (a *Agent) Pid() int { return a.cmd.Process.Pid }

// Threads is the number of OS threads the daemon runs now.
func (a *Agent) Threads() (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", a.Pid()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no Threads line in /proc/%d/status", a.Pid())
}

// CLI runs a client verb of the same binary against the daemon.
func (a *Agent) CLI(args ...string) (string, error) {
	cmd := exec.Command(a.Bin, append(args, "--socket", a.Socket)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("nodeagent %v: %w: %s", args, err, errb.String())
	}
	return out.String(), nil
}

// Pod is a pod sandbox as the runtime sees it.
type Pod struct {
	Namespace, Name, ContainerID string
	NS                           ns.NetNS
	IfName                       string
}

// NewPod creates a pod sandbox namespace (tracked by f) with a random
// container ID.
func (f *Fabric) NewPod(namespace, name string) (*Pod, error) {
	n, err := NewNS()
	if err != nil {
		return nil, err
	}
	f.Track(n)
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return &Pod{Namespace: namespace, Name: name, ContainerID: hex.EncodeToString(b), NS: n, IfName: "eth0"}, nil
}

// Runtime drives CNI the way containerd does: through libcni, with a
// conflist, from the node namespace.
type Runtime struct {
	Node ns.NetNS
	CNI  *libcni.CNIConfig
	List *libcni.NetworkConfigList
}

// NewRuntime loads conflist and finds plugins in binDir.
func NewRuntime(node ns.NetNS, binDir, cacheDir string, conflist []byte) (*Runtime, error) {
	l, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return nil, fmt.Errorf("load conflist: %w", err)
	}
	return &Runtime{Node: node, CNI: libcni.NewCNIConfigWithCacheDir([]string{binDir}, cacheDir, nil), List: l}, nil
}

// Conflist renders a one-plugin cni-eni conflist.
func Conflist(version, socket string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":%q,"name":"eni-e2e","plugins":[{"type":"cni-eni","agentSocket":%q,"timeout":"5s"}]}`, version, socket))
}

func (r *Runtime) conf(p *Pod, withNetns bool) *libcni.RuntimeConf {
	rc := &libcni.RuntimeConf{ContainerID: p.ContainerID, IfName: p.IfName, Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
	}}
	if withNetns {
		rc.NetNS = p.NS.Path()
	}
	return rc
}

func (r *Runtime) inNode(f func() error) error {
	return r.Node.Do(func(ns.NetNS) error { return f() })
}

// Add runs ADD for p.
func (r *Runtime) Add(ctx context.Context, p *Pod) (types.Result, error) {
	var res types.Result
	err := r.inNode(func() error {
		var err error
		res, err = r.CNI.AddNetworkList(ctx, r.List, r.conf(p, true))
		return err
	})
	return res, err
}

// Del runs DEL for p; withNetns false mimics containerd's second DEL.
func (r *Runtime) Del(ctx context.Context, p *Pod, withNetns bool) error {
	return r.inNode(func() error { return r.CNI.DelNetworkList(ctx, r.List, r.conf(p, withNetns)) })
}

// Check runs CHECK for p.
func (r *Runtime) Check(ctx context.Context, p *Pod) error {
	return r.inNode(func() error { return r.CNI.CheckNetworkList(ctx, r.List, r.conf(p, true)) })
}

// GC runs GC keeping the attachments of valid.
func (r *Runtime) GC(ctx context.Context, valid ...*Pod) error {
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: p.IfName})
	}
	return r.inNode(func() error { return r.CNI.GCNetworkList(ctx, r.List, args) })
}

// Status runs STATUS.
func (r *Runtime) Status(ctx context.Context) error {
	return r.inNode(func() error { return r.CNI.GetStatusNetworkList(ctx, r.List) })
}

// HTTPGet fetches url from inside network namespace n (nil: the
// caller's), without keep-alives, and returns the status and the body.
func HTTPGet(n ns.NetNS, url string) (int, string, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			if n == nil {
				return d.DialContext(ctx, network, addr)
			}
			var conn net.Conn
			err := n.Do(func(ns.NetNS) error {
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
