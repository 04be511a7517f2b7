package manifests

// The node agent's DaemonSet.

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/daemon"
	"github.com/spf13/pflag"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// The nodeagent contract (README: nodeagent serve, cni-eni).
const (
	agentNamespace = "kube-system"
	agentDaemonSet = "nodeagent"
	agentImageRepo = "ghcr.io/nodeinfra/nodeagent"
	// agentShutdown is the longest clean stop of `nodeagent serve`
	// (nodeagent/daemon/daemon.go): 5 s for each of its two HTTP servers, then up to 10 s of
	// gRPC GracefulStop.
	agentShutdown = 20 * time.Second

	cniConfigMap  = "cni-eni-config"
	cniConflist   = "10-cni-eni.conflist"
	cniPluginType = "cni-eni"
	cniBinDir     = "/opt/cni/bin"
	cniConfDir    = "/etc/cni/net.d"
	// cniConflistFile is the conflist the kustomization turns into the
	// ConfigMap, also the example for nodes set up by hand.
	cniConflistFile = "nodeagent/10-cni-eni.conflist"
)

// serve's defaults, read from the daemon's own configuration.
var (
	agentSocket   = daemon.DefaultConfig().Socket
	agentStateDir = daemon.DefaultConfig().StateDir
)

// agentServeFlag reports whether `nodeagent serve` has the flag, asking
// the daemon's own flag set (nodeagent/daemon/flags.go).
func agentServeFlag(name string) bool {
	cfg := daemon.DefaultConfig()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	return fs.Lookup(name) != nil
}

// commandLine is a container's command and arguments, with $(VAR) expanded.
func commandLine(c *corev1.Container) []string {
	env := envOf(c)
	var out []string
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		e, _ := expand(a, env)
		out = append(out, e)
	}
	return out
}

// argFlags parses the flags and positional arguments of a command line
// (without its program name), as flags() does for a container's args.
func argFlags(c *corev1.Container, args []string) (map[string][]string, []string) {
	tmp := corev1.Container{Env: c.Env, Args: args}
	return flags(&tmp)
}

// hostPathOf is the host path behind container path p of c, if p is on a
// hostPath volume.
func hostPathOf(s *corev1.PodSpec, c *corev1.Container, p string) (string, bool) {
	m, rel, ok := mountFor(c, p)
	if !ok {
		return "", false
	}
	v := volumeNamed(s, m.Name)
	if v == nil || v.HostPath == nil {
		return "", false
	}
	return path.Join(v.HostPath.Path, rel), true
}

// agent returns the agent's DaemonSet and its nodeagent container.
func agent(t *testing.T, objs []*object) (*appsv1.DaemonSet, *corev1.Container) {
	t.Helper()
	ds := lookup[appsv1.DaemonSet](objs, agentNamespace, agentDaemonSet)
	if ds == nil {
		t.Fatalf("DaemonSet %s/%s is not in the manifests", agentNamespace, agentDaemonSet)
	}
	var found *corev1.Container
	for i := range ds.Spec.Template.Spec.Containers {
		c := &ds.Spec.Template.Spec.Containers[i]
		if cl := commandLine(c); len(cl) > 1 && path.Base(cl[0]) == "nodeagent" && cl[1] == "serve" {
			if found != nil {
				t.Fatalf("DaemonSet %s: two containers run nodeagent serve", agentDaemonSet)
			}
			found = c
		}
	}
	if found == nil {
		t.Fatalf("DaemonSet %s: no container runs `nodeagent serve`", agentDaemonSet)
	}
	return ds, found
}

// agentSocketPaths returns the socket `nodeagent serve` listens on, in the
// container and on the host.
func agentSocketPaths(t *testing.T, s *corev1.PodSpec, c *corev1.Container) (string, string) {
	t.Helper()
	f, _ := argFlags(c, commandLine(c)[2:])
	sock, ok := flag1(f, "socket")
	if !ok {
		sock = agentSocket
	}
	host, ok := hostPathOf(s, c, sock)
	if !ok {
		t.Fatalf("DaemonSet %s: --socket %s is not on a hostPath volume: cni-eni on the host cannot reach it", agentDaemonSet, sock)
	}
	return sock, host
}

func TestNodeagentDaemonSet(t *testing.T) {
	objs := load(t)
	ds, c := agent(t, objs)
	s := &ds.Spec.Template.Spec
	who := fmt.Sprintf("DaemonSet %s: container %s", agentDaemonSet, c.Name)

	if repo, tag := imageRepo(c.Image); repo != agentImageRepo || tag == "" {
		t.Errorf("%s: image %q is not from %s", who, c.Image, agentImageRepo)
	}
	if !s.HostPID || !s.HostNetwork {
		t.Errorf("DaemonSet %s: needs hostPID (QEMU processes outlive the pod) and hostNetwork (ENIs)", agentDaemonSet)
	}
	if !isPrivileged(c) {
		t.Errorf("%s: must be privileged (netns, links, /dev/kvm, the host's cgroup namespace)", who)
	}
	if s.PriorityClassName != "system-node-critical" {
		t.Errorf("DaemonSet %s: priorityClassName %q, want system-node-critical", agentDaemonSet, s.PriorityClassName)
	}
	if !slices.ContainsFunc(s.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Key == "" && tl.Operator == corev1.TolerationOpExists && tl.Effect == ""
	}) {
		t.Errorf("DaemonSet %s: must tolerate every taint (operator Exists, no key)", agentDaemonSet)
	}
	grace := time.Duration(corev1.DefaultTerminationGracePeriodSeconds) * time.Second
	if g := s.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	if grace < agentShutdown {
		t.Errorf("DaemonSet %s: terminationGracePeriodSeconds %v: the agent may take %v to stop cleanly", agentDaemonSet, grace, agentShutdown)
	}

	// Flags.
	f, positional := argFlags(c, commandLine(c)[2:])
	if len(positional) > 0 {
		t.Errorf("%s: positional arguments %v after serve", who, positional)
	}
	for name, vals := range f {
		if !agentServeFlag(name) {
			t.Errorf("%s: nodeagent serve has no flag --%s", who, name)
		}
		if len(vals) > 1 {
			t.Errorf("%s: --%s given %d times", who, name, len(vals))
		}
	}
	for _, name := range []string{"metrics-addr", "probe-addr"} {
		a, ok := flag1(f, name)
		if !ok || a == "" {
			continue
		}
		// The host may be a $(VAR) from the downward API (the node's IP).
		i := strings.LastIndex(a, ":")
		port := a[i+1:]
		if _, err := strconv.Atoi(port); i < 0 || err != nil {
			t.Errorf("%s: --%s %q: want HOST:PORT", who, name, a)
			continue
		}
		for _, p := range c.Ports {
			if p.Name == strings.TrimSuffix(name, "-addr") && strconv.Itoa(int(p.ContainerPort)) != port {
				t.Errorf("%s: port %s is %d but --%s %s", who, p.Name, p.ContainerPort, name, a)
			}
		}
	}
	if lvl, ok := flag1(f, "log-level"); ok && !slices.Contains([]string{"debug", "info", "warn", "error"}, lvl) {
		t.Errorf("%s: --log-level %q", who, lvl)
	}
	if a, ok := flag1(f, "accel"); ok && !slices.Contains([]string{"auto", "kvm", "tcg"}, a) {
		t.Errorf("%s: --accel %q", who, a)
	}
	// nodeagent/cgroup takes a cgroup path below the root; the groups live
	// in the host's tree, so the host's cgroup file systems must be there.
	if cg, ok := flag1(f, "cgroup-parent"); !ok || cg != "" {
		if cg == "" {
			cg = "/nodeagent" // serve's default
		}
		if !path.IsAbs(cg) || path.Clean(cg) == "/" || strings.Contains(cg, "..") {
			t.Errorf("%s: --cgroup-parent %q: want an absolute cgroup path below the root, such as /nodeagent", who, cg)
		}
	}

	// The socket, and every way of reaching it from inside.
	sock, hostSock := agentSocketPaths(t, s, c)
	if !path.IsAbs(sock) {
		t.Errorf("%s: --socket %q is not absolute", who, sock)
	}
	if env, ok := envOf(c)["NODEAGENT_SOCKET"]; ok && env != sock {
		t.Errorf("%s: NODEAGENT_SOCKET %s but --socket %s", who, env, sock)
	}
	for name, pr := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if pr == nil || pr.Exec == nil || len(pr.Exec.Command) < 2 || path.Base(pr.Exec.Command[0]) != "nodeagent" || pr.Exec.Command[1] != "status" {
			t.Errorf("%s: %s probe: want exec `nodeagent status`", who, name)
			continue
		}
		pf, _ := argFlags(c, pr.Exec.Command[2:])
		ps, ok := flag1(pf, "socket")
		if !ok {
			ps = agentSocket
			if env, ok := envOf(c)["NODEAGENT_SOCKET"]; ok {
				ps = env
			}
		}
		if ps != sock {
			t.Errorf("%s: %s probe asks %s, the agent listens on %s", who, name, ps, sock)
		}
		if pr.TimeoutSeconds < 2 {
			t.Errorf("%s: %s probe timeout %ds: a status call needs more", who, name, pr.TimeoutSeconds)
		}
	}

	// Host paths.
	stateDir, ok := flag1(f, "state-dir")
	if !ok {
		stateDir = agentStateDir
	}
	if h, ok := hostPathOf(s, c, stateDir); !ok || h != agentStateDir {
		t.Errorf("%s: --state-dir %s must be host path %s (the state outlives the pod), got %q", who, stateDir, agentStateDir, h)
	}
	if path.Dir(hostSock) != "/run/nodeagent" {
		t.Errorf("%s: the socket is at %s on the host, want it in /run/nodeagent", who, hostSock)
	}
	mounts := []struct {
		p           string
		ty          corev1.HostPathType
		propagation corev1.MountPropagationMode
	}{
		{"/run/nodeagent", corev1.HostPathDirectoryOrCreate, ""},
		{agentStateDir, corev1.HostPathDirectoryOrCreate, ""},
		{"/run/netns", "", corev1.MountPropagationHostToContainer},
		{"/sys/fs/cgroup", "", ""},
	}
	for _, want := range mounts {
		i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return path.Clean(m.MountPath) == want.p })
		if i < 0 {
			t.Errorf("%s: nothing mounted at %s", who, want.p)
			continue
		}
		m := c.VolumeMounts[i]
		v := volumeNamed(s, m.Name)
		if v == nil || v.HostPath == nil || path.Clean(v.HostPath.Path) != want.p || m.SubPath != "" {
			t.Errorf("%s: %s must be host path %s", who, want.p, want.p)
			continue
		}
		if want.ty != "" && (v.HostPath.Type == nil || *v.HostPath.Type != want.ty) {
			t.Errorf("%s: host path %s: type %v, want %s", who, want.p, v.HostPath.Type, want.ty)
		}
		if m.ReadOnly {
			t.Errorf("%s: %s is read-only", who, want.p)
		}
		if want.propagation != "" {
			if got := m.MountPropagation; got == nil || (*got != want.propagation && *got != corev1.MountPropagationBidirectional) {
				t.Errorf("%s: %s needs mount propagation %s (namespaces made after the agent started)", who, want.p, want.propagation)
			}
		}
	}
}
