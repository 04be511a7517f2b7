package main

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/nodeinfra/nodeinfra/e2e/images/oci"
)

func writeFile(t *testing.T, p string, data string, mode os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseFile(t *testing.T) {
	dir := t.TempDir()
	exe := writeFile(t, filepath.Join(dir, "exe"), "#!/bin/sh\n", 0o750)
	plain := writeFile(t, filepath.Join(dir, "plain"), "x", 0o600)
	for _, tc := range []struct {
		arg     string
		want    oci.File
		wantErr string
	}{
		{arg: exe + "=/usr/local/bin/exe", want: oci.File{Path: "/usr/local/bin/exe", Source: exe, Mode: 0o755}},
		{arg: plain + "=/usr/local/bin/guest/vmlinux", want: oci.File{Path: "/usr/local/bin/guest/vmlinux", Source: plain, Mode: 0o644}},
		{arg: exe, wantErr: "want SRC=DST"},
		{arg: "=/x", wantErr: "want SRC=DST"},
		{arg: exe + "=usr/bin/exe", wantErr: "not a clean absolute"},
		{arg: exe + "=/usr/../bin/exe", wantErr: "not a clean absolute"},
		{arg: exe + "=/", wantErr: "not a clean absolute"},
		{arg: filepath.Join(dir, "missing") + "=/x", wantErr: "no such file"},
		{arg: dir + "=/x", wantErr: "not a regular file"},
	} {
		got, err := ParseFile(tc.arg)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseFile(%q) = %v, want error with %q", tc.arg, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ParseFile(%q) = %+v, %v; want %+v", tc.arg, got, err, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Spec{Out: "x.tar", Tags: []string{"example.org/x:v1"}, Rootfs: "r.tar", Config: oci.Config{Entrypoint: []string{"/x"}}}
	for _, tc := range []struct {
		name    string
		edit    func(*Spec)
		wantErr string
	}{
		{"valid", func(*Spec) {}, ""},
		{"files only", func(s *Spec) { s.Rootfs, s.Files = "", []oci.File{{Path: "/x"}} }, ""},
		{"no output", func(s *Spec) { s.Out = "" }, "-o"},
		{"no tag", func(s *Spec) { s.Tags = nil }, "-tag"},
		{"no content", func(s *Spec) { s.Rootfs = "" }, "-rootfs or -file"},
		{"nothing to run", func(s *Spec) { s.Config.Entrypoint = nil }, "-entrypoint or -cmd"},
		{"cmd only", func(s *Spec) { s.Config.Entrypoint, s.Config.Cmd = nil, []string{"/x"} }, ""},
		{"file twice", func(s *Spec) { s.Files = []oci.File{{Path: "/x"}, {Path: "/x"}} }, "given twice"},
		{"bad env", func(s *Spec) { s.Config.Env = []string{"PATH"} }, "NAME=VALUE"},
	} {
		s := ok
		tc.edit(&s)
		err := s.Validate()
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s: Validate() = %v, want error %q", tc.name, err, tc.wantErr)
		}
	}
}

func TestParseArgs(t *testing.T) {
	dir := t.TempDir()
	exe := writeFile(t, filepath.Join(dir, "agent"), "bin", 0o755)
	s, err := parseArgs([]string{"-o", "out.tar", "-tag", "example.org/a:v1", "-tag", "example.org/a:latest",
		"-rootfs", "r.tar.gz", "-file", exe + "=/usr/local/bin/agent",
		"-entrypoint", "/usr/local/bin/agent", "-cmd", "version", "-cmd", "--short",
		"-env", "A=1", "-label", "org.opencontainers.image.version=v1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{Out: "out.tar", Tags: []string{"example.org/a:v1", "example.org/a:latest"}, Rootfs: "r.tar.gz",
		Files: []oci.File{{Path: "/usr/local/bin/agent", Source: exe, Mode: 0o755}},
		Config: oci.Config{Entrypoint: []string{"/usr/local/bin/agent"}, Cmd: []string{"version", "--short"},
			Env: []string{"A=1"}, Labels: map[string]string{"org.opencontainers.image.version": "v1"}}}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("parseArgs:\n got %+v\nwant %+v", s, want)
	}
	for _, bad := range [][]string{{"-label", "novalue"}, {"-file", "x"}, {"extra"}} {
		if _, err := parseArgs(bad, io.Discard); err == nil {
			t.Errorf("parseArgs(%q): no error", bad)
		}
	}
}

func TestWithDefaultPath(t *testing.T) {
	if got := withDefaultPath([]string{"A=1"}); !reflect.DeepEqual(got, []string{DefaultPath, "A=1"}) {
		t.Errorf("no PATH: %q", got)
	}
	if got := withDefaultPath([]string{"PATH=/bin"}); !reflect.DeepEqual(got, []string{"PATH=/bin"}) {
		t.Errorf("own PATH: %q", got)
	}
}

// A gzip root file system and a file layer give a two-layer image whose
// flattened tree holds both, with the file's mode, under both tags.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.tar.gz")
	f, err := os.Create(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	for _, h := range []*tar.Header{
		{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755},
		{Typeflag: tar.TypeReg, Name: "etc/os-release", Mode: 0o644, Size: 7},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("ID=test"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	f.Close()
	exe := writeFile(t, filepath.Join(dir, "agent"), "#!/bin/sh\n", 0o700)
	out := filepath.Join(dir, "agent.tar")
	s := Spec{Out: out, Tags: []string{"example.org/agent:v1", "example.org/agent:v1.0"}, Rootfs: rootfs,
		Files:  []oci.File{{Path: "/usr/local/bin/agent", Source: exe, Mode: 0o755}},
		Config: oci.Config{Entrypoint: []string{"/usr/local/bin/agent"}, Cmd: []string{"version"}}}
	if err := Write(s); err != nil {
		t.Fatal(err)
	}
	for _, ref := range s.Tags {
		tag, _ := name.NewTag(ref)
		img, err := tarball.ImageFromPath(out, &tag)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		layers, _ := img.Layers()
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if len(layers) != 2 || !reflect.DeepEqual(cf.Config.Entrypoint, s.Config.Entrypoint) ||
			!reflect.DeepEqual(cf.Config.Cmd, s.Config.Cmd) || !reflect.DeepEqual(cf.Config.Env, []string{DefaultPath}) {
			t.Errorf("%s: %d layers, config %+v", ref, len(layers), cf.Config)
		}
		modes := map[string]int64{}
		tr := tar.NewReader(mutate.Extract(img))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			modes[h.Name] = h.Mode
		}
		if modes["etc/os-release"] != 0o644 || modes["usr/local/bin/agent"] != 0o755 {
			t.Errorf("%s: flattened tree %v", ref, modes)
		}
	}
}
