package manifests

// The manifests are only data, so these tests are what keeps them honest:
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
//
// This file loads and strictly decodes the manifests; each other file
// checks one subject: workloads_test.go (every workload, and the helpers
// that read containers), rbac_test.go, csiclasses_test.go (CSIDriver,
// classes, csi-ceph's cluster config), csiceph_test.go (csi-ceph's
// workloads), nodeagent_test.go (the agent's DaemonSet) and cni_test.go
// (the cni-eni conflist and its installer).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
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

// loadDir decodes the manifests under root as an admin applies them:
// each folder with a kustomization.yaml is a component, rendered by
// kustomize (the library `kubectl apply -k` runs) and every document of
// the result decoded strictly; every YAML file of such a folder must be
// one of its resources (else it would never be applied); YAML files in
// no component are decoded as they are. It returns all the objects that
// decoded, the number of sources (components and loose files) and one
// error per failure.
func loadDir(root string) ([]*object, int, []error) {
	files, err := manifestFiles(root)
	if err != nil {
		return nil, 0, []error{err}
	}
	components := map[string]bool{}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			components[filepath.Dir(f)] = true
		}
	}
	// componentOf is the innermost component folder holding f, if any.
	componentOf := func(f string) string {
		for d := filepath.Dir(f); ; d = filepath.Dir(d) {
			if components[d] {
				return d
			}
			if d == root || d == "." || d == "/" {
				return ""
			}
		}
	}
	var objs []*object
	var errs []error
	decodeAll := func(name string, b []byte) int {
		docs, err := splitDocuments(bytes.NewReader(b))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			return 0
		}
		n := 0
		for i, d := range docs {
			o, err := decodeDocument(d)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s, YAML document %d: %w", name, i+1, err))
				continue
			}
			if o == nil {
				continue
			}
			n++
			o.file, o.doc = name, n
			objs = append(objs, o)
		}
		if n == 0 {
			errs = append(errs, fmt.Errorf("%s: no Kubernetes object", name))
		}
		return n
	}
	var dirs []string
	for d := range components {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		rel, _ := filepath.Rel(root, d)
		name := filepath.ToSlash(rel) + " (kustomize)"
		out, used, err := kustomize(d)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			continue
		}
		decodeAll(name, out)
		for _, f := range files {
			if componentOf(f) == d && filepath.Base(f) != "kustomization.yaml" && !used[filepath.Base(f)] {
				errs = append(errs, fmt.Errorf("%s is in component %s but not among its resources: it would never be applied", f, rel))
			}
		}
	}
	n := len(dirs)
	for _, f := range files {
		if componentOf(f) != "" {
			continue
		}
		n++
		rel, _ := filepath.Rel(root, f)
		b, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		decodeAll(filepath.ToSlash(rel), b)
	}
	return objs, n, errs
}

// kustomize renders the component in dir as `kubectl kustomize dir` does,
// and names the files of dir its kustomization reads.
func kustomize(dir string) ([]byte, map[string]bool, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, nil, err
	}
	out, err := rm.AsYaml()
	if err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, nil, err
	}
	var kz kusttypes.Kustomization
	if err := yaml.UnmarshalStrict(b, &kz); err != nil {
		return nil, nil, fmt.Errorf("kustomization.yaml: %w", err)
	}
	used := map[string]bool{}
	for _, r := range kz.Resources {
		used[r] = true
	}
	for _, g := range kz.ConfigMapGenerator {
		for _, f := range g.FileSources {
			_, src, ok := strings.Cut(f, "=")
			if !ok {
				src = f
			}
			used[src] = true
		}
	}
	return out, used, nil
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

// lookup finds the object of type T with that namespace and name, or
// the one a kustomize generator made of that name (name-<hash>).
func lookup[T any](objs []*object, ns, name string) *T {
	var generated *T
	for _, o := range objs {
		if v, ok := o.obj.(*T); ok && o.ns() == ns {
			if o.name() == name {
				return v
			}
			if generatedFrom(o.name(), name) {
				generated = v
			}
		}
	}
	return generated
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
