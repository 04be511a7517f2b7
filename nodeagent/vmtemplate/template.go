// Package vmtemplate prepares VM templates, one per size class: a guest
// booted once, its device state saved with QEMU's migration (x-ignore-shared)
// and its RAM kept in a sealed memfd. A sandbox started from a template
// maps that RAM privately (copy-on-write) and restores the device state:
// its guest runs on from where the template's stopped, in a fraction of a
// boot, and shares the pages it has not written with every other clone.
//
// Templates live in the agent's memory only: they are built when the
// agent starts, rebuilt when the guest kernel, initramfs or QEMU change,
// and gone when it stops.
package vmtemplate

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Class is a sandbox size a template serves.
type Class struct {
	VCPUs     uint32
	MemoryMiB uint32
}

func (c Class) String() string { return fmt.Sprintf("%dx%d", c.VCPUs, c.MemoryMiB) }

// ParseClass reads "VCPUSxMIB", e.g. "1x128".
func ParseClass(s string) (Class, error) {
	v, m, ok := strings.Cut(s, "x")
	vcpus, err1 := strconv.ParseUint(v, 10, 32)
	mib, err2 := strconv.ParseUint(m, 10, 32)
	if !ok || err1 != nil || err2 != nil || vcpus < 1 || vcpus > 64 || mib < 64 || mib > 1<<20 {
		return Class{}, fmt.Errorf("size class %q: want VCPUSxMIB with 1-64 vCPUs and 64 MiB to 1 TiB, e.g. 1x128", s)
	}
	return Class{VCPUs: uint32(vcpus), MemoryMiB: uint32(mib)}, nil
}

// ParseClasses reads a comma-separated list of classes.
func ParseClasses(s string) ([]Class, error) {
	var out []Class
	seen := map[Class]bool{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		c, err := ParseClass(f)
		if err != nil {
			return nil, err
		}
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out, nil
}

// Template is one prepared guest. Its RAM is a sealed memfd: no writer,
// not even a clone's QEMU taken over by its guest, can change a page
// that other clones still read.
type Template struct {
	Class   Class
	Key     string
	BuiltAt time.Time
	// BuildTime is how long the boot and save took.
	BuildTime time.Duration

	ram   *os.File
	state []byte

	mu   sync.Mutex
	refs int
	dead bool
}

// RAM returns a descriptor of the template's memory for one clone (the
// caller closes it once QEMU has it).
func (t *Template) RAM() (*os.File, error) {
	fd, err := unix.Dup(int(t.ram.Fd()))
	if err != nil {
		return nil, fmt.Errorf("template %s: dup memory: %w", t.Class, err)
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), "template-ram"), nil
}

// State returns the read end of a pipe that yields the template's device
// state (written in the background; the caller closes it).
func (t *Template) State() (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	go func() {
		_, _ = w.Write(t.state)
		w.Close()
	}()
	return r, nil
}

// Release gives back a template that Factory.Get handed out.
func (t *Template) Release() {
	t.mu.Lock()
	t.refs--
	closeNow := t.dead && t.refs == 0
	t.mu.Unlock()
	if closeNow {
		t.ram.Close()
	}
}

// retire closes the template once no clone is starting from it; clones
// already running keep their own mapping of its memory.
func (t *Template) retire() {
	t.mu.Lock()
	t.dead = true
	closeNow := t.refs == 0
	t.mu.Unlock()
	if closeNow {
		t.ram.Close()
	}
}

func (t *Template) acquire() {
	t.mu.Lock()
	t.refs++
	t.mu.Unlock()
}

// newMemory makes the memfd a template's guest writes its RAM into.
func newMemory(c Class) (*os.File, error) {
	fd, err := unix.MemfdCreate("nodeinfra-template-"+c.String(), unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "template-ram")
	if err := f.Truncate(int64(c.MemoryMiB) << 20); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd: size: %w", err)
	}
	return f, nil
}

// seal makes the memory read-only for good: no write(2), no shared
// writable mapping, no resizing, no unsealing. Private mappings (the
// clones') stay allowed. The template's QEMU, which mapped it shared,
// must have exited.
func seal(f *os.File) error {
	_, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS,
		unix.F_SEAL_WRITE|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL)
	if err != nil {
		return fmt.Errorf("seal template memory: %w", err)
	}
	return nil
}

// Fingerprint identifies what a prepared VM (a template, a pool VM) is
// made of: the class, the accelerator, the kernel arguments and the files
// (QEMU, kernel, initramfs with the guest agent) by device, inode, size
// and mtime. One whose fingerprint no longer matches is made again.
func Fingerprint(c Class, accel string, kernelArgs []string, qemuBin, kernel, initrd string) (string, error) {
	return fingerprint(c, accel, kernelArgs, qemuPath(qemuBin), kernel, initrd)
}

func fingerprint(c Class, accel string, kernelArgs []string, files ...string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", c, accel, strings.Join(kernelArgs, " "))
	for _, f := range files {
		var st syscall.Stat_t
		if err := syscall.Stat(f, &st); err != nil {
			return "", fmt.Errorf("template %s: %w", c, err)
		}
		fmt.Fprintf(h, "%s\x00%d:%d:%d:%d.%d\x00", f, st.Dev, st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// qemuPath resolves QEMU's binary for the fingerprint.
func qemuPath(bin string) string {
	if p, err := exec.LookPath(bin); err == nil {
		return p
	}
	return bin
}
