package manifests

// The manifests are only data, so this test is what keeps them honest:
//
//  1. Every *.yaml / *.yml file under manifests/ (any folder, so that new
//     components are covered without touching this file, except for a new
//     kind in the kinds table) is split into documents, and each document is
//     decoded strictly into its Kubernetes API type: an unknown or
//     duplicated field, a field in the wrong case, a value of the wrong type
//     or an unknown apiVersion/kind fails. TestStrictDecodingRejects proves
//     that on small bad documents.
//  2. Invariants that hold across documents: references (service accounts,
//     ConfigMaps, Secrets, roles, volumes, env vars, CSI drivers) resolve to
//     objects defined here; every container has a tagged image and resource
//     requests; RBAC grants what the CSI sidecars need, and an account bound
//     to nothing has no token mounted; JSON in ConfigMaps parses; device
//     host paths are type-checked; csi-ceph's flags, sockets, probes and
//     host paths fit its contract and the CSIDriver; the node agent's
//     DaemonSet has the host access it needs, and the cni-eni conflist it
//     installs parses as the runtime parses it and points at its socket.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
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

// kindInfo says which Go type a document decodes into and whether its kind
// lives in a namespace.
type kindInfo struct {
	newObj     func() any
	namespaced bool
}

type gvk struct{ APIVersion, Kind string }

// kinds are the only apiVersion/kind pairs allowed in manifests/. Add a row
// (and its Go type) to use a new kind.
var kinds = map[gvk]kindInfo{
	{"v1", "Namespace"}:      {func() any { return &corev1.Namespace{} }, false},
	{"v1", "ServiceAccount"}: {func() any { return &corev1.ServiceAccount{} }, true},
	{"v1", "ConfigMap"}:      {func() any { return &corev1.ConfigMap{} }, true},
	{"v1", "Secret"}:         {func() any { return &corev1.Secret{} }, true},

	{"apps/v1", "Deployment"}: {func() any { return &appsv1.Deployment{} }, true},
	{"apps/v1", "DaemonSet"}:  {func() any { return &appsv1.DaemonSet{} }, true},

	{"rbac.authorization.k8s.io/v1", "ClusterRole"}:        {func() any { return &rbacv1.ClusterRole{} }, false},
	{"rbac.authorization.k8s.io/v1", "ClusterRoleBinding"}: {func() any { return &rbacv1.ClusterRoleBinding{} }, false},
	{"rbac.authorization.k8s.io/v1", "Role"}:               {func() any { return &rbacv1.Role{} }, true},
	{"rbac.authorization.k8s.io/v1", "RoleBinding"}:        {func() any { return &rbacv1.RoleBinding{} }, true},

	{"storage.k8s.io/v1", "CSIDriver"}:    {func() any { return &storagev1.CSIDriver{} }, false},
	{"storage.k8s.io/v1", "StorageClass"}: {func() any { return &storagev1.StorageClass{} }, false},

	{"snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"}: {func() any { return &snapshotv1.VolumeSnapshotClass{} }, false},
}

// ---------------------------------------------------------------------------
// Loading and strict decoding.

// object is one decoded document.
type object struct {
	file       string // slash path relative to manifests/
	doc        int    // 1-based index among the file's non-empty documents
	apiVersion string
	kind       string
	namespaced bool
	obj        any // pointer to the API type
}

type metaObject interface {
	GetName() string
	GetNamespace() string
	GetLabels() map[string]string
}

func (o *object) meta() metaObject { return o.obj.(metaObject) }
func (o *object) name() string     { return o.meta().GetName() }
func (o *object) ns() string       { return o.meta().GetNamespace() }

func (o *object) String() string {
	id := o.name()
	if o.ns() != "" {
		id = o.ns() + "/" + id
	}
	return fmt.Sprintf("%s (document %d): %s %s", o.file, o.doc, o.kind, id)
}

// splitDocuments splits a multi-document YAML stream on its "---" lines.
func splitDocuments(r io.Reader) ([][]byte, error) {
	yr := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var docs [][]byte
	for {
		d, err := yr.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
	}
}

// decodeDocument decodes one YAML document strictly, the way the API server
// does: YAML with a duplicated key is refused, then the JSON form is decoded
// case-sensitively into the Go type of its apiVersion/kind with unknown and
// duplicate fields refused. It returns nil, nil for an empty document (only
// comments or nothing).
func decodeDocument(doc []byte) (*object, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	js = bytes.TrimSpace(js)
	if len(js) == 0 || string(js) == "null" {
		return nil, nil
	}
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(js, &tm); err != nil {
		return nil, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	if tm.APIVersion == "" || tm.Kind == "" {
		return nil, fmt.Errorf("apiVersion and kind are required (got %q, %q)", tm.APIVersion, tm.Kind)
	}
	info, ok := kinds[gvk{tm.APIVersion, tm.Kind}]
	if !ok {
		return nil, fmt.Errorf("unknown kind %s %s: add it to the kinds table of manifests_test.go", tm.APIVersion, tm.Kind)
	}
	o := &object{apiVersion: tm.APIVersion, kind: tm.Kind, namespaced: info.namespaced, obj: info.newObj()}
	strict, err := sigsjson.UnmarshalStrict(js, o.obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("%s %s: strict decoding: %w", tm.APIVersion, tm.Kind, errors.Join(strict...))
	}
	return o, nil
}

// manifestFiles lists the YAML files under root, skipping hidden folders
// and testdata.
func manifestFiles(root string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if ext := strings.ToLower(filepath.Ext(p)); ext == ".yaml" || ext == ".yml" {
			files = append(files, p)
		}
		return nil
	})
	sort.Strings(files)
	return files, err
}

// loadDir decodes every document of every manifest file under root. It
// returns all the objects that decoded and one error per failure.
func loadDir(root string) ([]*object, int, []error) {
	files, err := manifestFiles(root)
	if err != nil {
		return nil, 0, []error{err}
	}
	var objs []*object
	var errs []error
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		rel = filepath.ToSlash(rel)
		b, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		docs, err := splitDocuments(bytes.NewReader(b))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", rel, err))
			continue
		}
		n := 0
		for i, d := range docs {
			o, err := decodeDocument(d)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s, YAML document %d: %w", rel, i+1, err))
				continue
			}
			if o == nil {
				continue
			}
			n++
			o.file, o.doc = rel, n
			objs = append(objs, o)
		}
		if n == 0 && len(errs) == 0 {
			errs = append(errs, fmt.Errorf("%s: no Kubernetes object in the file", rel))
		}
	}
	return objs, len(files), errs
}

var (
	loadOnce   sync.Once
	loadedObjs []*object
	loadedN    int
	loadErrs   []error
)

// load returns the decoded manifests, failing the test if any document
// did not decode (TestManifestsDecodeStrictly lists the errors).
func load(t *testing.T) []*object {
	t.Helper()
	loadOnce.Do(func() { loadedObjs, loadedN, loadErrs = loadDir(".") })
	if len(loadErrs) > 0 {
		t.Fatalf("%d manifest documents do not decode (see TestManifestsDecodeStrictly): %v", len(loadErrs), loadErrs[0])
	}
	if loadedN == 0 {
		t.Fatal("no *.yaml file under manifests/")
	}
	return loadedObjs
}

// each calls fn for every object of Go type T.
func each[T any](objs []*object, fn func(o *object, v *T)) {
	for _, o := range objs {
		if v, ok := o.obj.(*T); ok {
			fn(o, v)
		}
	}
}

// lookup finds the object of type T with that namespace and name.
func lookup[T any](objs []*object, ns, name string) *T {
	for _, o := range objs {
		if v, ok := o.obj.(*T); ok && o.ns() == ns && o.name() == name {
			return v
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Strictness self-test.

func TestStrictDecodingRejects(t *testing.T) {
	const valid = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: x
  namespace: ns
spec:
  replicas: 2
  selector:
    matchLabels: {app: x}
  template:
    metadata:
      labels: {app: x}
    spec:
      containers:
        - name: x
          image: example.org/x:v1
`
	o, err := decodeDocument([]byte(valid))
	if err != nil {
		t.Fatalf("the valid control document does not decode: %v", err)
	}
	if d, ok := o.obj.(*appsv1.Deployment); !ok || d.Spec.Replicas == nil || *d.Spec.Replicas != 2 || d.Spec.Template.Spec.Containers[0].Image != "example.org/x:v1" {
		t.Fatalf("the valid control document decoded wrongly: %#v", o.obj)
	}

	bad := []struct {
		name, doc, want string
	}{
		{"unknown field", strings.Replace(valid, "replicas: 2", "replicaz: 2", 1), "replicaz"},
		{"field in the wrong case", strings.Replace(valid, "replicas: 2", "Replicas: 2", 1), "Replicas"},
		{"unknown nested field", strings.Replace(valid, "image: example.org/x:v1", "image: example.org/x:v1\n          imagePullPolicyy: Always", 1), "imagePullPolicyy"},
		{"duplicate key", strings.Replace(valid, "replicas: 2", "replicas: 2\n  replicas: 3", 1), "replicas"},
		{"wrong type", strings.Replace(valid, "replicas: 2", "replicas: two", 1), ""},
		{"wrong type (bool for string)", strings.Replace(valid, "image: example.org/x:v1", "image: yes", 1), ""},
		{"YAML 1.1 boolean for a string", strings.Replace(valid, "namespace: ns", "namespace: y", 1), "namespace"},
		{"unknown kind", strings.Replace(valid, "kind: Deployment", "kind: Deploymnt", 1), "unknown kind"},
		{"unknown apiVersion", strings.Replace(valid, "apiVersion: apps/v1", "apiVersion: apps/v1beta1", 1), "unknown kind"},
		{"no apiVersion", strings.Replace(valid, "apiVersion: apps/v1\n", "", 1), "apiVersion and kind"},
		{"not an object", "- a\n- b\n", ""},
		{"unknown field in a CRD type", "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: s}\ndriver: d\ndeletionPolicy: Delete\ndeletionpolicy: Retain\n", "deletionpolicy"},
		{"invalid quantity", strings.Replace(valid, "image: example.org/x:v1", "image: example.org/x:v1\n          resources: {requests: {cpu: lots}}", 1), ""},
		{"invalid base64 in Secret data", "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: n}\ndata: {k: '!!!'}\n", ""},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			o, err := decodeDocument([]byte(tc.doc))
			if err == nil {
				t.Fatalf("decoded without error (%T), want a failure:\n%s", o.obj, tc.doc)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
			t.Logf("rejected as expected: %v", err)
		})
	}

	// The splitter: empty and comment-only documents are skipped, the
	// others are kept in order.
	docs, err := splitDocuments(strings.NewReader("---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range docs {
		o, err := decodeDocument(d)
		if err != nil {
			t.Fatal(err)
		}
		if o != nil {
			names = append(names, o.name())
		}
	}
	if !slices.Equal(names, []string{"a", "b"}) {
		t.Fatalf("split into %v, want [a b]", names)
	}
}

// ---------------------------------------------------------------------------
// Every document.

func TestManifestsDecodeStrictly(t *testing.T) {
	loadOnce.Do(func() { loadedObjs, loadedN, loadErrs = loadDir(".") })
	for _, err := range loadErrs {
		t.Error(err)
	}
	if loadedN == 0 {
		t.Fatal("no *.yaml file under manifests/")
	}
	perFile := map[string]int{}
	for _, o := range loadedObjs {
		perFile[o.file]++
	}
	t.Logf("%d objects decoded strictly from %d files: %v", len(loadedObjs), loadedN, perFile)
}

func TestObjectMetadata(t *testing.T) {
	objs := load(t)
	namespaces := map[string]bool{"default": true, "kube-system": true, "kube-public": true, "kube-node-lease": true}
	each(objs, func(o *object, _ *corev1.Namespace) { namespaces[o.name()] = true })

	seen := map[string]*object{}
	for _, o := range objs {
		m := o.meta()
		if m.GetName() == "" {
			t.Errorf("%s: no metadata.name", o)
			continue
		}
		var bad []string
		switch o.kind {
		case "Namespace":
			bad = validation.IsDNS1123Label(m.GetName())
		case "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding":
			if strings.ContainsAny(m.GetName(), "/%") || m.GetName() == "." || m.GetName() == ".." {
				bad = []string{"not a valid path segment"}
			}
		default:
			bad = validation.IsDNS1123Subdomain(m.GetName())
		}
		if len(bad) > 0 {
			t.Errorf("%s: invalid name: %v", o, bad)
		}
		if o.namespaced {
			if m.GetNamespace() == "" {
				t.Errorf("%s: namespaced kind without metadata.namespace (it would land in the namespace of whoever applies it)", o)
			} else if !namespaces[m.GetNamespace()] {
				t.Errorf("%s: namespace %q is not defined in the manifests", o, m.GetNamespace())
			}
		} else if m.GetNamespace() != "" {
			t.Errorf("%s: cluster-scoped kind with metadata.namespace %q", o, m.GetNamespace())
		}
		for k, v := range m.GetLabels() {
			if e := validation.IsQualifiedName(k); len(e) > 0 {
				t.Errorf("%s: label key %q: %v", o, k, e)
			}
			if e := validation.IsValidLabelValue(v); len(e) > 0 {
				t.Errorf("%s: label %s value %q: %v", o, k, v, e)
			}
		}
		group, _, _ := strings.Cut(o.apiVersion, "/")
		if !strings.Contains(o.apiVersion, "/") {
			group = ""
		}
		key := group + "/" + o.kind + "/" + m.GetNamespace() + "/" + m.GetName()
		if prev, dup := seen[key]; dup {
			t.Errorf("%s: defined twice (also %s)", o, prev)
		}
		seen[key] = o
	}
}

// ---------------------------------------------------------------------------
// Workloads.

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

// ---------------------------------------------------------------------------
// RBAC.

type grant struct {
	rule      rbacv1.PolicyRule
	namespace string // "" for a cluster-wide grant
	from      string
}

// grantsFor collects the rules bound to a service account.
func grantsFor(objs []*object, ns, sa string) []grant {
	subjectIs := func(subs []rbacv1.Subject) bool {
		for _, s := range subs {
			if s.Kind == rbacv1.ServiceAccountKind && s.Name == sa && s.Namespace == ns {
				return true
			}
		}
		return false
	}
	var gs []grant
	each(objs, func(o *object, b *rbacv1.ClusterRoleBinding) {
		if !subjectIs(b.Subjects) || b.RoleRef.Kind != "ClusterRole" {
			return
		}
		if r := lookup[rbacv1.ClusterRole](objs, "", b.RoleRef.Name); r != nil {
			for _, rule := range r.Rules {
				gs = append(gs, grant{rule, "", o.String()})
			}
		}
	})
	each(objs, func(o *object, b *rbacv1.RoleBinding) {
		if !subjectIs(b.Subjects) {
			return
		}
		var rules []rbacv1.PolicyRule
		switch b.RoleRef.Kind {
		case "Role":
			if r := lookup[rbacv1.Role](objs, o.ns(), b.RoleRef.Name); r != nil {
				rules = r.Rules
			}
		case "ClusterRole":
			if r := lookup[rbacv1.ClusterRole](objs, "", b.RoleRef.Name); r != nil {
				rules = r.Rules
			}
		}
		for _, rule := range rules {
			gs = append(gs, grant{rule, o.ns(), o.String()})
		}
	})
	return gs
}

// bound says whether a RoleBinding or ClusterRoleBinding names the account.
func bound(objs []*object, ns, sa string) bool {
	is := func(subs []rbacv1.Subject) bool {
		return slices.ContainsFunc(subs, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Name == sa && s.Namespace == ns
		})
	}
	found := false
	each(objs, func(_ *object, b *rbacv1.ClusterRoleBinding) { found = found || is(b.Subjects) })
	each(objs, func(_ *object, b *rbacv1.RoleBinding) { found = found || is(b.Subjects) })
	return found
}

func has(list []string, v string) bool { return slices.Contains(list, v) || slices.Contains(list, "*") }

// allowed says whether the grants allow verb on group/resource in namespace
// ns ("" meaning cluster-wide: all namespaces, or a cluster-scoped kind).
func allowed(gs []grant, ns, group, resource, verb string) bool {
	for _, g := range gs {
		r := g.rule
		if len(r.ResourceNames) > 0 || (g.namespace != "" && g.namespace != ns) {
			continue
		}
		if has(r.APIGroups, group) && has(r.Resources, resource) && has(r.Verbs, verb) {
			return true
		}
	}
	return false
}

type permission struct {
	group, resource string
	verbs           []string
	namespaced      bool // in the workload's own namespace only
}

// What the controller's sidecars need (their upstream RBAC), and
// csi-ceph's node plugin.
var controllerPermissions = []permission{
	// external-provisioner
	{"", "persistentvolumes", []string{"create", "delete", "get", "list", "watch", "patch"}, false},
	{"", "persistentvolumeclaims", []string{"get", "list", "watch", "update"}, false},
	{"storage.k8s.io", "storageclasses", []string{"get", "list", "watch"}, false},
	{"", "events", []string{"list", "watch", "create", "update", "patch"}, false},
	{"snapshot.storage.k8s.io", "volumesnapshots", []string{"get", "list"}, false},
	{"snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"get", "list"}, false},
	{"storage.k8s.io", "csinodes", []string{"get", "list", "watch"}, false},
	{"", "nodes", []string{"get", "list", "watch"}, false},
	{"storage.k8s.io", "volumeattachments", []string{"get", "list", "watch"}, false},
	{"", "secrets", []string{"get"}, false},
	// external-attacher
	{"", "persistentvolumes", []string{"get", "list", "watch", "patch"}, false},
	{"storage.k8s.io", "volumeattachments", []string{"get", "list", "watch", "patch"}, false},
	{"storage.k8s.io", "volumeattachments/status", []string{"patch"}, false},
	// external-snapshotter
	{"snapshot.storage.k8s.io", "volumesnapshotclasses", []string{"get", "list", "watch"}, false},
	{"snapshot.storage.k8s.io", "volumesnapshotcontents", []string{"create", "get", "list", "watch", "update", "delete", "patch"}, false},
	{"snapshot.storage.k8s.io", "volumesnapshotcontents/status", []string{"update", "patch"}, false},
	// external-resizer
	{"", "persistentvolumeclaims", []string{"get", "list", "watch"}, false},
	{"", "persistentvolumeclaims/status", []string{"patch"}, false},
	{"", "pods", []string{"list", "watch"}, false},
	// leader election
	{"coordination.k8s.io", "leases", []string{"get", "watch", "list", "delete", "update", "create"}, true},
}

var nodePermissions = []permission{
	{"", "nodes", []string{"get"}, false},
}

func TestRBAC(t *testing.T) {
	objs := load(t)
	builtinClusterRoles := map[string]bool{"cluster-admin": true, "admin": true, "edit": true, "view": true}
	checkRules := func(o *object, rules []rbacv1.PolicyRule) {
		if len(rules) == 0 {
			t.Errorf("%s: no rules", o)
		}
		for i, r := range rules {
			if len(r.Verbs) == 0 || (len(r.Resources) == 0 && len(r.NonResourceURLs) == 0) {
				t.Errorf("%s: rule %d grants nothing", o, i)
			}
			if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") {
				t.Errorf("%s: rule %d uses a wildcard: list what is needed", o, i)
			}
		}
	}
	each(objs, func(o *object, r *rbacv1.ClusterRole) { checkRules(o, r.Rules) })
	each(objs, func(o *object, r *rbacv1.Role) { checkRules(o, r.Rules) })
	checkBinding := func(o *object, subs []rbacv1.Subject, ref rbacv1.RoleRef) {
		if ref.APIGroup != rbacv1.GroupName {
			t.Errorf("%s: roleRef.apiGroup %q", o, ref.APIGroup)
		}
		switch ref.Kind {
		case "ClusterRole":
			if lookup[rbacv1.ClusterRole](objs, "", ref.Name) == nil && !builtinClusterRoles[ref.Name] && !strings.HasPrefix(ref.Name, "system:") {
				t.Errorf("%s: ClusterRole %q is not in the manifests", o, ref.Name)
			}
		case "Role":
			if o.kind != "RoleBinding" || lookup[rbacv1.Role](objs, o.ns(), ref.Name) == nil {
				t.Errorf("%s: Role %q is not in the manifests (in namespace %q)", o, ref.Name, o.ns())
			}
		default:
			t.Errorf("%s: roleRef.kind %q", o, ref.Kind)
		}
		if len(subs) == 0 {
			t.Errorf("%s: no subjects", o)
		}
		for _, s := range subs {
			if s.Kind == rbacv1.ServiceAccountKind {
				if s.Namespace == "" || lookup[corev1.ServiceAccount](objs, s.Namespace, s.Name) == nil {
					t.Errorf("%s: subject ServiceAccount %s/%s is not in the manifests", o, s.Namespace, s.Name)
				}
			}
		}
	}
	each(objs, func(o *object, b *rbacv1.ClusterRoleBinding) { checkBinding(o, b.Subjects, b.RoleRef) })
	each(objs, func(o *object, b *rbacv1.RoleBinding) { checkBinding(o, b.Subjects, b.RoleRef) })

	// A workload whose account is bound to no role has no use for its
	// token: it must not be mounted.
	for _, w := range workloads(objs) {
		s := w.spec()
		sa := lookup[corev1.ServiceAccount](objs, w.o.ns(), s.ServiceAccountName)
		if sa == nil || bound(objs, w.o.ns(), s.ServiceAccountName) {
			continue
		}
		automount := true
		if sa.AutomountServiceAccountToken != nil {
			automount = *sa.AutomountServiceAccountToken
		}
		if s.AutomountServiceAccountToken != nil {
			automount = *s.AutomountServiceAccountToken
		}
		if automount {
			t.Errorf("%s: ServiceAccount %s is bound to no role, yet its token is mounted: set automountServiceAccountToken false", w.o, s.ServiceAccountName)
		}
	}

	// csi-ceph: the controller's account has what its sidecars need (leases
	// only in its namespace); the node's account has only get on nodes.
	ctrl := lookup[appsv1.Deployment](objs, cephNamespace, cephController)
	node := lookup[appsv1.DaemonSet](objs, cephNamespace, cephNode)
	if ctrl == nil || node == nil {
		t.Fatalf("Deployment %s/%s or DaemonSet %s/%s missing", cephNamespace, cephController, cephNamespace, cephNode)
	}
	check := func(what, sa string, perms []permission) []grant {
		gs := grantsFor(objs, cephNamespace, sa)
		for _, p := range perms {
			ns := ""
			if p.namespaced {
				ns = cephNamespace
			}
			for _, v := range p.verbs {
				if !allowed(gs, ns, p.group, p.resource, v) {
					t.Errorf("%s (ServiceAccount %s) may not %s %s in group %q (namespace %q)", what, sa, v, p.resource, p.group, ns)
				}
			}
		}
		return gs
	}
	cg := check("csi-ceph controller", ctrl.Spec.Template.Spec.ServiceAccountName, controllerPermissions)
	if allowed(cg, "", "coordination.k8s.io", "leases", "create") {
		t.Errorf("csi-ceph controller may create leases in every namespace: grant them with a Role in %s", cephNamespace)
	}
	ng := check("csi-ceph node", node.Spec.Template.Spec.ServiceAccountName, nodePermissions)
	for _, g := range ng {
		for _, grp := range g.rule.APIGroups {
			for _, res := range g.rule.Resources {
				for _, v := range g.rule.Verbs {
					if grp != "" || res != "nodes" || v != "get" {
						t.Errorf("csi-ceph node may %s %s in group %q (%s): it needs only get on nodes", v, res, grp, g.from)
					}
				}
			}
		}
	}
}

// ---------------------------------------------------------------------------
// CSI drivers, storage classes, snapshot classes.

// secretParams are the CSI secret parameters the sidecars and the kubelet
// understand (each with -secret-name and -secret-namespace).
var secretParams = []string{"provisioner", "controller-publish", "node-stage", "node-publish", "controller-expand", "node-expand", "snapshotter", "groupsnapshotter"}

// checkCSIParams checks the csi.storage.k8s.io/ parameters: known keys,
// name and namespace in pairs, and the Secrets they name defined here.
// It returns the Secrets referenced, by parameter prefix.
func checkCSIParams(t *testing.T, objs []*object, o *object, params map[string]string) map[string]*corev1.Secret {
	t.Helper()
	known := map[string]bool{"csi.storage.k8s.io/fstype": true}
	for _, p := range secretParams {
		known["csi.storage.k8s.io/"+p+"-secret-name"] = true
		known["csi.storage.k8s.io/"+p+"-secret-namespace"] = true
	}
	for k := range params {
		if strings.HasPrefix(k, "csi.storage.k8s.io/") && !known[k] {
			t.Errorf("%s: unknown parameter %q", o, k)
		}
	}
	out := map[string]*corev1.Secret{}
	for _, p := range secretParams {
		name, hasName := params["csi.storage.k8s.io/"+p+"-secret-name"]
		ns, hasNS := params["csi.storage.k8s.io/"+p+"-secret-namespace"]
		if hasName != hasNS {
			t.Errorf("%s: %s secret: name and namespace go together", o, p)
			continue
		}
		if !hasName || strings.Contains(name+ns, "${") {
			continue
		}
		sec := lookup[corev1.Secret](objs, ns, name)
		if sec == nil {
			t.Errorf("%s: %s secret %s/%s is not in the manifests", o, p, ns, name)
			continue
		}
		out[p] = sec
	}
	return out
}

func TestCSIDriverAndClasses(t *testing.T) {
	objs := load(t)
	drivers := map[string]*storagev1.CSIDriver{}
	each(objs, func(o *object, d *storagev1.CSIDriver) { drivers[d.Name] = d })

	d := drivers[cephDriverName]
	if d == nil {
		t.Fatalf("CSIDriver %s is not in the manifests", cephDriverName)
	}
	if d.Spec.AttachRequired == nil || !*d.Spec.AttachRequired {
		t.Errorf("CSIDriver %s: attachRequired must be true", d.Name)
	}
	if d.Spec.PodInfoOnMount == nil || *d.Spec.PodInfoOnMount {
		t.Errorf("CSIDriver %s: podInfoOnMount must be false", d.Name)
	}
	if d.Spec.FSGroupPolicy == nil || *d.Spec.FSGroupPolicy != storagev1.FileFSGroupPolicy {
		t.Errorf("CSIDriver %s: fsGroupPolicy must be File", d.Name)
	}
	if !slices.Equal(d.Spec.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
		t.Errorf("CSIDriver %s: volumeLifecycleModes %v, want [Persistent]", d.Name, d.Spec.VolumeLifecycleModes)
	}

	clusterIDs := cephClusterIDs(t, objs)

	// Secrets of csi-ceph carry userID and userKey.
	checkCephSecrets := func(o *object, secs map[string]*corev1.Secret, need ...string) {
		for _, p := range need {
			if _, ok := secs[p]; !ok {
				t.Errorf("%s: no %s secret (csi.storage.k8s.io/%s-secret-name and -namespace)", o, p, p)
			}
		}
		for p, sec := range secs {
			for _, k := range []string{"userID", "userKey"} {
				if !secretHasKey(sec, k) {
					t.Errorf("%s: %s secret %s/%s has no key %s", o, p, sec.Namespace, sec.Name, k)
				}
			}
		}
	}
	checkCluster := func(o *object, params map[string]string) {
		if params["clusterID"] == "" || params["pool"] == "" {
			t.Errorf("%s: parameters clusterID and pool are required", o)
		} else if !clusterIDs[params["clusterID"]] {
			t.Errorf("%s: clusterID %q is not in csi-ceph's cluster config %v", o, params["clusterID"], clusterIDs)
		}
	}

	sawSC := false
	each(objs, func(o *object, sc *storagev1.StorageClass) {
		if drivers[sc.Provisioner] == nil {
			t.Errorf("%s: provisioner %q is not a CSIDriver of the manifests", o, sc.Provisioner)
		}
		secs := checkCSIParams(t, objs, o, sc.Parameters)
		if sc.Provisioner != cephDriverName {
			return
		}
		// What csi-ceph's CreateVolume accepts.
		for k := range sc.Parameters {
			switch k {
			case "clusterID", "pool", "imageFeatures", "mounter":
			default:
				if !strings.HasPrefix(k, "csi.storage.k8s.io/") {
					t.Errorf("%s: csi-ceph refuses parameter %q (clusterID, pool, imageFeatures, mounter)", o, k)
				}
			}
		}
		checkCluster(o, sc.Parameters)
		if m, ok := sc.Parameters["mounter"]; ok && m != "krbd" && m != "rbd-nbd" && m != "fuse" {
			t.Errorf("%s: mounter %q: want krbd, rbd-nbd or fuse", o, m)
		}
		if f, ok := sc.Parameters["imageFeatures"]; ok {
			if err := validImageFeatures(f); err != nil {
				t.Errorf("%s: imageFeatures %q: %v", o, f, err)
			}
		}
		if fs := sc.Parameters["csi.storage.k8s.io/fstype"]; fs != "ext4" && fs != "xfs" {
			t.Errorf("%s: csi.storage.k8s.io/fstype %q: want ext4 or xfs", o, fs)
		}
		checkCephSecrets(o, secs, "provisioner", "controller-expand", "node-stage")
		if sc.Name != cephStorageClass {
			return
		}
		sawSC = true
		if sc.ReclaimPolicy == nil || *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			t.Errorf("%s: reclaimPolicy must be Delete", o)
		}
		if sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			t.Errorf("%s: allowVolumeExpansion must be true", o)
		}
		if sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingImmediate {
			t.Errorf("%s: volumeBindingMode must be Immediate", o)
		}
		if sc.Parameters["csi.storage.k8s.io/fstype"] != "ext4" {
			t.Errorf("%s: csi.storage.k8s.io/fstype must be ext4", o)
		}
	})
	if !sawSC {
		t.Errorf("StorageClass %s of %s is not in the manifests", cephStorageClass, cephDriverName)
	}

	sawVSC := false
	each(objs, func(o *object, vsc *snapshotv1.VolumeSnapshotClass) {
		if drivers[vsc.Driver] == nil {
			t.Errorf("%s: driver %q is not a CSIDriver of the manifests", o, vsc.Driver)
		}
		secs := checkCSIParams(t, objs, o, vsc.Parameters)
		if vsc.Driver != cephDriverName {
			return
		}
		checkCluster(o, vsc.Parameters)
		checkCephSecrets(o, secs, "snapshotter")
		if vsc.Name == cephSnapshotClass {
			sawVSC = true
			if vsc.DeletionPolicy != snapshotv1.VolumeSnapshotContentDelete {
				t.Errorf("%s: deletionPolicy %q, want Delete", o, vsc.DeletionPolicy)
			}
		}
	})
	if !sawVSC {
		t.Errorf("VolumeSnapshotClass %s of %s is not in the manifests", cephSnapshotClass, cephDriverName)
	}
}

// validImageFeatures mirrors csi-ceph's rbd.ParseFeatures.
func validImageFeatures(s string) error {
	set := map[string]bool{}
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		switch n {
		case "layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten":
			set[n] = true
		default:
			return fmt.Errorf("feature %q is not supported", n)
		}
	}
	if set["object-map"] && !set["exclusive-lock"] {
		return errors.New("object-map needs exclusive-lock")
	}
	if set["fast-diff"] && !set["object-map"] {
		return errors.New("fast-diff needs object-map")
	}
	return nil
}

// ---------------------------------------------------------------------------
// csi-ceph's cluster config.

var clusterIDRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,36}$`)

// parseCephConfig checks a config.json the way csi-ceph's ParseClusters
// does (plus exact key names) and returns its clusterIDs.
func parseCephConfig(b []byte) ([]string, error) {
	var list []map[string]json.RawMessage
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("want a JSON list of objects: %w", err)
	}
	if len(list) == 0 {
		return nil, errors.New("no cluster")
	}
	var ids []string
	for i, c := range list {
		var id string
		var mons []string
		if err := json.Unmarshal(c["clusterID"], &id); err != nil || !clusterIDRe.MatchString(id) {
			return nil, fmt.Errorf("entry %d: clusterID must be 1 to 36 letters, digits, '-', '_' or '.' (%s)", i, c["clusterID"])
		}
		if slices.Contains(ids, id) {
			return nil, fmt.Errorf("clusterID %q appears twice", id)
		}
		if err := json.Unmarshal(c["monitors"], &mons); err != nil || len(mons) == 0 {
			return nil, fmt.Errorf("cluster %q: monitors must be a non-empty list of \"host:port\" strings", id)
		}
		for _, m := range mons {
			m = strings.TrimPrefix(strings.TrimPrefix(m, "v1:"), "v2:")
			host, port, err := net.SplitHostPort(m)
			p, perr := strconv.Atoi(port)
			if err != nil || host == "" || strings.ContainsAny(host, " ,;/") || perr != nil || p < 1 || p > 65535 {
				return nil, fmt.Errorf("cluster %q: monitor %q is not host:port", id, m)
			}
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// cephConfigRef is where a csi-ceph container reads --cluster-config from.
type cephConfigRef struct{ ns, configMap, key string }

// cephConfigOf resolves a csi-ceph container's --cluster-config to a key of
// a ConfigMap volume.
func cephConfigOf(s *corev1.PodSpec, c *corev1.Container, ns string) (cephConfigRef, error) {
	f, _ := flags(c)
	p, ok := flag1(f, "cluster-config")
	if !ok {
		p = "/etc/csi-ceph/config.json"
	}
	m, rel, ok := mountFor(c, p)
	if !ok {
		return cephConfigRef{}, fmt.Errorf("--cluster-config %s is on no volume mount", p)
	}
	v := volumeNamed(s, m.Name)
	if v == nil || v.ConfigMap == nil {
		return cephConfigRef{}, fmt.Errorf("--cluster-config %s is not on a ConfigMap volume", p)
	}
	key := rel
	if len(v.ConfigMap.Items) > 0 {
		key = ""
		for _, it := range v.ConfigMap.Items {
			if path.Clean(it.Path) == rel {
				key = it.Key
			}
		}
		if key == "" {
			return cephConfigRef{}, fmt.Errorf("--cluster-config %s: volume %s projects no item at %s", p, v.Name, rel)
		}
	}
	return cephConfigRef{ns, v.ConfigMap.Name, key}, nil
}

// cephClusterIDs parses the cluster config every csi-ceph container reads
// and returns the clusterIDs (the same config for all of them).
func cephClusterIDs(t *testing.T, objs []*object) map[string]bool {
	t.Helper()
	refs := map[cephConfigRef]bool{}
	for _, w := range workloads(objs) {
		for _, c := range allContainers(w.spec()) {
			if imageName(c.Image) != "csi-ceph" {
				continue
			}
			ref, err := cephConfigOf(w.spec(), c, w.o.ns())
			if err != nil {
				t.Errorf("%s: container %s: %v", w.o, c.Name, err)
				continue
			}
			refs[ref] = true
		}
	}
	if len(refs) != 1 {
		t.Errorf("csi-ceph containers read %d different cluster configs (%v), want one", len(refs), refs)
	}
	ids := map[string]bool{}
	for ref := range refs {
		cm := lookup[corev1.ConfigMap](objs, ref.ns, ref.configMap)
		if cm == nil || !configMapHasKey(cm, ref.key) {
			t.Errorf("cluster config: ConfigMap %s/%s key %s is not in the manifests", ref.ns, ref.configMap, ref.key)
			continue
		}
		got, err := parseCephConfig([]byte(cm.Data[ref.key]))
		if err != nil {
			t.Errorf("ConfigMap %s/%s key %s: %v", ref.ns, ref.configMap, ref.key, err)
		}
		for _, id := range got {
			ids[id] = true
		}
	}
	return ids
}

func TestCephClusterConfig(t *testing.T) {
	objs := load(t)
	cm := lookup[corev1.ConfigMap](objs, cephNamespace, cephConfigMap)
	if cm == nil {
		t.Fatalf("ConfigMap %s/%s is not in the manifests", cephNamespace, cephConfigMap)
	}
	ids, err := parseCephConfig([]byte(cm.Data["config.json"]))
	if err != nil {
		t.Fatalf("ConfigMap %s config.json: %v", cephConfigMap, err)
	}
	got := cephClusterIDs(t, objs)
	if len(got) != len(ids) || !slices.ContainsFunc(ids, func(id string) bool { return got[id] }) {
		t.Errorf("csi-ceph containers read clusters %v, ConfigMap %s has %v", got, cephConfigMap, ids)
	}
	// The parser itself refuses what csi-ceph refuses.
	for _, bad := range []string{`[]`, `{}`, `[{"clusterID": "a"}]`, `[{"clusterID": "a", "monitors": []}]`,
		`[{"clusterid": "a", "monitors": ["h:1"]}]`, `[{"clusterID": "a b", "monitors": ["h:1"]}]`,
		`[{"clusterID": "a", "monitors": ["h"]}]`, `[{"clusterID": "a", "monitors": ["h:1"]}, {"clusterID": "a", "monitors": ["h:1"]}]`} {
		if _, err := parseCephConfig([]byte(bad)); err == nil {
			t.Errorf("parseCephConfig accepted %s", bad)
		}
	}
	if _, err := parseCephConfig([]byte(`[{"clusterID": "c.1", "monitors": ["v2:[fd00::1]:3300", "mon-a:6789"], "cephFS": {}}]`)); err != nil {
		t.Errorf("parseCephConfig refused a valid config: %v", err)
	}
}

// ---------------------------------------------------------------------------
// csi-ceph's workloads.

// cephFlags are csi-ceph's flags (csi-ceph/main.go); it takes no others.
var cephFlags = map[string]bool{
	"endpoint": true, "nodeid": true, "type": true, "mode": true, "cluster-config": true,
	"credentials-dir": true, "state-dir": true, "max-volumes-per-node": true, "log-level": true,
}

// cephDriverNames maps csi-ceph's --type to its CSI driver name.
var cephDriverNames = map[string]string{"rbd": cephDriverName}

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
			if !cephFlags[name] {
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
	if s.HostNetwork || s.HostPID {
		t.Errorf("%s: the controller needs neither the host's network nor its PIDs", w.o)
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

// ---------------------------------------------------------------------------
// JSON in ConfigMaps.

// TestConfigMapJSON parses every ConfigMap key whose name says JSON.
func TestConfigMapJSON(t *testing.T) {
	objs := load(t)
	each(objs, func(o *object, cm *corev1.ConfigMap) {
		for k, v := range cm.Data {
			switch path.Ext(k) {
			case ".json", ".conf", ".conflist":
				var x any
				if err := json.Unmarshal([]byte(v), &x); err != nil {
					t.Errorf("%s: key %s is not JSON: %v", o, k, err)
				}
			}
		}
	})
}

// ---------------------------------------------------------------------------
// The node agent and cni-eni.

// The nodeagent contract (README: nodeagent serve, cni-eni).
const (
	agentNamespace = "kube-system"
	agentDaemonSet = "nodeagent"
	agentImageRepo = "ghcr.io/nodeinfra/nodeagent"
	agentSocket    = "/run/nodeagent/nodeagent.sock" // serve's default
	agentStateDir  = "/var/lib/nodeagent"            // serve's default
	// agentShutdown is the longest clean stop of `nodeagent serve`
	// (serve.go): 5 s for each of its two HTTP servers, then up to 10 s of
	// gRPC GracefulStop.
	agentShutdown = 20 * time.Second

	cniConfigMap   = "cni-eni-config"
	cniConflist    = "10-cni-eni.conflist"
	cniPluginType  = "cni-eni"
	cniBinDir      = "/opt/cni/bin"
	cniConfDir     = "/etc/cni/net.d"
	cniExampleFile = "cni-eni/10-cni-eni.conflist"
)

// agentServeFlags are the flags of `nodeagent serve` (nodeagent/serve.go).
var agentServeFlags = map[string]bool{
	"socket": true, "state-dir": true, "metrics-addr": true, "probe-addr": true,
	"reconcile-interval": true, "log-level": true,
	"guest-kernel": true, "guest-initrd": true, "qemu": true, "accel": true, "cgroup-parent": true,
	"boot-timeout": true, "ceph-conf": true, "ceph-user": true, "ceph-keyring": true,
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
		if !agentServeFlags[name] {
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
		_, port, err := net.SplitHostPort(a)
		if err != nil {
			t.Errorf("%s: --%s %q: %v", who, name, a, err)
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
		{"/dev/kvm", corev1.HostPathCharDev, ""},
		{"/dev/net/tun", corev1.HostPathCharDev, ""},
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

// cniNetConf is cni-eni's network configuration (cni-eni/config.go), the
// fields of one plugin entry of a conflist; the runtime adds name and
// cniVersion.
type cniNetConf struct {
	Type        string `json:"type"`
	AgentSocket string `json:"agentSocket,omitempty"`
	Timeout     string `json:"timeout,omitempty"`
	LogFile     string `json:"logFile,omitempty"`
	LogLevel    string `json:"logLevel,omitempty"`
}

// cniNameRe is the CNI spec's network name.
var cniNameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// parseCNIConflist parses a conflist as libcni (the runtime's loader)
// does, then cni-eni's entry strictly, and checks what cni-eni's
// parseConfig checks. It returns the socket cni-eni will dial.
func parseCNIConflist(b []byte) (string, error) {
	// libcni re-encodes what it reads (a duplicated key vanishes): decode
	// the text strictly first.
	var top struct {
		CNIVersion             string            `json:"cniVersion"`
		CNIVersions            []string          `json:"cniVersions"`
		Name                   string            `json:"name"`
		Plugins                []json.RawMessage `json:"plugins"`
		DisableCheck           bool              `json:"disableCheck"`
		DisableGC              bool              `json:"disableGC"`
		LoadOnlyInlinedPlugins bool              `json:"loadOnlyInlinedPlugins"`
	}
	strict, err := sigsjson.UnmarshalStrict(b, &top, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return "", err
	}
	if len(strict) > 0 {
		return "", fmt.Errorf("conflist: %w", errors.Join(strict...))
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return "", err
	}
	if list.CNIVersion != "1.0.0" {
		return "", fmt.Errorf("cniVersion %q: want 1.0.0 (containerd 1.6 refuses 1.1.0 results)", list.CNIVersion)
	}
	if !cniNameRe.MatchString(list.Name) {
		return "", fmt.Errorf("network name %q", list.Name)
	}
	if len(list.Plugins) != 1 {
		return "", fmt.Errorf("%d plugins, want cni-eni alone", len(list.Plugins))
	}
	var nc cniNetConf
	strict, err = sigsjson.UnmarshalStrict(top.Plugins[0], &nc, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return "", err
	}
	if len(strict) > 0 {
		return "", fmt.Errorf("plugin entry: %w", errors.Join(strict...))
	}
	if nc.Type != cniPluginType {
		return "", fmt.Errorf("plugin type %q, want %s", nc.Type, cniPluginType)
	}
	if nc.AgentSocket == "" {
		nc.AgentSocket = agentSocket
	}
	if !path.IsAbs(nc.AgentSocket) {
		return "", fmt.Errorf("agentSocket %q is not absolute", nc.AgentSocket)
	}
	if nc.Timeout != "" {
		if d, err := time.ParseDuration(nc.Timeout); err != nil || d <= 0 || d > 5*time.Minute {
			return "", fmt.Errorf("timeout %q: want a Go duration in (0, 5m]", nc.Timeout)
		}
	}
	if nc.LogFile != "" && !path.IsAbs(nc.LogFile) {
		return "", fmt.Errorf("logFile %q is not absolute", nc.LogFile)
	}
	if nc.LogLevel != "" && !slices.Contains([]string{"debug", "info", "warn", "error"}, nc.LogLevel) {
		return "", fmt.Errorf("logLevel %q", nc.LogLevel)
	}
	return nc.AgentSocket, nil
}

func TestParseCNIConflistRejects(t *testing.T) {
	const valid = `{"cniVersion": "1.0.0", "name": "eni", "plugins": [{"type": "cni-eni", "agentSocket": "/run/x.sock", "timeout": "10s"}]}`
	if sock, err := parseCNIConflist([]byte(valid)); err != nil || sock != "/run/x.sock" {
		t.Fatalf("valid conflist: %q, %v", sock, err)
	}
	for _, bad := range []string{
		strings.Replace(valid, `"1.0.0"`, `"1.1.0"`, 1),
		strings.Replace(valid, `"eni"`, `"-eni"`, 1),
		strings.Replace(valid, `"cni-eni"`, `"bridge"`, 1),
		strings.Replace(valid, `"agentSocket"`, `"agentsocket"`, 1),
		strings.Replace(valid, `"agentSocket"`, `"socket"`, 1),
		strings.Replace(valid, `"/run/x.sock"`, `"run/x.sock"`, 1),
		strings.Replace(valid, `"10s"`, `"10"`, 1),
		strings.Replace(valid, `"plugins"`, `"plugin"`, 1),
		strings.Replace(valid, `"timeout": "10s"`, `"timeout": "10s", "timeout": "5s"`, 1),
		strings.Replace(valid, `}]}`, `}, {"type": "portmap"}]}`, 1),
		strings.Replace(valid, `"name": "eni"`, `"name": "eni", "name": "x"`, 1),
		strings.Replace(valid, `"name": "eni"`, `"name": "eni", "mtu": 1500`, 1),
		`{"cniVersion": "1.0.0", "name": "eni", "type": "cni-eni"}`,
	} {
		if _, err := parseCNIConflist([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// shellVars collects the NAME=value lines of a script.
var shellAssign = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)=(\S+)$`)

// shellWords splits a script's line into words, expanding $VAR and ${VAR}
// from vars and dropping double quotes (enough for a plain install script).
func shellWords(line string, vars map[string]string) []string {
	var out []string
	for _, w := range strings.Fields(line) {
		w = strings.ReplaceAll(w, `"`, "")
		for k, v := range vars {
			w = strings.ReplaceAll(w, "${"+k+"}", v)
			w = strings.ReplaceAll(w, "$"+k, v)
		}
		out = append(out, w)
	}
	return out
}

// installStep is a file the installer puts on the host: copied to tmp,
// then renamed to target.
type installStep struct{ from, tmp, target string }

// installSteps reads `cp FROM TMP` and `mv [-f] TMP TARGET` pairs from a
// shell script.
func installSteps(script string) []installStep {
	vars := map[string]string{}
	copies := map[string]string{}
	var steps []installStep
	for _, line := range strings.Split(script, "\n") {
		line = strings.TrimSpace(line)
		if m := shellAssign.FindStringSubmatch(line); m != nil {
			vars[m[1]] = strings.Trim(m[2], `"`)
			continue
		}
		w := shellWords(line, vars)
		if len(w) == 0 {
			continue
		}
		args := slices.DeleteFunc(slices.Clone(w[1:]), func(a string) bool { return strings.HasPrefix(a, "-") })
		switch {
		case w[0] == "cp" && len(args) == 2:
			copies[args[1]] = args[0]
		case w[0] == "mv" && len(args) == 2:
			steps = append(steps, installStep{from: copies[args[0]], tmp: args[0], target: args[1]})
		}
	}
	return steps
}

func TestCNIEniInstall(t *testing.T) {
	objs := load(t)
	ds, agentC := agent(t, objs)
	s := &ds.Spec.Template.Spec
	_, hostSock := agentSocketPaths(t, s, agentC)

	// The installer: an init container of the agent's pod whose script
	// copies each file next to its target and renames it over.
	var inst *corev1.Container
	var steps []installStep
	for i := range s.InitContainers {
		c := &s.InitContainers[i]
		st := installSteps(strings.Join(commandLine(c), "\n"))
		if slices.ContainsFunc(st, func(st installStep) bool { return path.Base(st.target) == cniPluginType }) {
			inst, steps = c, st
		}
	}
	if inst == nil {
		t.Fatalf("DaemonSet %s: no init container installs %s (cp to a temporary name, then mv)", agentDaemonSet, cniPluginType)
	}
	who := fmt.Sprintf("DaemonSet %s: init container %s", agentDaemonSet, inst.Name)
	if repo, _ := imageRepo(inst.Image); inst.Image != agentC.Image || repo != agentImageRepo {
		t.Errorf("%s: image %s, want the agent's %s (plugin and agent speak one API version)", who, inst.Image, agentC.Image)
	}
	var conflistFrom string
	for _, want := range []struct{ hostPath, what string }{
		{path.Join(cniBinDir, cniPluginType), "the plugin"},
		{path.Join(cniConfDir, cniConflist), "the conflist"},
	} {
		i := slices.IndexFunc(steps, func(st installStep) bool {
			h, ok := hostPathOf(s, inst, st.target)
			return ok && h == want.hostPath
		})
		if i < 0 {
			t.Errorf("%s: no `mv TMP TARGET` puts %s at host path %s", who, want.what, want.hostPath)
			continue
		}
		st := steps[i]
		// Atomic, and noticed by containerd: a rename within the folder,
		// from a name libcni does not load.
		if path.Dir(st.tmp) != path.Dir(st.target) {
			t.Errorf("%s: %s is renamed from %s: the temporary file must be in the target's folder", who, want.what, st.tmp)
		}
		if ext := path.Ext(st.tmp); ext == ".conf" || ext == ".conflist" || ext == ".json" {
			t.Errorf("%s: temporary file %s has an extension the runtime loads", who, st.tmp)
		}
		if st.from == "" {
			t.Errorf("%s: nothing is copied to %s before the rename", who, st.tmp)
		}
		if want.what == "the conflist" {
			conflistFrom = st.from
		}
	}

	// The conflist comes from the ConfigMap...
	var conflist []byte
	if conflistFrom != "" {
		m, rel, ok := mountFor(inst, conflistFrom)
		var v *corev1.Volume
		if ok {
			v = volumeNamed(s, m.Name)
		}
		if v == nil || v.ConfigMap == nil || v.ConfigMap.Name != cniConfigMap {
			t.Errorf("%s: the conflist is copied from %s, not from ConfigMap %s", who, conflistFrom, cniConfigMap)
		} else {
			key := rel
			for _, it := range v.ConfigMap.Items {
				if path.Clean(it.Path) == rel {
					key = it.Key
				}
			}
			if key != cniConflist {
				t.Errorf("%s: the conflist is key %q of ConfigMap %s, want %s", who, key, cniConfigMap, cniConflist)
			}
		}
	}
	cm := lookup[corev1.ConfigMap](objs, agentNamespace, cniConfigMap)
	if cm == nil || !configMapHasKey(cm, cniConflist) {
		t.Fatalf("ConfigMap %s/%s with key %s is not in the manifests", agentNamespace, cniConfigMap, cniConflist)
	}
	conflist = []byte(cm.Data[cniConflist])

	// ...parses as the runtime and cni-eni parse it, and points at the
	// agent's socket as the host sees it.
	sock, err := parseCNIConflist(conflist)
	if err != nil {
		t.Fatalf("ConfigMap %s key %s: %v", cniConfigMap, cniConflist, err)
	}
	if sock != hostSock {
		t.Errorf("ConfigMap %s: agentSocket %s, but the agent listens on host path %s", cniConfigMap, sock, hostSock)
	}

	// The example conflist kept beside the manifests says the same.
	ex, err := os.ReadFile(cniExampleFile)
	if err != nil {
		t.Fatal(err)
	}
	if exSock, err := parseCNIConflist(ex); err != nil {
		t.Errorf("%s: %v", cniExampleFile, err)
	} else if exSock != hostSock {
		t.Errorf("%s: agentSocket %s, but the agent listens on host path %s", cniExampleFile, exSock, hostSock)
	}
}
