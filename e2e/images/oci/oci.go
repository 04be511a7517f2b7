// Package oci writes container image archives without a container daemon
// or a registry: layers from a root file system tarball or from a few
// files, an image config (entrypoint, environment), and a tag, written as
// a docker-archive tarball that `ctr images import` and `podman load`
// read (go-containerregistry).
package oci

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Config is the image's run configuration.
type Config struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string
	Labels     map[string]string
}

// File is one file of a layer built from files.
type File struct {
	// Path is where it goes in the image (absolute).
	Path string
	// Source is the host file to copy; Data is used when it is empty.
	Source string
	Data   []byte
	Mode   int64
}

// LayerFromTar is a layer holding the contents of a tar file (e.g. a root
// file system from mmdebstrap).
func LayerFromTar(p string) (v1.Layer, error) {
	l, err := tarball.LayerFromFile(p)
	if err != nil {
		return nil, fmt.Errorf("layer from %s: %w", p, err)
	}
	return l, nil
}

// LayerFromFiles is a layer holding files, with their parent directories;
// every entry has the zero time, so that the same files give the same
// layer.
func LayerFromFiles(files []File) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	var epoch time.Time
	for _, f := range files {
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("image path %q is not absolute", f.Path)
		}
		var parents []string
		for d := path.Dir(f.Path); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			dirs[parents[i]] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: parents[i][1:] + "/", Mode: 0o755, ModTime: epoch}); err != nil {
				return nil, err
			}
		}
		data := f.Data
		if f.Source != "" {
			b, err := os.ReadFile(f.Source)
			if err != nil {
				return nil, err
			}
			data = b
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.Path[1:], Mode: mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
}

// WriteArchive writes the image of layers (bottom first) and cfg, tagged
// ref (e.g. ghcr.io/nodeinfra/nodeagent:v0.1.0), to the archive at out.
func WriteArchive(out, ref string, layers []v1.Layer, cfg Config) error {
	return WriteArchiveTags(out, []string{ref}, layers, cfg)
}

// WriteArchiveTags is WriteArchive for an image known by several names
// (e.g. the pause image under the tag each runtime version asks for): one
// copy of the layers, every name in the archive's manifest, in the order
// of refs (readers take the first as the image's name).
func WriteArchiveTags(out string, refs []string, layers []v1.Layer, cfg Config) error {
	if len(refs) == 0 {
		return fmt.Errorf("write %s: no image name", out)
	}
	var tags []name.Tag
	for _, ref := range refs {
		tag, err := name.NewTag(ref)
		if err != nil {
			return fmt.Errorf("image name %q: %w", ref, err)
		}
		tags = append(tags, tag)
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.Env = cfg.Entrypoint, cfg.Cmd, cfg.Env
	cf.Config.WorkingDir, cf.Config.Labels = cfg.WorkingDir, cfg.Labels
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(path.Dir(out), ".image-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	named := map[name.Reference]v1.Image{}
	for _, tag := range tags {
		named[tag] = img
	}
	if err := tarball.MultiRefWrite(named, f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	written := f.Name()
	if len(tags) > 1 {
		if written, err = orderTags(f.Name(), tags); err != nil {
			return fmt.Errorf("write %s: %w", out, err)
		}
		defer os.Remove(written)
	}
	// CreateTemp's 0600 would make the archive root's alone.
	if err := os.Chmod(written, 0o644); err != nil {
		return err
	}
	return os.Rename(written, out)
}

// orderTags copies the archive at src to a new file beside it with its
// manifest's RepoTags in the order of tags (MultiRefWrite lists them in
// map order), and returns the copy's name.
func orderTags(src string, tags []name.Tag) (string, error) {
	rank := map[string]int{}
	for i, t := range tags {
		rank[t.String()] = i
	}
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	out, err := os.CreateTemp(path.Dir(src), ".image-*")
	if err != nil {
		return "", err
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(out.Name())
		}
	}()
	tr, tw := tar.NewReader(in), tar.NewWriter(out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
		if h.Name != "manifest.json" {
			if err := tw.WriteHeader(h); err != nil {
				return "", err
			}
			if _, err := io.Copy(tw, tr); err != nil {
				return "", err
			}
			continue
		}
		var m tarball.Manifest
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return "", fmt.Errorf("read manifest.json: %w", err)
		}
		for _, d := range m {
			sort.SliceStable(d.RepoTags, func(i, j int) bool { return rank[d.RepoTags[i]] < rank[d.RepoTags[j]] })
		}
		b, err := json.Marshal(m)
		if err != nil {
			return "", err
		}
		h.Size = int64(len(b))
		if err := tw.WriteHeader(h); err != nil {
			return "", err
		}
		if _, err := tw.Write(b); err != nil {
			return "", err
		}
	}
	if err := tw.Close(); err != nil {
		return "", err
	}
	if err := out.Close(); err != nil {
		return "", err
	}
	ok = true
	return out.Name(), nil
}
