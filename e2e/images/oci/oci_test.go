package oci

import (
	"archive/tar"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// An archive of two file layers holds the manifest, the config with the
// entrypoint and the tag, and the files, and the same input gives the
// same layer.
func TestWriteArchive(t *testing.T) {
	dir := t.TempDir()
	l1, err := LayerFromFiles([]File{{Path: "/usr/bin/hello", Data: []byte("#!/bin/sh\necho hi\n"), Mode: 0o755}})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := LayerFromFiles([]File{{Path: "/usr/bin/hello", Data: []byte("#!/bin/sh\necho hi\n"), Mode: 0o755}})
	d1, _ := l1.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("the same files gave layers %s and %s", d1, d2)
	}
	l2, err := LayerFromFiles([]File{{Path: "/etc/x/y.conf", Data: []byte("a=1\n")}})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "hello.tar")
	if err := WriteArchive(out, "example.org/hello:v1", []v1.Layer{l1, l2}, Config{Entrypoint: []string{"/usr/bin/hello"}}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name] = b
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("manifest.json: %v %s", err, files["manifest.json"])
	}
	if len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != "example.org/hello:v1" || len(manifest[0].Layers) != 2 {
		t.Errorf("manifest %+v", manifest[0])
	}
	if !strings.Contains(string(files[manifest[0].Config]), `"Entrypoint":["/usr/bin/hello"]`) {
		t.Errorf("config %s", files[manifest[0].Config])
	}
}

// An image known by several names is written once, with every name in
// the archive's manifest in the order given (the first is the one readers
// take); no name is an error.
func TestWriteArchiveTags(t *testing.T) {
	dir := t.TempDir()
	l, err := LayerFromFiles([]File{{Path: "/pause", Data: []byte("x"), Mode: 0o755}})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "pause.tar")
	refs := []string{"registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.6", "example.org/pause:a", "example.org/pause:b"}
	// MultiRefWrite's order is a map's: try a few times.
	for try := 0; try < 5; try++ {
		if err := WriteArchiveTags(out, refs, []v1.Layer{l}, Config{Entrypoint: []string{"/pause"}}); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(f)
		var manifest []struct{ RepoTags []string }
		layers := 0
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case h.Name == "manifest.json":
				b, _ := io.ReadAll(tr)
				if err := json.Unmarshal(b, &manifest); err != nil {
					t.Fatal(err)
				}
			case strings.HasSuffix(h.Name, ".tar.gz"):
				layers++
			}
		}
		f.Close()
		if len(manifest) != 1 || layers != 1 {
			t.Fatalf("manifest %+v, %d layer files", manifest, layers)
		}
		if strings.Join(manifest[0].RepoTags, " ") != strings.Join(refs, " ") {
			t.Fatalf("RepoTags %q, want %q", manifest[0].RepoTags, refs)
		}
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("archive mode: %v, %v", st.Mode(), err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".image-*")); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
	if err := WriteArchiveTags(filepath.Join(dir, "none.tar"), nil, []v1.Layer{l}, Config{}); err == nil {
		t.Error("no name: no error")
	}
}
