package k8s_test

import (
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// What `kubectl kustomize` (the cluster's kubectl) renders of each
// component is what the strict manifest test decodes: the library it runs
// (manifests/manifests_test.go's kustomize) renders the same objects.
func TestKustomizeMatchesStrictTest(t *testing.T) {
	kubectl := filepath.Join(k8s.env["K8S_BIN"], "kubectl")
	for _, c := range []string{"nodeagent", "csi-ceph", "csi-ceph/examples", "monitoring"} {
		dir := filepath.Join(repo, "manifests", c)
		out, err := exec.Command(kubectl, "kustomize", dir).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize %s: %v", c, err)
		}
		rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
		if err != nil {
			t.Fatal(err)
		}
		lib, err := rm.AsYaml()
		if err != nil {
			t.Fatal(err)
		}
		a, b := docs(t, out), docs(t, lib)
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%s: kubectl kustomize renders %d objects, the manifest test's kustomize %d, and they differ", c, len(a), len(b))
		} else {
			t.Logf("%s: %d objects, the same", c, len(a))
		}
	}
}

// docs decodes a YAML stream into its documents, by apiVersion, kind,
// namespace and name.
func docs(t *testing.T, b []byte) map[string]any {
	t.Helper()
	out := map[string]any{}
	for _, d := range splitYAML(b) {
		var m map[string]any
		if err := yaml.Unmarshal(d, &m); err != nil {
			t.Fatal(err)
		}
		if m == nil {
			continue
		}
		md, _ := m["metadata"].(map[string]any)
		key := m["apiVersion"].(string) + "/" + m["kind"].(string) + "/" + str(md["namespace"]) + "/" + str(md["name"])
		out[key] = m
	}
	return out
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func splitYAML(b []byte) [][]byte {
	var out [][]byte
	start := 0
	lines := 0
	for i := 0; i <= len(b); i++ {
		if i == len(b) || b[i] == '\n' {
			line := b[start:i]
			if string(line) == "---" {
				out = append(out, b[lines:start])
				lines = i + 1
			}
			start = i + 1
		}
	}
	out = append(out, b[lines:])
	return out
}
