package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestModulePath(t *testing.T) {
	for _, tc := range []struct {
		repo    string
		suffix  bool
		version string
		want    string
		wantErr string
	}{
		{"github.com/kubernetes-csi/external-provisioner", true, "v5.2.0", "github.com/kubernetes-csi/external-provisioner/v5", ""},
		{"github.com/kubernetes-csi/external-resizer", true, "v1.13.2", "github.com/kubernetes-csi/external-resizer", ""},
		{"github.com/kubernetes-csi/external-snapshotter", true, "v8.2.1", "github.com/kubernetes-csi/external-snapshotter/v8", ""},
		{"github.com/kubernetes-csi/livenessprobe", false, "v1.1.0", "github.com/kubernetes-csi/livenessprobe", ""},
		{"github.com/kubernetes-csi/livenessprobe", false, "v2.15.0", "", "without /v2"},
		{"github.com/kubernetes-csi/external-resizer", true, "latest", "", "not vMAJOR"},
		{"github.com/kubernetes-csi/external-resizer", true, "v1.13", "", "not vMAJOR"},
	} {
		got, err := ModulePath(tc.repo, tc.suffix, tc.version)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ModulePath(%s, %s) = %q, %v; want error %q", tc.repo, tc.version, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ModulePath(%s, %s) = %q, %v; want %q", tc.repo, tc.version, got, err, tc.want)
		}
	}
}

func TestParseImages(t *testing.T) {
	yaml := `
containers:
  - name: a
    image: registry.k8s.io/sig-storage/csi-provisioner:v5.2.0
  - image: "registry.k8s.io/sig-storage/livenessprobe:v2.15.0"
    name: b
  - name: c
    image: ghcr.io/nodeinfra/csi-ceph:v0.1.0
# image: registry.k8s.io/sig-storage/csi-attacher:v4.8.1
`
	want := []string{"registry.k8s.io/sig-storage/csi-provisioner:v5.2.0", "registry.k8s.io/sig-storage/livenessprobe:v2.15.0"}
	if got := ParseImages([]byte(yaml)); !reflect.DeepEqual(got, want) {
		t.Errorf("ParseImages = %q, want %q", got, want)
	}
}

func TestNewSidecar(t *testing.T) {
	s, err := NewSidecar("registry.k8s.io/sig-storage/csi-snapshotter:v8.2.1")
	want := Sidecar{Image: "registry.k8s.io/sig-storage/csi-snapshotter:v8.2.1", Name: "csi-snapshotter", Version: "v8.2.1",
		Cmd: "csi-snapshotter", Module: "github.com/kubernetes-csi/external-snapshotter/v8"}
	if err != nil || !reflect.DeepEqual(s, want) || s.Archive() != "csi-snapshotter-v8.2.1.tar" {
		t.Errorf("NewSidecar = %+v, %v; want %+v", s, err, want)
	}
	// Known but unfetchable: an entry whose Err says why, not a failure.
	if s, err := NewSidecar("registry.k8s.io/sig-storage/livenessprobe:v2.15.0"); err != nil || s.Err == nil {
		t.Errorf("livenessprobe v2: %+v, %v", s, err)
	}
	for _, bad := range []string{"registry.k8s.io/sig-storage/csi-frobnicator:v1.0.0", "registry.k8s.io/sig-storage/csi-resizer",
		"docker.io/csi-resizer:v1.0.0", "registry.k8s.io/sig-storage/csi-resizer:latest"} {
		if _, err := NewSidecar(bad); err == nil {
			t.Errorf("NewSidecar(%q): no error", bad)
		}
	}
}

// Every sidecar the real manifests name has a recipe, and the snapshot
// controller comes with the snapshotter.
func TestFromManifests(t *testing.T) {
	got, err := FromManifests("../../../manifests/csi-ceph")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, s := range got {
		names[s.Name] = s.Version
	}
	for _, n := range []string{"csi-provisioner", "csi-snapshotter", "csi-resizer", "csi-node-driver-registrar", "livenessprobe"} {
		if names[n] == "" {
			t.Errorf("manifests name no %s: %v", n, names)
		}
	}
	if names["snapshot-controller"] != names["csi-snapshotter"] {
		t.Errorf("snapshot-controller %q, csi-snapshotter %q", names["snapshot-controller"], names["csi-snapshotter"])
	}
}

func TestLocalReplaces(t *testing.T) {
	modJSON := `{"Module":{"Path":"github.com/kubernetes-csi/external-snapshotter/v8"},
"Replace":[
 {"Old":{"Path":"github.com/kubernetes-csi/external-snapshotter/client/v8"},"New":{"Path":"./client"}},
 {"Old":{"Path":"k8s.io/api"},"New":{"Path":"k8s.io/api","Version":"v0.32.0"}},
 {"Old":{"Path":"example.org/x","Version":"v1.0.0"},"New":{"Path":"../x"}}]}`
	got, err := LocalReplaces([]byte(modJSON))
	want := []string{"-dropreplace=github.com/kubernetes-csi/external-snapshotter/client/v8", "-dropreplace=example.org/x@v1.0.0"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("LocalReplaces = %q, %v; want %q", got, err, want)
	}
	if _, err := LocalReplaces([]byte("{")); err == nil {
		t.Error("bad JSON: no error")
	}
}
