// Command sidecars writes the images of the CSI sidecars that csi-ceph's
// manifests name (registry.k8s.io/sig-storage/NAME:VERSION), each built
// from its Go module at exactly that version, plus the snapshot-controller
// at the snapshotter's version, so that a Kubernetes cluster without a
// registry runs the manifests unchanged after `ctr images import`.
//
// Each image is one static binary (CGO_ENABLED=0) at /NAME, its
// entrypoint, as upstream's images have it. `go install MODULE@VERSION`
// cannot build them: their go.mod files carry replace directives, which
// it refuses. So the module is downloaded (go mod download, checked
// against the checksum database), copied, its local replaces (the
// snapshotter's ./client) dropped for the released module they stand for,
// and built there with -mod=mod, its go.sum pinning every dependency.
// Binaries are cached as CACHE/NAME-VERSION.
//
//	sidecars -manifests manifests/csi-ceph -cache /var/cache/nodeinfra/images/sidecars -o bin/images
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nodeinfra/nodeinfra/e2e/images/oci"
)

// Registry is where the manifests' sidecar images live upstream.
const Registry = "registry.k8s.io/sig-storage/"

// recipe says where an image's binary comes from.
type recipe struct {
	// repo is the module path without a major version suffix.
	repo string
	// suffix: the module follows semantic import versioning (/vN in its
	// path for N >= 2). node-driver-registrar and livenessprobe do not:
	// their go.mod names the bare path while their tags are v2.x, so the
	// go command cannot fetch those tags under any path.
	suffix bool
	// cmd is the main package, ./cmd/<cmd>, and the binary's name.
	cmd string
	// standin is an in-repo main package with the same flags and the part
	// of the job the test cluster needs, built (and labelled so) when the
	// module cannot be fetched here.
	standin string
}

var recipes = map[string]recipe{
	"csi-provisioner":           {"github.com/kubernetes-csi/external-provisioner", true, "csi-provisioner", ""},
	"csi-attacher":              {"github.com/kubernetes-csi/external-attacher", true, "csi-attacher", ""},
	"csi-snapshotter":           {"github.com/kubernetes-csi/external-snapshotter", true, "csi-snapshotter", ""},
	"snapshot-controller":       {"github.com/kubernetes-csi/external-snapshotter", true, "snapshot-controller", ""},
	"csi-resizer":               {"github.com/kubernetes-csi/external-resizer", true, "csi-resizer", ""},
	"csi-node-driver-registrar": {"github.com/kubernetes-csi/node-driver-registrar", false, "csi-node-driver-registrar", "./e2e/images/standins/registrar"},
	"livenessprobe":             {"github.com/kubernetes-csi/livenessprobe", false, "livenessprobe", "./e2e/images/standins/livenessprobe"},
}

// Sidecar is one image to build.
type Sidecar struct {
	Image   string // registry.k8s.io/sig-storage/csi-provisioner:v5.2.0
	Name    string // csi-provisioner
	Version string // v5.2.0
	Cmd     string // csi-provisioner: ./cmd/csi-provisioner, /csi-provisioner
	// Module is the module path at Version; "" when the go command cannot
	// fetch that version (Err says why).
	Module string
	Err    error
}

// Archive is the image's file name under the output folder.
func (s Sidecar) Archive() string { return s.Name + "-" + s.Version + ".tar" }

var versionRE = regexp.MustCompile(`^v(\d+)\.\d+\.\d+$`)

// ModulePath is repo's module path at version (vX.Y.Z).
func ModulePath(repo string, suffix bool, version string) (string, error) {
	m := versionRE.FindStringSubmatch(version)
	if m == nil {
		return "", fmt.Errorf("version %q is not vMAJOR.MINOR.PATCH", version)
	}
	major, _ := strconv.Atoi(m[1])
	switch {
	case major < 2:
		return repo, nil
	case suffix:
		return repo + "/v" + m[1], nil
	default:
		return "", fmt.Errorf("%s@%s: its go.mod names module %s, without /v%d, so the go command cannot fetch its v%d tags", repo, version, repo, major, major)
	}
}

var imageRE = regexp.MustCompile(`(?m)^\s*(?:-\s+)?image:\s*["']?(` + regexp.QuoteMeta(Registry) + `[^"'\s]+)`)

// ParseImages returns the sig-storage images a YAML text names.
func ParseImages(yaml []byte) []string {
	var out []string
	for _, m := range imageRE.FindAllSubmatch(yaml, -1) {
		out = append(out, string(m[1]))
	}
	return out
}

// NewSidecar resolves an image name to what builds it.
func NewSidecar(image string) (Sidecar, error) {
	rest, ok := strings.CutPrefix(image, Registry)
	name, version, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 {
		return Sidecar{}, fmt.Errorf("image %q: want %sNAME:VERSION", image, Registry)
	}
	r, ok := recipes[name]
	if !ok {
		return Sidecar{}, fmt.Errorf("image %q: no recipe for %s (add it to recipes)", image, name)
	}
	s := Sidecar{Image: image, Name: name, Version: version, Cmd: r.cmd}
	s.Module, s.Err = ModulePath(r.repo, r.suffix, version)
	if s.Err != nil && versionRE.FindStringSubmatch(version) == nil {
		return Sidecar{}, fmt.Errorf("image %q: %w", image, s.Err)
	}
	return s, nil
}

// FromManifests returns the sidecars the YAML files in dir name, sorted,
// plus the snapshot-controller at the csi-snapshotter's version.
func FromManifests(dir string) ([]Sidecar, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	images := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, img := range ParseImages(b) {
			images[img] = true
		}
	}
	if len(images) == 0 {
		return nil, fmt.Errorf("no %s image in %s/*.yaml", Registry, dir)
	}
	for img := range images {
		if v, ok := strings.CutPrefix(img, Registry+"csi-snapshotter:"); ok {
			images[Registry+"snapshot-controller:"+v] = true
		}
	}
	var out []Sidecar
	for img := range images {
		s, err := NewSidecar(img)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Image < out[j].Image })
	return out, nil
}

// LocalReplaces returns the -dropreplace arguments for the replace
// directives of a `go mod edit -json` output that point at directories:
// a module zip holds no nested module, so such a target is missing and
// the requirement must come from the module proxy instead.
func LocalReplaces(modJSON []byte) ([]string, error) {
	var mod struct {
		Replace []struct {
			Old, New struct{ Path, Version string }
		}
	}
	if err := json.Unmarshal(modJSON, &mod); err != nil {
		return nil, fmt.Errorf("parse go.mod json: %w", err)
	}
	var drop []string
	for _, r := range mod.Replace {
		if r.New.Version != "" || !(strings.HasPrefix(r.New.Path, "./") || strings.HasPrefix(r.New.Path, "../") || filepath.IsAbs(r.New.Path)) {
			continue
		}
		old := r.Old.Path
		if r.Old.Version != "" {
			old += "@" + r.Old.Version
		}
		drop = append(drop, "-dropreplace="+old)
	}
	return drop, nil
}

// goEnv is the environment of every go command run for a sidecar: its own
// module, no workspace, no cgo, whatever GOFLAGS the caller had (ours
// carry -tags=pacific).
func goEnv() []string {
	env := []string{"GOFLAGS=-mod=mod", "GOWORK=off", "CGO_ENABLED=0"}
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "GOFLAGS=") && !strings.HasPrefix(e, "GOWORK=") && !strings.HasPrefix(e, "CGO_ENABLED=") {
			env = append(env, e)
		}
	}
	return env
}

func goCmd(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir, cmd.Env = dir, goEnv()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Build returns the sidecar's binary, from cache or built now.
func Build(ctx context.Context, s Sidecar, cache string) (string, error) {
	if s.Err != nil {
		return "", s.Err
	}
	bin := filepath.Join(cache, s.Cmd+"-"+s.Version)
	if st, err := os.Stat(bin); err == nil && st.Mode().IsRegular() {
		return bin, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cache, ".build-"+s.Cmd+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	ref := s.Module + "@" + s.Version
	fmt.Fprintf(os.Stderr, "sidecars: building %s from %s/cmd/%s (minutes; cached as %s)\n", s.Image, ref, s.Cmd, bin)
	out, err := goCmd(ctx, tmp, "mod", "download", "-json", ref)
	var dl struct{ Dir, Error string }
	if jerr := json.Unmarshal(out, &dl); jerr == nil && dl.Error != "" {
		return "", fmt.Errorf("download %s: %s", ref, dl.Error)
	}
	if err != nil {
		return "", fmt.Errorf("download %s: %w", ref, err)
	}
	src := filepath.Join(tmp, "src")
	if err := copyModule(dl.Dir, src); err != nil {
		return "", fmt.Errorf("copy %s: %w", ref, err)
	}
	modJSON, err := goCmd(ctx, src, "mod", "edit", "-json")
	if err != nil {
		return "", err
	}
	drop, err := LocalReplaces(modJSON)
	if err != nil {
		return "", err
	}
	if len(drop) > 0 {
		if _, err := goCmd(ctx, src, append([]string{"mod", "edit"}, drop...)...); err != nil {
			return "", err
		}
	}
	// Upstream stamps the same variable (main.version) in its images.
	built := filepath.Join(tmp, s.Cmd)
	if _, err := goCmd(ctx, src, "build", "-trimpath", "-ldflags", "-s -w -X main.version="+s.Version,
		"-o", built, "./cmd/"+s.Cmd); err != nil {
		return "", fmt.Errorf("build %s: %w", ref, err)
	}
	if err := os.Rename(built, bin); err != nil {
		return "", err
	}
	return bin, nil
}

// copyModule copies a module's files (read-only in the module cache) to a
// writable tree, without vendor/ (a module zip keeps only its
// modules.txt, which would put the build in vendor mode).
func copyModule(from, to string) error {
	return filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			if rel == "vendor" {
				return filepath.SkipDir
			}
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	})
}

// Pack writes the sidecar's image: its binary at /<cmd>, the entrypoint.
// BuildStandin builds the in-repo stand-in of s (static).
func BuildStandin(ctx context.Context, s Sidecar, cache string) (string, error) {
	bin := filepath.Join(cache, s.Cmd+"-standin")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, recipes[s.Name].standin)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v: %s", recipes[s.Name].standin, err, out)
	}
	return bin, nil
}

// markStandin writes the stand-in's image again with a label that says
// what it is.
func markStandin(s Sidecar, bin, outDir string) error {
	l, err := oci.LayerFromFiles([]oci.File{{Path: "/" + s.Cmd, Source: bin, Mode: 0o755}})
	if err != nil {
		return err
	}
	return oci.WriteArchive(filepath.Join(outDir, s.Archive()), s.Image, []v1.Layer{l}, oci.Config{
		Entrypoint: []string{"/" + s.Cmd},
		Labels:     map[string]string{"org.nodeinfra.standin": "https://github.com/nodeinfra/nodeinfra/tree/main/" + strings.TrimPrefix(recipes[s.Name].standin, "./")},
	})
}

func Pack(s Sidecar, bin, outDir string) error {
	l, err := oci.LayerFromFiles([]oci.File{{Path: "/" + s.Cmd, Source: bin, Mode: 0o755}})
	if err != nil {
		return err
	}
	return oci.WriteArchive(filepath.Join(outDir, s.Archive()), s.Image, []v1.Layer{l}, oci.Config{
		Entrypoint: []string{"/" + s.Cmd},
		Labels:     map[string]string{"org.opencontainers.image.version": s.Version, "org.opencontainers.image.source": "https://" + recipes[s.Name].repo},
	})
}

func main() {
	manifests := flag.String("manifests", "manifests/csi-ceph", "folder of the manifests that name the sidecar images")
	cache := flag.String("cache", "/var/cache/nodeinfra/images/sidecars", "cache of the built binaries")
	outDir := flag.String("o", "bin/images", "folder of the image archives")
	list := flag.Bool("list", false, "print the images, their modules and archives, build nothing")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sidecars, err := FromManifests(*manifests)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sidecars:", err)
		os.Exit(1)
	}
	if *list {
		for _, s := range sidecars {
			mod := s.Module + "/cmd/" + s.Cmd + "@" + s.Version
			if s.Err != nil {
				mod = "(" + s.Err.Error() + ")"
			}
			fmt.Printf("%s\t%s\t%s\n", s.Image, mod, s.Archive())
		}
		return
	}
	if err := os.MkdirAll(*outDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "sidecars:", err)
		os.Exit(1)
	}
	var failed []error
	for _, s := range sidecars {
		bin, err := Build(ctx, s, *cache)
		standin := false
		if err != nil && recipes[s.Name].standin != "" {
			fmt.Fprintf(os.Stderr, "sidecars: %s cannot be built here (%v); packing the stand-in %s under its name\n", s.Image, err, recipes[s.Name].standin)
			bin, err = BuildStandin(ctx, s, *cache)
			standin = err == nil
		}
		if err == nil {
			err = Pack(s, bin, *outDir)
		}
		if err == nil && standin {
			err = markStandin(s, bin, *outDir)
		}
		if err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", s.Image, err))
			continue
		}
		fmt.Fprintf(os.Stderr, "sidecars: %s -> %s\n", s.Image, filepath.Join(*outDir, s.Archive()))
	}
	if len(failed) > 0 {
		fmt.Fprintf(os.Stderr, "sidecars: %d of %d images not built:\n", len(failed), len(sidecars))
		for _, err := range failed {
			fmt.Fprintln(os.Stderr, "  -", err)
		}
		os.Exit(1)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "sidecars:", errors.New("interrupted"))
		os.Exit(1)
	}
}
