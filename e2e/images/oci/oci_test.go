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
