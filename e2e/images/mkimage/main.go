// Command mkimage writes one container image archive (docker-archive,
// for `ctr -n k8s.io images import`) without a container daemon: an
// optional root file system tarball as the bottom layer (a Debian tree
// from mmdebstrap), a layer of host files above it (our binaries), the
// run configuration and one or more tags.
//
//	mkimage -o bin/images/nodeagent-v1.tar -tag ghcr.io/nodeinfra/nodeagent:v1 \
//	    -rootfs /var/cache/nodeinfra/images/nodeagent-<key>.tar.gz \
//	    -file bin/nodeagent=/usr/local/bin/nodeagent \
//	    -entrypoint /usr/local/bin/nodeagent -cmd version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nodeinfra/nodeinfra/e2e/images/oci"
)

// DefaultPath is the PATH of an image that sets none: Debian's, with
// /usr/local first, so that a manifest's `command: ["nodeagent", ...]`
// finds our binary.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Spec is one image: what the flags say.
type Spec struct {
	Out    string
	Tags   []string
	Rootfs string     // tarball (plain or gzip), "" for none
	Files  []oci.File // the top layer
	Config oci.Config
}

// ParseFile reads a -file argument, SRC=DST: the host file SRC at the
// absolute image path DST, executable (0755) when SRC has any execute
// bit, else 0644.
func ParseFile(arg string) (oci.File, error) {
	src, dst, ok := strings.Cut(arg, "=")
	if !ok || src == "" || dst == "" {
		return oci.File{}, fmt.Errorf("-file %q: want SRC=DST", arg)
	}
	if !path.IsAbs(dst) || path.Clean(dst) != dst || dst == "/" {
		return oci.File{}, fmt.Errorf("-file %q: %q is not a clean absolute file path", arg, dst)
	}
	st, err := os.Stat(src)
	if err != nil {
		return oci.File{}, fmt.Errorf("-file %q: %w", arg, err)
	}
	if !st.Mode().IsRegular() {
		return oci.File{}, fmt.Errorf("-file %q: %s is not a regular file", arg, src)
	}
	mode := int64(0o644)
	if st.Mode().Perm()&0o111 != 0 {
		mode = 0o755
	}
	return oci.File{Path: dst, Source: src, Mode: mode}, nil
}

// Validate checks the spec before any layer is read.
func (s *Spec) Validate() error {
	if s.Out == "" {
		return errors.New("-o is required")
	}
	if len(s.Tags) == 0 {
		return errors.New("at least one -tag is required")
	}
	if s.Rootfs == "" && len(s.Files) == 0 {
		return errors.New("an image needs -rootfs or -file")
	}
	if len(s.Config.Entrypoint) == 0 && len(s.Config.Cmd) == 0 {
		return errors.New("an image needs -entrypoint or -cmd")
	}
	seen := map[string]bool{}
	for _, f := range s.Files {
		if seen[f.Path] {
			return fmt.Errorf("-file: %s given twice", f.Path)
		}
		seen[f.Path] = true
	}
	for _, e := range s.Config.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("-env %q: want NAME=VALUE", e)
		}
	}
	return nil
}

// withDefaultPath returns env with DefaultPath added when it sets no PATH.
func withDefaultPath(env []string) []string {
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			return env
		}
	}
	return append([]string{DefaultPath}, env...)
}

// Write writes the archive: the root file system layer (if any), then the
// files' layer.
func Write(s Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	var layers []v1.Layer
	if s.Rootfs != "" {
		l, err := oci.LayerFromTar(s.Rootfs)
		if err != nil {
			return err
		}
		layers = append(layers, l)
	}
	if len(s.Files) > 0 {
		l, err := oci.LayerFromFiles(s.Files)
		if err != nil {
			return err
		}
		layers = append(layers, l)
	}
	cfg := s.Config
	cfg.Env = withDefaultPath(cfg.Env)
	return oci.WriteArchiveTags(s.Out, s.Tags, layers, cfg)
}

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

// parseArgs reads the command line into a Spec.
func parseArgs(args []string, stderr io.Writer) (Spec, error) {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var s Spec
	var tags, files, entry, cmd, env, labels list
	fs.StringVar(&s.Out, "o", "", "the archive to write")
	fs.StringVar(&s.Rootfs, "rootfs", "", "root file system tarball (plain or gzip), the bottom layer")
	fs.StringVar(&s.Config.WorkingDir, "workdir", "", "working directory")
	fs.Var(&tags, "tag", "image name with tag (repeatable)")
	fs.Var(&files, "file", "SRC=DST: host file SRC at image path DST (repeatable)")
	fs.Var(&entry, "entrypoint", "one entrypoint argument (repeatable, in order)")
	fs.Var(&cmd, "cmd", "one default argument (repeatable, in order)")
	fs.Var(&env, "env", "NAME=VALUE (repeatable; PATH defaults to Debian's with /usr/local first)")
	fs.Var(&labels, "label", "NAME=VALUE (repeatable)")
	if err := fs.Parse(args); err != nil {
		return Spec{}, err
	}
	if fs.NArg() > 0 {
		return Spec{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	s.Tags, s.Config.Entrypoint, s.Config.Cmd, s.Config.Env = tags, entry, cmd, env
	for _, a := range files {
		f, err := ParseFile(a)
		if err != nil {
			return Spec{}, err
		}
		s.Files = append(s.Files, f)
	}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return Spec{}, fmt.Errorf("-label %q: want NAME=VALUE", l)
		}
		if s.Config.Labels == nil {
			s.Config.Labels = map[string]string{}
		}
		s.Config.Labels[k] = v
	}
	return s, nil
}

func main() {
	s, err := parseArgs(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err == nil {
		err = Write(s)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}
