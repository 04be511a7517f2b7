package images

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// image is one archive, unpacked.
type image struct {
	archive string
	tags    []string
	config  *v1.ConfigFile
	root    string
}

// TestImages unpacks every archive in $NODEINFRA_IMAGES (make images,
// make k8s-images) and runs its binaries there with chroot, in a mount
// and PID namespace of their own: each image's entrypoint answers its
// version or help, and what the manifests run in it is there and loads.
func TestImages(t *testing.T) {
	dir := os.Getenv("NODEINFRA_IMAGES")
	if dir == "" {
		t.Skip("NODEINFRA_IMAGES is unset: run `make images k8s-images`, then NODEINFRA_IMAGES=bin/images go test ./e2e/images")
	}
	if os.Geteuid() != 0 {
		t.Skip("unpacking images and chroot need root")
	}
	for _, tool := range []string{"unshare", "chroot", "tar", "du"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: %v", tool, err)
		}
	}
	archives, err := filepath.Glob(filepath.Join(dir, "*.tar"))
	if err != nil || len(archives) == 0 {
		t.Fatalf("no image archive in %s (%v)", dir, err)
	}
	for _, a := range archives {
		t.Run(strings.TrimSuffix(filepath.Base(a), ".tar"), func(t *testing.T) {
			img := unpack(t, a)
			repo := img.tags[0]
			if i := strings.LastIndexByte(repo, ':'); i > strings.LastIndexByte(repo, '/') {
				repo = repo[:i]
			}
			switch {
			case repo == "ghcr.io/nodeinfra/nodeagent":
				checkNodeagent(t, img)
			case repo == "ghcr.io/nodeinfra/csi-ceph":
				checkCSICeph(t, img)
			case repo == "registry.k8s.io/pause":
				out := mustRun(t, img, 0, append(img.config.Config.Entrypoint, "-v")...)
				want := "pause " + img.config.Config.Labels["org.opencontainers.image.version"]
				if strings.TrimSpace(out) != want {
					t.Errorf("pause -v: %q, want %q", out, want)
				}
				checkStatic(t, img, img.config.Config.Entrypoint[0])
			case strings.HasPrefix(repo, "registry.k8s.io/sig-storage/"):
				// Upstream's sidecars print "<argv0> <version>" for --version.
				out := mustRun(t, img, 0, append(img.config.Config.Entrypoint, "--version")...)
				version := img.tags[0][len(repo)+1:]
				if !strings.Contains(out, version) {
					t.Errorf("--version: %q, want %s", out, version)
				}
				checkStatic(t, img, img.config.Config.Entrypoint[0])
			default:
				t.Errorf("no checks for image %s", repo)
			}
		})
	}
}

// unpack reads the archive's single image and extracts its layers
// (flattened, whiteouts applied) into a temporary root, logging sizes.
func unpack(t *testing.T, archive string) image {
	t.Helper()
	opener := func() (io.ReadCloser, error) { return os.Open(archive) }
	m, err := tarball.LoadManifest(opener)
	if err != nil {
		t.Fatalf("manifest: %v", err)
	}
	if len(m) != 1 || len(m[0].RepoTags) == 0 {
		t.Fatalf("want one tagged image, manifest %+v", m)
	}
	img, err := tarball.Image(opener, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cf.Config.Entrypoint) == 0 {
		t.Fatalf("no entrypoint: %+v", cf.Config)
	}
	root := t.TempDir()
	cmd := exec.Command("tar", "-x", "--numeric-owner", "-C", root, "-f", "-")
	rc := mutate.Extract(img)
	defer rc.Close()
	cmd.Stdin = rc
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("unpack %s: %v: %s", archive, err, out)
	}
	for _, d := range []string{"proc", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := os.Stat(archive)
	du, err := exec.Command("du", "-sb", root).Output()
	if err != nil {
		t.Fatal(err)
	}
	size, _ := strconv.ParseInt(strings.Fields(string(du))[0], 10, 64)
	t.Logf("%s: tags %v, archive %d bytes, unpacked %d bytes", filepath.Base(archive), m[0].RepoTags, st.Size(), size)
	return image{archive: archive, tags: m[0].RepoTags, config: cf, root: root}
}

// run runs args (args[0] resolved in the image's PATH) chrooted in the
// image, with the image's environment, /proc and the host's /dev mounted
// in a mount and PID namespace that die with it.
func run(img image, timeout time.Duration, args ...string) (string, error) {
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	script := `mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"`
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--mount", "--pid", "--fork", "--kill-child", "--",
		"/bin/sh", "-c", script, img.root}, args...)...)
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, img.config.Config.Env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return out.String(), err
}

func mustRun(t *testing.T, img image, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := run(img, timeout, args...)
	if err != nil {
		t.Errorf("%q: %v: %s", args, err, out)
	}
	return out
}

// defaultRun runs the image as a runtime would without a command: its
// entrypoint followed by its cmd.
func defaultRun(t *testing.T, img image) string {
	t.Helper()
	return mustRun(t, img, 0, append(append([]string{}, img.config.Config.Entrypoint...), img.config.Config.Cmd...)...)
}

// checkStatic fails when the image's file p needs a dynamic loader.
func checkStatic(t *testing.T, img image, p string) {
	t.Helper()
	f, err := elf.Open(filepath.Join(img.root, p))
	if err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Errorf("%s is dynamically linked", p)
		}
	}
}

// checkFiles fails for each path missing from the image.
func checkFiles(t *testing.T, img image, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(filepath.Join(img.root, p)); err != nil {
			t.Errorf("missing %s: %v", p, err)
		}
	}
}

// checkLibraries asks the image's dynamic loader to resolve every ELF
// file in dirs: a library left out (by a path-exclude or a missing
// package) shows as "not found".
func checkLibraries(t *testing.T, img image, dirs ...string) {
	t.Helper()
	script := `n=0; for f in "$@"/*; do
		[ -f "$f" ] && [ "$(head -c4 "$f")" = "$(printf '\177ELF')" ] || continue
		n=$((n+1))
		out=$(/lib64/ld-linux-x86-64.so.2 --list "$f" 2>&1) || case "$out" in *"not a dynamic"*|*"statically linked"*) ;; *) echo "$f: $out" ;; esac
		case "$out" in *"not found"*) echo "$f: $out" ;; esac
	done; echo "checked $n"`
	for _, d := range dirs {
		out := mustRun(t, img, time.Minute, "/bin/sh", "-c", script, "sh", d)
		if strings.Contains(out, "not found") || !strings.Contains(out, "checked") || strings.Contains(out, "checked 0") {
			t.Errorf("libraries of %s:\n%s", d, out)
		}
	}
}

// checkSlim fails when the root file system holds what the images leave
// out: apt lists, downloaded packages, man pages, Python bytecode. It runs
// first: running Python in the unpacked tree writes bytecode.
func checkSlim(t *testing.T, img image) {
	t.Helper()
	for _, g := range []string{"var/lib/apt/lists/*_Packages*", "var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
		"usr/share/man/man*/*", "usr/share/locale/*/LC_MESSAGES/*", "usr/lib/python3*/__pycache__"} {
		if m, _ := filepath.Glob(filepath.Join(img.root, g)); len(m) > 0 {
			t.Errorf("%d files like /%s, e.g. %s", len(m), g, m[0])
		}
	}
}

func checkNodeagent(t *testing.T, img image) {
	checkSlim(t, img)
	version := img.config.Config.Labels["org.opencontainers.image.version"]
	if out := defaultRun(t, img); strings.TrimSpace(out) != "nodeagent "+version {
		t.Errorf("default command: %q, want nodeagent %s", out, version)
	}
	// The DaemonSet's commands: `nodeagent serve` and `nodeagent status`
	// through PATH, the init container's sh, cp, chmod, mv and cni-eni.
	mustRun(t, img, 0, "nodeagent", "status", "--help")
	mustRun(t, img, 0, "/bin/sh", "-c", "command -v cp chmod mv")
	if out := mustRun(t, img, 0, "/bin/sh", "-c", "CNI_COMMAND=VERSION /usr/local/bin/cni-eni </dev/null"); !strings.Contains(out, "supportedVersions") {
		t.Errorf("cni-eni VERSION: %q", out)
	}
	checkStatic(t, img, "/usr/local/bin/cni-eni")
	checkFiles(t, img, "/usr/local/bin/nodeagent-guest/vmlinux", "/usr/local/bin/nodeagent-guest/initramfs.cpio",
		"/usr/share/qemu/qboot.rom", "/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so")
	if out := mustRun(t, img, 0, "qemu-system-x86_64", "--version"); !strings.Contains(out, "QEMU emulator version") {
		t.Errorf("qemu --version: %q", out)
	}
	mustRun(t, img, 0, "ip", "-V")
	checkLibraries(t, img, "/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu/qemu")
	// The guest kernel boots under TCG with the firmware and the NIC
	// (its option ROM) the agent gives sandboxes, to the panic a kernel
	// without a root file system ends in.
	out, err := run(img, 3*time.Minute, "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-cpu", "max", "-m", "128M",
		"-bios", "/usr/share/qemu/qboot.rom", "-nographic", "-nodefaults", "-no-user-config", "-no-reboot",
		"-device", "virtio-net-pci,netdev=n0", "-netdev", "user,id=n0",
		"-serial", "stdio", "-kernel", "/usr/local/bin/nodeagent-guest/vmlinux", "-append", "console=ttyS0 panic=-1 reboot=k")
	if !strings.Contains(out, "Unable to mount root") && !strings.Contains(out, "Kernel panic") {
		tail := out
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		t.Errorf("guest boot under TCG: %v: %s", err, tail)
	}
}

func checkCSICeph(t *testing.T, img image) {
	checkSlim(t, img)
	if out := defaultRun(t, img); !strings.Contains(out, "-endpoint") {
		t.Errorf("default command (--help): %q", out)
	}
	for _, c := range [][]string{{"rbd", "--version"}, {"rbd-nbd", "--version"}, {"ceph-fuse", "--version"},
		{"ceph", "--version"}, {"mount", "--version"}, {"losetup", "--version"}, {"blkid", "--version"},
		{"mkfs.ext4", "-V"}, {"mkfs.xfs", "-V"}} {
		mustRun(t, img, 0, c...)
	}
	mustRun(t, img, 0, "/bin/sh", "-c", "command -v rbd-fuse mount.ceph umount resize2fs e2fsck xfs_growfs xfs_repair")
	checkLibraries(t, img, "/usr/bin", "/usr/sbin", "/usr/local/bin")
}
