package initramfs

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Spec is what goes into a guest initramfs.
type Spec struct {
	// Init is the guest agent binary (static), installed as /init.
	Init string
	// Busybox is a static busybox binary, installed as /bin/busybox.
	Busybox string
	// Applets are the names linked to busybox in /bin; nil means what
	// `Busybox --list` prints (busybox runs on the build machine).
	Applets []string
	// Extra entries go in after the others (tests put a second program
	// beside /init this way); their directories must exist by then.
	Extra []Entry
}

// skippedApplets are not linked: /init is the guest's init, and a second
// one in PATH would only confuse.
var skippedApplets = []string{"busybox", "init", "linuxrc"}

// Files of /etc, enough for sh, id and name lookups of localhost.
var etcFiles = []Entry{
	File("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")),
	File("etc/group", 0o644, []byte("root:x:0:\n")),
	File("etc/hosts", 0o644, []byte("127.0.0.1\tlocalhost\n::1\tlocalhost\n")),
}

// Entries returns the archive's members: the directory skeleton,
// /dev/console (the kernel opens it for /init before anything is
// mounted), /etc, busybox and its applet links, and /init.
func Entries(ctx context.Context, spec Spec) ([]Entry, error) {
	init, err := readStatic(spec.Init)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	bb, err := readStatic(spec.Busybox)
	if err != nil {
		return nil, fmt.Errorf("busybox: %w", err)
	}
	applets := spec.Applets
	if applets == nil {
		if applets, err = listApplets(ctx, spec.Busybox); err != nil {
			return nil, err
		}
	}
	entries := []Entry{
		Dir("bin", 0o755), Dir("dev", 0o755), Dir("etc", 0o755), Dir("proc", 0o555),
		Dir("root", 0o700), Dir("run", 0o755), Dir("sbin", 0o755), Dir("sys", 0o555),
		Dir("tmp", 0o1777), Dir("usr", 0o755), Dir("usr/bin", 0o755), Dir("usr/sbin", 0o755),
		Dir("var", 0o755),
		CharDev("dev/console", 0o600, 5, 1),
	}
	entries = append(entries, etcFiles...)
	entries = append(entries, File("bin/busybox", 0o755, bb))
	seen := map[string]bool{}
	for _, a := range applets {
		if a == "" || strings.ContainsAny(a, "/\x00") || a == "." || a == ".." {
			return nil, fmt.Errorf("busybox applet %q: %w", a, ErrBadEntry)
		}
		if seen[a] || slices.Contains(skippedApplets, a) {
			continue
		}
		seen[a] = true
		entries = append(entries, Symlink("bin/"+a, "busybox"))
	}
	entries = append(entries, File("init", 0o755, init))
	return append(entries, spec.Extra...), nil
}

// Build writes the initramfs for spec to w.
func Build(ctx context.Context, w io.Writer, spec Spec) error {
	entries, err := Entries(ctx, spec)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := WriteNewc(bw, entries); err != nil {
		return err
	}
	return bw.Flush()
}

// WriteFile builds the initramfs into path atomically: a temporary file
// beside it, renamed over path once complete.
func WriteFile(ctx context.Context, path string, spec Spec) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := Build(ctx, tmp, spec); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	return nil
}

// ErrNotStatic means a binary needs a dynamic loader, which the guest
// does not have.
var ErrNotStatic = errors.New("binary is dynamically linked")

// readStatic reads an ELF executable and checks that it needs no loader.
func readStatic(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("no path given")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("%s: %w (build it with CGO_ENABLED=0, or install busybox-static)", path, ErrNotStatic)
		}
	}
	return b, nil
}

// listApplets asks busybox for the applets it was built with.
func listApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("list busybox applets: %s --list: %w", busybox, err)
	}
	applets := strings.Fields(string(out))
	if !slices.Contains(applets, "sh") {
		return nil, fmt.Errorf("list busybox applets: %s has no sh", busybox)
	}
	return applets, nil
}
