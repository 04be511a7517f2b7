package manifests

// Workloads: what every Deployment and DaemonSet must have, and the helpers
// that read containers (flags, env, mounts, probes) for the other tests.

import (
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

type workload struct {
	o        *object
	replicas *int32 // nil for a DaemonSet
	selector *metav1.LabelSelector
	tmpl     *corev1.PodTemplateSpec
}

func (w workload) spec() *corev1.PodSpec { return &w.tmpl.Spec }

func workloads(objs []*object) []workload {
	var ws []workload
	each(objs, func(o *object, d *appsv1.Deployment) {
		ws = append(ws, workload{o, d.Spec.Replicas, d.Spec.Selector, &d.Spec.Template})
	})
	each(objs, func(o *object, d *appsv1.DaemonSet) {
		ws = append(ws, workload{o, nil, d.Spec.Selector, &d.Spec.Template})
	})
	return ws
}

func allContainers(s *corev1.PodSpec) []*corev1.Container {
	var cs []*corev1.Container
	for i := range s.InitContainers {
		cs = append(cs, &s.InitContainers[i])
	}
	for i := range s.Containers {
		cs = append(cs, &s.Containers[i])
	}
	return cs
}

// imageRepo splits an image reference into repository and tag (or digest).
func imageRepo(image string) (repo, tag string) {
	if r, digest, ok := strings.Cut(image, "@"); ok {
		return r, digest
	}
	slash := strings.LastIndex(image, "/")
	if i := strings.LastIndex(image, ":"); i > slash {
		return image[:i], image[i+1:]
	}
	return image, ""
}

// imageName is the last path element of the repository: "csi-provisioner"
// for registry.k8s.io/sig-storage/csi-provisioner:v5.2.0.
func imageName(image string) string {
	repo, _ := imageRepo(image)
	return path.Base(repo)
}

// envOf maps a container's env names to their literal value, or to a
// placeholder for values taken from elsewhere.
func envOf(c *corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			env[e.Name] = "<fieldRef:" + e.ValueFrom.FieldRef.FieldPath + ">"
		default:
			env[e.Name] = "<valueFrom>"
		}
	}
	return env
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

// expand replaces $(VAR) like the kubelet does and reports the undefined
// variables (which the kubelet would leave as they are).
func expand(s string, env map[string]string) (string, []string) {
	var missing []string
	out := varRef.ReplaceAllStringFunc(s, func(m string) string {
		name := varRef.FindStringSubmatch(m)[1]
		v, ok := env[name]
		if !ok {
			missing = append(missing, name)
			return m
		}
		return v
	})
	return out, missing
}

// flags parses "--name=value", "--name value" and bare "--name" arguments
// (after $(VAR) expansion). Repeated flags keep every value.
func flags(c *corev1.Container) (map[string][]string, []string) {
	env := envOf(c)
	args := make([]string, 0, len(c.Args))
	for _, a := range c.Args {
		e, _ := expand(a, env)
		args = append(args, e)
	}
	out := map[string][]string{}
	var positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			positional = append(positional, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasVal {
			if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				val = args[i+1]
				i++
			} else {
				val = "true"
			}
		}
		out[name] = append(out[name], val)
	}
	return out, positional
}

func flag1(f map[string][]string, name string) (string, bool) {
	v, ok := f[name]
	if !ok || len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// mountFor finds the mount of c that holds the container path p: the
// volume's name and p relative to the mount point.
func mountFor(c *corev1.Container, p string) (*corev1.VolumeMount, string, bool) {
	p = path.Clean(p)
	var best *corev1.VolumeMount
	var rel string
	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		mp := path.Clean(m.MountPath)
		var r string
		switch {
		case p == mp:
			r = "."
		case mp == "/":
			r = strings.TrimPrefix(p, "/")
		case strings.HasPrefix(p, mp+"/"):
			r = strings.TrimPrefix(p, mp+"/")
		default:
			continue
		}
		if best == nil || len(mp) > len(path.Clean(best.MountPath)) {
			best, rel = m, r
		}
	}
	return best, rel, best != nil
}

func volumeNamed(s *corev1.PodSpec, name string) *corev1.Volume {
	for i := range s.Volumes {
		if s.Volumes[i].Name == name {
			return &s.Volumes[i]
		}
	}
	return nil
}

func isPrivileged(c *corev1.Container) bool {
	return c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged
}

// probePort resolves a probe's port: a number, or the name of one of the
// container's own ports (the kubelet looks nowhere else).
func probePort(c *corev1.Container, p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		if p.IntVal < 1 || p.IntVal > 65535 {
			return 0, fmt.Errorf("port %d out of range", p.IntVal)
		}
		return int(p.IntVal), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("named port %q is not a port of container %s", p.StrVal, c.Name)
}

func configMapHasKey(cm *corev1.ConfigMap, key string) bool {
	_, a := cm.Data[key]
	_, b := cm.BinaryData[key]
	return a || b
}

func secretHasKey(s *corev1.Secret, key string) bool {
	_, a := s.Data[key]
	_, b := s.StringData[key]
	return a || b
}

func TestWorkloads(t *testing.T) {
	objs := load(t)
	type hostPortUse struct {
		who  string
		port int
	}
	var hostPorts []hostPortUse

	for _, w := range workloads(objs) {
		o, s := w.o, w.spec()
		ns := o.ns()

		if w.selector == nil {
			t.Errorf("%s: no selector", o)
		} else if sel, err := metav1.LabelSelectorAsSelector(w.selector); err != nil {
			t.Errorf("%s: selector: %v", o, err)
		} else if sel.Empty() || !sel.Matches(labels.Set(w.tmpl.Labels)) {
			t.Errorf("%s: selector %v does not select the pod template's labels %v", o, sel, w.tmpl.Labels)
		}
		if w.replicas != nil && *w.replicas < 1 {
			t.Errorf("%s: replicas %d", o, *w.replicas)
		}

		if s.ServiceAccountName == "" {
			t.Errorf("%s: no serviceAccountName (the namespace's default account would be used)", o)
		} else if lookup[corev1.ServiceAccount](objs, ns, s.ServiceAccountName) == nil {
			t.Errorf("%s: serviceAccountName %q is not a ServiceAccount of namespace %s in the manifests", o, s.ServiceAccountName, ns)
		}
		if s.HostNetwork && s.DNSPolicy != corev1.DNSClusterFirstWithHostNet && s.DNSPolicy != corev1.DNSDefault {
			t.Errorf("%s: hostNetwork pod with dnsPolicy %q: say ClusterFirstWithHostNet (or Default) explicitly", o, s.DNSPolicy)
		}

		// Volumes and what they refer to.
		volNames := map[string]bool{}
		for _, v := range s.Volumes {
			if volNames[v.Name] {
				t.Errorf("%s: volume %q defined twice", o, v.Name)
			}
			volNames[v.Name] = true
			if e := validation.IsDNS1123Label(v.Name); len(e) > 0 {
				t.Errorf("%s: volume name %q: %v", o, v.Name, e)
			}
			checkConfigMap := func(name string, items []corev1.KeyToPath) {
				cm := lookup[corev1.ConfigMap](objs, ns, name)
				if cm == nil {
					t.Errorf("%s: volume %q: ConfigMap %s/%s is not in the manifests", o, v.Name, ns, name)
					return
				}
				for _, it := range items {
					if !configMapHasKey(cm, it.Key) {
						t.Errorf("%s: volume %q: ConfigMap %s has no key %q", o, v.Name, name, it.Key)
					}
				}
			}
			checkSecret := func(name string, items []corev1.KeyToPath) {
				sec := lookup[corev1.Secret](objs, ns, name)
				if sec == nil {
					t.Errorf("%s: volume %q: Secret %s/%s is not in the manifests", o, v.Name, ns, name)
					return
				}
				for _, it := range items {
					if !secretHasKey(sec, it.Key) {
						t.Errorf("%s: volume %q: Secret %s has no key %q", o, v.Name, name, it.Key)
					}
				}
			}
			switch {
			case v.ConfigMap != nil:
				checkConfigMap(v.ConfigMap.Name, v.ConfigMap.Items)
			case v.Secret != nil:
				checkSecret(v.Secret.SecretName, v.Secret.Items)
			case v.Projected != nil:
				for _, src := range v.Projected.Sources {
					if src.ConfigMap != nil {
						checkConfigMap(src.ConfigMap.Name, src.ConfigMap.Items)
					}
					if src.Secret != nil {
						checkSecret(src.Secret.Name, src.Secret.Items)
					}
				}
			case v.HostPath != nil:
				if !path.IsAbs(v.HostPath.Path) {
					t.Errorf("%s: volume %q: hostPath %q is not absolute", o, v.Name, v.HostPath.Path)
				}
				// Without a type, the runtime makes a missing bind-mount
				// source: a directory where a device node belongs.
				if strings.HasPrefix(path.Clean(v.HostPath.Path), "/dev/") {
					if ty := v.HostPath.Type; ty == nil || (*ty != corev1.HostPathCharDev && *ty != corev1.HostPathBlockDev) {
						t.Errorf("%s: volume %q: device %s needs hostPath type CharDevice or BlockDevice", o, v.Name, v.HostPath.Path)
					}
				}
			}
		}

		names := map[string]bool{}
		for _, c := range allContainers(s) {
			who := fmt.Sprintf("%s: container %s", o, c.Name)
			if names[c.Name] {
				t.Errorf("%s: defined twice", who)
			}
			names[c.Name] = true
			if e := validation.IsDNS1123Label(c.Name); len(e) > 0 {
				t.Errorf("%s: name: %v", who, e)
			}

			// Image: pinned to a tag or a digest.
			repo, tag := imageRepo(c.Image)
			if c.Image == "" || repo == "" || tag == "" || tag == "latest" {
				t.Errorf("%s: image %q has no tag (or uses latest)", who, c.Image)
			}

			// Resources: requests for cpu and memory.
			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				q, ok := c.Resources.Requests[r]
				if !ok || q.IsZero() {
					t.Errorf("%s: no %s request", who, r)
				}
				if lim, ok := c.Resources.Limits[r]; ok && q.Cmp(lim) > 0 {
					t.Errorf("%s: %s request %s above its limit %s", who, r, q.String(), lim.String())
				}
			}

			// Security context rules the API server enforces.
			if sc := c.SecurityContext; sc != nil && isPrivileged(c) && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
				t.Errorf("%s: privileged with allowPrivilegeEscalation false", who)
			}

			// Mounts.
			mountPaths := map[string]bool{}
			for _, m := range c.VolumeMounts {
				if !volNames[m.Name] {
					t.Errorf("%s: mounts undefined volume %q", who, m.Name)
				}
				if !path.IsAbs(m.MountPath) {
					t.Errorf("%s: mountPath %q is not absolute", who, m.MountPath)
				}
				if mountPaths[path.Clean(m.MountPath)] {
					t.Errorf("%s: two mounts at %s", who, m.MountPath)
				}
				mountPaths[path.Clean(m.MountPath)] = true
				if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional && !isPrivileged(c) {
					t.Errorf("%s: Bidirectional mount propagation at %s needs a privileged container", who, m.MountPath)
				}
				if m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone {
					if v := volumeNamed(s, m.Name); v == nil || v.HostPath == nil {
						t.Errorf("%s: mount propagation %s at %s on a volume that is not a host path", who, *m.MountPropagation, m.MountPath)
					}
				}
			}

			// Environment: every $(VAR) resolves, every reference exists.
			env := envOf(c)
			for _, a := range append(append([]string{}, c.Command...), c.Args...) {
				if _, missing := expand(a, env); len(missing) > 0 {
					t.Errorf("%s: argument %q uses undefined variables %v", who, a, missing)
				}
			}
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					continue
				}
				if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
					if cm := lookup[corev1.ConfigMap](objs, ns, r.Name); cm == nil || !configMapHasKey(cm, r.Key) {
						t.Errorf("%s: env %s: ConfigMap %s key %s is not in the manifests", who, e.Name, r.Name, r.Key)
					}
				}
				if r := e.ValueFrom.SecretKeyRef; r != nil {
					if sec := lookup[corev1.Secret](objs, ns, r.Name); sec == nil || !secretHasKey(sec, r.Key) {
						t.Errorf("%s: env %s: Secret %s key %s is not in the manifests", who, e.Name, r.Name, r.Key)
					}
				}
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil && lookup[corev1.ConfigMap](objs, ns, ef.ConfigMapRef.Name) == nil {
					t.Errorf("%s: envFrom ConfigMap %s is not in the manifests", who, ef.ConfigMapRef.Name)
				}
				if ef.SecretRef != nil && lookup[corev1.Secret](objs, ns, ef.SecretRef.Name) == nil {
					t.Errorf("%s: envFrom Secret %s is not in the manifests", who, ef.SecretRef.Name)
				}
			}

			// Ports and probes.
			for _, p := range c.Ports {
				if p.Name != "" {
					if e := validation.IsValidPortName(p.Name); len(e) > 0 {
						t.Errorf("%s: port name %q: %v", who, p.Name, e)
					}
				}
				if s.HostNetwork {
					hostPorts = append(hostPorts, hostPortUse{who, int(p.ContainerPort)})
				}
			}
			if s.HostNetwork && imageName(c.Image) == "livenessprobe" {
				f, _ := flags(c)
				if hp, ok := flag1(f, "health-port"); ok {
					if n, err := strconv.Atoi(hp); err == nil && !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return int(p.ContainerPort) == n }) {
						hostPorts = append(hostPorts, hostPortUse{who, n})
					}
				}
			}
			for _, pr := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
				if pr != nil && pr.Exec != nil && (len(pr.Exec.Command) == 0 || pr.Exec.Command[0] == "") {
					t.Errorf("%s: exec probe without a command", who)
				}
				if pr == nil || pr.HTTPGet == nil {
					continue
				}
				if _, err := probePort(c, pr.HTTPGet.Port); err != nil {
					t.Errorf("%s: probe: %v", who, err)
				}
			}
		}
	}

	// Pods on the host's network share its ports (a DaemonSet's pods meet
	// every other DaemonSet's on each node).
	byPort := map[int][]string{}
	for _, u := range hostPorts {
		byPort[u.port] = append(byPort[u.port], u.who)
	}
	for p, users := range byPort {
		if len(users) > 1 {
			t.Errorf("host port %d is used by %d containers on the host network: %v", p, len(users), users)
		}
	}
}

// Every workload runs on linux/amd64 nodes only (the images are built for
// that), by a required node affinity.
func TestWorkloadsLinuxAMD64(t *testing.T) {
	for _, w := range workloads(load(t)) {
		want := map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
		if a := w.spec().Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
			for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
				for _, e := range term.MatchExpressions {
					if e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 && want[e.Key] == e.Values[0] {
						delete(want, e.Key)
					}
				}
			}
		}
		if len(want) > 0 {
			t.Errorf("%s: no required node affinity for %v", w.o, want)
		}
	}
}

// Pods on the host's network share the node's ports: no two workloads
// that can land on one node (every DaemonSet, and a Deployment's pod)
// may ask for the same one.
func TestHostNetworkPortsDistinct(t *testing.T) {
	owner := map[int32]string{}
	for _, w := range workloads(load(t)) {
		if !w.spec().HostNetwork {
			continue
		}
		seen := map[int32]bool{}
		for _, c := range allContainers(w.spec()) {
			for _, p := range c.Ports {
				if seen[p.ContainerPort] {
					continue // the same port named twice in one pod is the pod test's
				}
				seen[p.ContainerPort] = true
				if o, dup := owner[p.ContainerPort]; dup {
					t.Errorf("%s and %s both use port %d on the host's network", o, w.o, p.ContainerPort)
				}
				owner[p.ContainerPort] = w.o.String()
			}
		}
		// The livenessprobe's health port is the node's too.
		for _, c := range allContainers(w.spec()) {
			f, _ := flags(c)
			if hp, ok := flag1(f, "health-port"); ok && !seen[int32(atoi(hp))] {
				t.Errorf("%s: --health-port %s has no containerPort", w.o, hp)
			}
		}
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
