package manifests

// csi-ceph's workloads: flags, sockets, probes and host paths that fit its
// contract and the CSIDriver.

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
)

// The csi-ceph contract (see the README's csi-ceph section).
const (
	cephDriverName    = "rbd.csi.nodeinfra.dev"
	cephNamespace     = "csi-ceph"
	cephImageRepo     = "ghcr.io/nodeinfra/csi-ceph"
	cephController    = "csi-ceph-controller"
	cephNode          = "csi-ceph-node"
	cephConfigMap     = "csi-ceph-config"
	cephSecret        = "csi-ceph-secret"
	cephStorageClass  = "ceph-rbd"
	cephSnapshotClass = "ceph-rbd-snapshot"
	kubeletDir        = "/var/lib/kubelet"
)

// cephMain is csi-ceph's main, which defines its flags.
const cephMain = "../csi-ceph/main.go"

// cephFlags reads the flags csi-ceph takes from its main: the name of
// every flag.XxxVar / flag.Xxx it calls. (Its flag set cannot be asked:
// its packages link go-ceph, a cgo library these tests do without.)
func cephFlags(t *testing.T) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), cephMain, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "flag" {
			return true
		}
		for _, a := range call.Args {
			if lit, ok := a.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if name, err := strconv.Unquote(lit.Value); err == nil {
					names[name] = true
				}
				break
			}
		}
		return true
	})
	for _, want := range []string{"endpoint", "mode", "type", "metrics-addr"} {
		if !names[want] {
			t.Fatalf("%s defines no flag %q: cannot read its flags (found %v)", cephMain, want, names)
		}
	}
	return names
}

// cephMetricsPorts are csi-ceph's metrics ports (--metrics-addr, port
// "metrics") by workload: fixed, since the node plugins share the host's
// network with each other and with the node agent (9842), and the
// monitoring config names them.
var cephMetricsPorts = map[string]int{cephController: 9843, cephNode: 9844, cephFSController: 9845, cephFSNode: 9846}

// cephDriverNames maps csi-ceph's --type to its CSI driver name.
var cephDriverNames = map[string]string{"rbd": cephDriverName, "cephfs": cephFSDriverName}

// leaderElected are the sidecars that must elect a leader when the
// controller has more than one replica.
var leaderElected = map[string]bool{"csi-provisioner": true, "csi-attacher": true, "csi-snapshotter": true, "csi-resizer": true}

func runAsUser(s *corev1.PodSpec, c *corev1.Container) string {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return strconv.FormatInt(*c.SecurityContext.RunAsUser, 10)
	}
	if s.SecurityContext != nil && s.SecurityContext.RunAsUser != nil {
		return strconv.FormatInt(*s.SecurityContext.RunAsUser, 10)
	}
	return "image default"
}

func TestCSICephWorkloads(t *testing.T) {
	objs := load(t)
	drivers := map[string]bool{}
	each(objs, func(_ *object, d *storagev1.CSIDriver) { drivers[d.Name] = true })
	known := cephFlags(t)

	modes := map[string]int{}
	for _, w := range workloads(objs) {
		s := w.spec()
		var cephs []*corev1.Container
		for _, c := range allContainers(s) {
			if imageName(c.Image) == "csi-ceph" {
				cephs = append(cephs, c)
			}
		}
		if len(cephs) == 0 {
			continue
		}
		if len(cephs) > 1 {
			t.Errorf("%s: %d csi-ceph containers, want one", w.o, len(cephs))
			continue
		}
		c := cephs[0]
		who := fmt.Sprintf("%s: container %s", w.o, c.Name)
		if repo, _ := imageRepo(c.Image); repo != cephImageRepo {
			t.Errorf("%s: image %q is not from %s", who, c.Image, cephImageRepo)
		}

		// Flags.
		f, positional := flags(c)
		if len(positional) > 0 || len(c.Command) > 0 {
			t.Errorf("%s: positional arguments %v or a command %v: csi-ceph takes flags only", who, positional, c.Command)
		}
		for name, vals := range f {
			if !known[name] {
				t.Errorf("%s: csi-ceph has no flag --%s", who, name)
			}
			if len(vals) > 1 {
				t.Errorf("%s: --%s given %d times", who, name, len(vals))
			}
		}
		endpoint, ok := flag1(f, "endpoint")
		sock, isUnix := strings.CutPrefix(endpoint, "unix://")
		if !ok || !isUnix || !path.IsAbs(sock) {
			t.Errorf("%s: --endpoint %q: want unix:///absolute/path", who, endpoint)
			continue
		}
		if _, ok := f["cluster-config"]; !ok {
			t.Errorf("%s: no --cluster-config", who)
		}
		mode, _ := flag1(f, "mode")
		typ, _ := flag1(f, "type")
		driver := cephDriverNames[typ]
		switch {
		case mode != "controller" && mode != "node":
			t.Errorf("%s: --mode %q: want controller or node", who, mode)
		case mode == "controller" && w.o.kind != "Deployment":
			t.Errorf("%s: --mode controller belongs in a Deployment", who)
		case mode == "node" && w.o.kind != "DaemonSet":
			t.Errorf("%s: --mode node belongs in a DaemonSet", who)
		}
		modes[mode]++
		if driver == "" || !drivers[driver] {
			t.Errorf("%s: --type %q: no CSIDriver for it in the manifests", who, typ)
		}
		if lvl, ok := flag1(f, "log-level"); ok && !slices.Contains([]string{"debug", "info", "warn", "error"}, lvl) {
			t.Errorf("%s: --log-level %q", who, lvl)
		}
		if id, ok := flag1(f, "nodeid"); !ok || id == "" {
			t.Errorf("%s: no --nodeid", who)
		}
		for _, a := range c.Args {
			if strings.Contains(a, "$(NODE_NAME)") && envOf(c)["NODE_NAME"] != "<fieldRef:spec.nodeName>" {
				t.Errorf("%s: NODE_NAME must come from the downward API's spec.nodeName", who)
			}
		}

		// The socket: every container with --csi-address reaches the file
		// csi-ceph listens on, and runs as its owner (csi-ceph makes it 0600).
		sockMount, sockRel, ok := mountFor(c, sock)
		if !ok {
			t.Errorf("%s: socket %s is on no volume", who, sock)
			continue
		}
		for _, sc := range allContainers(s) {
			if sc == c {
				continue
			}
			sf, _ := flags(sc)
			addr, ok := flag1(sf, "csi-address")
			if !ok {
				if _, sidecar := leaderElected[imageName(sc.Image)]; sidecar || imageName(sc.Image) == "livenessprobe" || imageName(sc.Image) == "csi-node-driver-registrar" {
					t.Errorf("%s: CSI sidecar %s has no --csi-address", w.o, sc.Name)
				}
				continue
			}
			addr = strings.TrimPrefix(addr, "unix://")
			m, rel, ok := mountFor(sc, addr)
			if !ok || m.Name != sockMount.Name || rel != sockRel {
				t.Errorf("%s: container %s: --csi-address %s is not the socket csi-ceph listens on (%s in volume %s)", w.o, sc.Name, addr, sockRel, sockMount.Name)
			}
			if u, cu := runAsUser(s, sc), runAsUser(s, c); u != cu {
				t.Errorf("%s: container %s runs as user %s, csi-ceph as %s: its 0600 socket would be out of reach", w.o, sc.Name, u, cu)
			}
			if w.replicas != nil && *w.replicas > 1 && leaderElected[imageName(sc.Image)] {
				if v, _ := flag1(sf, "leader-election"); v != "true" {
					t.Errorf("%s: %d replicas but %s runs without --leader-election", w.o, *w.replicas, sc.Name)
				}
			}
		}

		// Liveness: csi-ceph's probe points at the livenessprobe sidecar.
		var healthPorts []int
		for _, sc := range allContainers(s) {
			if imageName(sc.Image) != "livenessprobe" {
				continue
			}
			sf, _ := flags(sc)
			hp, ok := flag1(sf, "health-port")
			n, err := strconv.Atoi(hp)
			if !ok || err != nil {
				t.Errorf("%s: livenessprobe %s: --health-port %q", w.o, sc.Name, hp)
				continue
			}
			for _, p := range sc.Ports {
				if p.Name == "healthz" && int(p.ContainerPort) != n {
					t.Errorf("%s: livenessprobe %s: port healthz %d but --health-port %d", w.o, sc.Name, p.ContainerPort, n)
				}
			}
			healthPorts = append(healthPorts, n)
		}
		if len(healthPorts) != 1 {
			t.Errorf("%s: %d livenessprobe sidecars, want one", w.o, len(healthPorts))
		} else if pr := c.LivenessProbe; pr == nil || pr.HTTPGet == nil {
			t.Errorf("%s: no httpGet livenessProbe", who)
		} else if port, err := probePort(c, pr.HTTPGet.Port); err != nil || port != healthPorts[0] || pr.HTTPGet.Path != "/healthz" {
			t.Errorf("%s: livenessProbe %s on port %v (%v), want /healthz on the sidecar's --health-port %d", who, pr.HTTPGet.Path, pr.HTTPGet.Port.String(), err, healthPorts[0])
		}

		checkCephMetrics(t, w, c, mode)
		switch mode {
		case "controller":
			checkCephController(t, w, c)
		case "node":
			checkCephNode(t, w, c, driver, sockMount.Name, sockRel)
		}
	}
	if modes["controller"] == 0 || modes["node"] == 0 {
		t.Errorf("want csi-ceph in controller and in node mode, found %v", modes)
	}

	// The two workloads the brief names, with their sidecars.
	ctrl := lookup[appsv1.Deployment](objs, cephNamespace, cephController)
	node := lookup[appsv1.DaemonSet](objs, cephNamespace, cephNode)
	if ctrl == nil || node == nil {
		t.Fatalf("Deployment %s/%s or DaemonSet %s/%s missing", cephNamespace, cephController, cephNamespace, cephNode)
	}
	if ctrl.Spec.Replicas == nil || *ctrl.Spec.Replicas != 2 {
		t.Errorf("Deployment %s: replicas must be 2", cephController)
	}
	images := func(s *corev1.PodSpec) []string {
		var out []string
		for _, c := range s.Containers {
			out = append(out, imageName(c.Image))
		}
		sort.Strings(out)
		return out
	}
	if got, want := images(&ctrl.Spec.Template.Spec), []string{"csi-attacher", "csi-ceph", "csi-provisioner", "csi-resizer", "csi-snapshotter", "livenessprobe"}; !slices.Equal(got, want) {
		t.Errorf("Deployment %s runs %v, want %v", cephController, got, want)
	}
	if got, want := images(&node.Spec.Template.Spec), []string{"csi-ceph", "csi-node-driver-registrar", "livenessprobe"}; !slices.Equal(got, want) {
		t.Errorf("DaemonSet %s runs %v, want %v", cephNode, got, want)
	}
	for _, c := range ctrl.Spec.Template.Spec.Containers {
		if imageName(c.Image) != "csi-provisioner" {
			continue
		}
		f, _ := flags(&c)
		for _, want := range [][2]string{{"extra-create-metadata", "true"}, {"default-fstype", "ext4"}, {"feature-gates", "Topology=false"}} {
			if v, _ := flag1(f, want[0]); v != want[1] {
				t.Errorf("csi-provisioner: --%s is %q, want %q", want[0], v, want[1])
			}
		}
	}
}

func checkCephController(t *testing.T, w workload, c *corev1.Container) {
	t.Helper()
	s := w.spec()
	if isPrivileged(c) {
		t.Errorf("%s: csi-ceph controller must not be privileged", w.o)
	}
	if sc := c.SecurityContext; sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: csi-ceph controller must set allowPrivilegeEscalation false", w.o)
	} else if sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
		t.Errorf("%s: csi-ceph controller adds capabilities %v", w.o, sc.Capabilities.Add)
	}
	// The host's network: the pod network is the tenants' (cni-eni gives
	// a pod its VPC's ENI), and the sidecars must reach the API server.
	// Then one replica per node, their ports being the node's.
	if !s.HostNetwork || s.HostPID {
		t.Errorf("%s: the controller must be on the host's network, and needs not the host's PIDs", w.o)
	}
	if a := s.Affinity; a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 ||
		a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("%s: replicas on the host's network need a required anti-affinity per node", w.o)
	}
	for _, v := range s.Volumes {
		if v.HostPath != nil {
			t.Errorf("%s: the controller mounts host path %s", w.o, v.HostPath.Path)
		}
	}
}

func checkCephNode(t *testing.T, w workload, c *corev1.Container, driver, sockVolume, sockRel string) {
	t.Helper()
	s := w.spec()
	o := w.o
	if !isPrivileged(c) {
		t.Errorf("%s: csi-ceph node must be privileged (it maps and mounts)", o)
	}
	if !s.HostNetwork || !s.HostPID {
		t.Errorf("%s: the node plugin needs hostNetwork and hostPID (rbd-nbd, rbd-fuse)", o)
	}
	if s.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("%s: dnsPolicy %q, want ClusterFirstWithHostNet", o, s.DNSPolicy)
	}
	if s.PriorityClassName != "system-node-critical" {
		t.Errorf("%s: priorityClassName %q, want system-node-critical", o, s.PriorityClassName)
	}
	if !slices.ContainsFunc(s.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Key == "" && tl.Operator == corev1.TolerationOpExists && tl.Effect == ""
	}) {
		t.Errorf("%s: the node plugin must tolerate every taint (operator Exists, no key)", o)
	}

	// Host paths and their propagation.
	hostPathOf := func(m *corev1.VolumeMount) string {
		if v := volumeNamed(s, m.Name); v != nil && v.HostPath != nil {
			return path.Clean(v.HostPath.Path)
		}
		return ""
	}
	mountAt := func(p string) *corev1.VolumeMount {
		for i := range c.VolumeMounts {
			if path.Clean(c.VolumeMounts[i].MountPath) == p {
				return &c.VolumeMounts[i]
			}
		}
		return nil
	}
	for _, p := range []string{kubeletDir + "/pods", kubeletDir + "/plugins"} {
		m := mountAt(p)
		if m == nil || hostPathOf(m) != p || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
			t.Errorf("%s: csi-ceph must mount host path %s at %s with Bidirectional propagation", o, p, p)
		}
	}
	for _, p := range []string{"/dev", "/sys", "/lib/modules", "/run/mount"} {
		if m := mountAt(p); m == nil || hostPathOf(m) != p {
			t.Errorf("%s: csi-ceph must mount host path %s", o, p)
		}
	}
	if m := mountAt("/lib/modules"); m != nil && !m.ReadOnly {
		t.Errorf("%s: /lib/modules must be read-only", o)
	}
	f, _ := flags(c)
	stateDir, ok := flag1(f, "state-dir")
	if !ok {
		stateDir = "/var/lib/csi-ceph"
	}
	if m, _, ok := mountFor(c, stateDir); !ok || hostPathOf(m) == "" {
		t.Errorf("%s: --state-dir %s must be on a host path (staging records outlive the container)", o, stateDir)
	}

	// The mapper daemons outlive the container: a cgroup of their own at
	// the root of the host's hierarchies, which the container must see
	// whole. Only then may updates roll: a rolling update stops the
	// plugin on every node in turn.
	cg, ok := flag1(f, "mapper-cgroup")
	if !ok {
		cg = "/csi-ceph-mappers" // csi-ceph's default
	}
	if cg == "" || !path.IsAbs(cg) || path.Clean(cg) != cg || cg == "/" {
		t.Errorf("%s: --mapper-cgroup %q: the mapper daemons must run in a cgroup of their own (an absolute cgroup path)", o, cg)
	}
	if m := mountAt("/sys/fs/cgroup"); m == nil || hostPathOf(m) != "/sys/fs/cgroup" || m.ReadOnly {
		t.Errorf("%s: csi-ceph must mount the host's /sys/fs/cgroup read-write at /sys/fs/cgroup (--mapper-cgroup is made there)", o)
	}
	if w.o.kind == "DaemonSet" {
		ds := w.o.obj.(*appsv1.DaemonSet)
		us := ds.Spec.UpdateStrategy
		if us.Type != appsv1.RollingUpdateDaemonSetStrategyType || us.RollingUpdate == nil || us.RollingUpdate.MaxUnavailable == nil ||
			us.RollingUpdate.MaxUnavailable.IntValue() != 1 || (us.RollingUpdate.MaxSurge != nil && us.RollingUpdate.MaxSurge.IntValue() != 0) {
			t.Errorf("%s: updateStrategy %+v: want RollingUpdate, one node at a time (see the manifest's comment)", o, us)
		}
	}

	// The socket's place on the host is where the registrar tells the
	// kubelet to find it, under the driver's name.
	var sockHost string
	if v := volumeNamed(s, sockVolume); v != nil && v.HostPath != nil {
		sockHost = path.Join(v.HostPath.Path, sockRel)
	} else {
		t.Errorf("%s: the node socket's volume %s is not a host path: the kubelet cannot reach it", o, sockVolume)
	}
	wantReg := path.Join(kubeletDir, "plugins", driver, "csi.sock")
	registrars := 0
	for _, rc := range allContainers(s) {
		if imageName(rc.Image) != "csi-node-driver-registrar" {
			continue
		}
		registrars++
		rf, _ := flags(rc)
		reg, _ := flag1(rf, "kubelet-registration-path")
		if reg != wantReg {
			t.Errorf("%s: %s --kubelet-registration-path %q, want %q (CSIDriver %s)", o, rc.Name, reg, wantReg, driver)
		}
		if sockHost != "" && reg != sockHost {
			t.Errorf("%s: %s registers %s but csi-ceph listens on host path %s", o, rc.Name, reg, sockHost)
		}
		if m, _, ok := mountFor(rc, "/registration"); !ok || path.Clean(m.MountPath) != "/registration" || hostPathOf(m) != kubeletDir+"/plugins_registry" {
			t.Errorf("%s: %s must mount host path %s/plugins_registry at /registration", o, rc.Name, kubeletDir)
		}
	}
	if registrars != 1 {
		t.Errorf("%s: %d node-driver-registrar containers, want one", o, registrars)
	}
}

// checkCephMetrics checks the metrics endpoints of a csi-ceph pod:
// csi-ceph's (--metrics-addr, on the node's own address when the pod is
// on the host's network), the sidecars' (--http-endpoint), each with a
// named containerPort, and no port twice in the pod.
func checkCephMetrics(t *testing.T, w workload, c *corev1.Container, mode string) {
	t.Helper()
	s := w.spec()
	who := fmt.Sprintf("%s: container %s", w.o, c.Name)
	hostPort := func(addr string) (string, int, bool) {
		i := strings.LastIndex(addr, ":")
		if i < 0 {
			return "", 0, false
		}
		n, err := strconv.Atoi(addr[i+1:])
		return addr[:i], n, err == nil && n > 0 && n < 65536
	}
	namedPort := func(c *corev1.Container, name string) int {
		for _, p := range c.Ports {
			if p.Name == name && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
				return int(p.ContainerPort)
			}
		}
		return 0
	}

	f, _ := flags(c)
	addr, ok := flag1(f, "metrics-addr")
	host, port, valid := hostPort(addr)
	want := cephMetricsPorts[w.o.name()]
	switch {
	case !ok || !valid:
		t.Errorf("%s: --metrics-addr %q: want HOST:PORT or :PORT", who, addr)
	case want == 0:
		t.Errorf("%s: no metrics port is planned for %s (cephMetricsPorts)", who, w.o.name())
	case port != want:
		t.Errorf("%s: --metrics-addr port %d, want %d", who, port, want)
	case s.HostNetwork && host != "<fieldRef:status.hostIP>":
		// On the host's network ":PORT" would serve on every address of
		// the node.
		t.Errorf("%s: --metrics-addr %q on the host's network: want $(NODE_IP):%d with NODE_IP from status.hostIP", who, addr, want)
	case !s.HostNetwork && host != "":
		t.Errorf("%s: --metrics-addr %q: want :%d (the pod's addresses)", who, addr, want)
	}
	if ok && valid && namedPort(c, "metrics") != port {
		t.Errorf("%s: no TCP containerPort \"metrics\" %d for --metrics-addr", who, port)
	}
	if mode == "node" && !s.HostNetwork {
		t.Errorf("%s: a node plugin off the host's network", who)
	}

	// The sidecars' own metrics, each on a port of its own.
	for _, sc := range allContainers(s) {
		if !leaderElected[imageName(sc.Image)] {
			continue
		}
		sf, _ := flags(sc)
		sw := fmt.Sprintf("%s: container %s", w.o, sc.Name)
		ep, ok := flag1(sf, "http-endpoint")
		host, port, valid := hostPort(ep)
		switch {
		case !ok || !valid:
			t.Errorf("%s: --http-endpoint %q: want HOST:PORT (its metrics)", sw, ep)
			continue
		case s.HostNetwork && host != "<fieldRef:status.hostIP>":
			t.Errorf("%s: --http-endpoint %q on the host's network: want $(NODE_IP):PORT with NODE_IP from status.hostIP", sw, ep)
		case !s.HostNetwork && host != "":
			t.Errorf("%s: --http-endpoint %q: want :PORT (the pod's addresses)", sw, ep)
		case len(sf["metrics-address"]) > 0:
			t.Errorf("%s: --metrics-address and --http-endpoint exclude each other", sw)
		}
		if p, ok := flag1(sf, "metrics-path"); ok && p != "/metrics" {
			t.Errorf("%s: --metrics-path %q, want /metrics", sw, p)
		}
		var name string
		for _, p := range sc.Ports {
			if int(p.ContainerPort) == port {
				name = p.Name
			}
		}
		if !strings.HasPrefix(name, "http-") {
			t.Errorf("%s: --http-endpoint %s has no containerPort named http-*", sw, ep)
		}
	}

	// One pod, one network namespace: no port twice.
	ports := map[int32]string{}
	for _, sc := range allContainers(s) {
		for _, p := range sc.Ports {
			if other, dup := ports[p.ContainerPort]; dup {
				t.Errorf("%s: port %d of container %s is also %s's", w.o, p.ContainerPort, sc.Name, other)
			}
			ports[p.ContainerPort] = sc.Name
		}
	}
}
