// Package fakekrbd plays the kernel RBD client's sysfs interface in a
// temporary tree, for tests on hosts without krbd: a write of a map line
// to bus/rbd/add_single_major makes a device (its sysfs attributes and a
// regular file standing for /dev/rbdN, which holds the image's name), a
// write to remove_single_major removes one. Tests can also put another
// image under an existing device ID, as a reboot or a reused ID would.
package fakekrbd

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Image is what a fake device maps.
type Image struct {
	Pool   string
	PoolID int64
	Name   string
	ID     string
}

// Content is what the device file of img holds.
func (img Image) Content() string { return "rbd image " + img.Pool + "/" + img.Name + "\n" }

// Kernel is a fake kernel RBD client.
type Kernel struct {
	SysRoot string
	DevRoot string
	resolve func(pool, name string) (Image, bool)

	mu      sync.Mutex
	next    int
	added   []string // map lines, secrets removed
	removed []string // remove requests
}

// Start makes the tree under t.TempDir() and serves it until the test
// ends. resolve tells the pool ID and image ID of pool/name, as the
// cluster would (false: no such image, the map fails).
func Start(t testing.TB, resolve func(pool, name string) (Image, bool)) *Kernel {
	t.Helper()
	root := t.TempDir()
	k := &Kernel{SysRoot: filepath.Join(root, "sys"), DevRoot: filepath.Join(root, "dev"), resolve: resolve}
	for _, d := range []string{k.devices(), k.DevRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The control files are FIFOs: each write reaches the fake whole and
	// exactly once, and the writer returns once the fake has read it, as a
	// write to the real sysfs file returns once the kernel took it. (Plain
	// files polled and truncated lose a write that lands between the read
	// and the truncation.)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for name, handle := range map[string]func(string){"add_single_major": k.add, "remove_single_major": k.remove} {
		path := filepath.Join(k.SysRoot, "bus/rbd", name)
		if err := unix.Mkfifo(path, 0o600); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				f, err := os.OpenFile(path, os.O_RDONLY, 0) // waits for a writer
				if err != nil {
					return
				}
				b, _ := io.ReadAll(f)
				f.Close()
				if ctx.Err() != nil {
					return
				}
				// Writers that met one open of the FIFO arrive together:
				// one request a line.
				for _, line := range strings.Split(string(b), "\n") {
					if strings.TrimSpace(line) != "" {
						handle(line)
					}
				}
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		// Wake the readers blocked in open, until they are gone: a
		// non-blocking open for writing fails while a reader is between
		// two opens, and that reader would then wait forever.
		for {
			for _, name := range []string{"add_single_major", "remove_single_major"} {
				if f, err := os.OpenFile(filepath.Join(k.SysRoot, "bus/rbd", name), os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
					f.Close()
				}
			}
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	return k
}

func (k *Kernel) devices() string { return filepath.Join(k.SysRoot, "bus/rbd/devices") }

// remove handles "<id> [force]".
func (k *Kernel) remove(line string) {
	req := strings.TrimSpace(line)
	if req == "" {
		return
	}
	k.mu.Lock()
	k.removed = append(k.removed, req)
	k.mu.Unlock()
	k.Remove(strings.Fields(req)[0])
}

// add handles "<mons> <options> <pool> <image> <snap>".
func (k *Kernel) add(line string) {
	f := strings.Fields(line)
	if len(f) != 5 {
		return
	}
	var opts []string
	for _, o := range strings.Split(f[1], ",") {
		if strings.HasPrefix(o, "secret=") {
			o = "secret=<redacted>"
		}
		opts = append(opts, o)
	}
	k.mu.Lock()
	k.added = append(k.added, strings.Join([]string{f[0], strings.Join(opts, ","), f[2], f[3], f[4]}, " "))
	id := strconv.Itoa(k.next)
	k.next++
	k.mu.Unlock()
	if img, ok := k.resolve(f[2], f[3]); ok {
		_ = k.Put(id, img)
	}
}

// Put makes device id map img, replacing whatever it mapped.
func (k *Kernel) Put(id string, img Image) error {
	dir := filepath.Join(k.devices(), id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, v := range map[string]string{
		"pool": img.Pool, "pool_id": strconv.FormatInt(img.PoolID, 10), "name": img.Name,
		"image_id": img.ID, "pool_ns": "", "current_snap": "-",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(filepath.Join(k.DevRoot, "rbd"+id), []byte(img.Content()), 0o644)
}

// Remove removes device id, as an unmap or a reboot would.
func (k *Kernel) Remove(id string) {
	_ = os.RemoveAll(filepath.Join(k.devices(), id))
	_ = os.Remove(filepath.Join(k.DevRoot, "rbd"+id))
}

// Devices lists the device IDs there are, sorted.
func (k *Kernel) Devices() []string {
	entries, _ := os.ReadDir(k.devices())
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// Holds returns the image device id maps (false: no such device).
func (k *Kernel) Holds(id string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(k.devices(), id, "name"))
	return strings.TrimSpace(string(b)), err == nil
}

// Added returns the map lines written so far, secrets redacted.
func (k *Kernel) Added() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.added...)
}

// Removed returns the remove requests written so far ("3", "3 force").
func (k *Kernel) Removed() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.removed...)
}

// String describes the devices, for test failures.
func (k *Kernel) String() string {
	var b strings.Builder
	for _, id := range k.Devices() {
		n, _ := k.Holds(id)
		fmt.Fprintf(&b, "rbd%s=%s ", id, n)
	}
	return b.String()
}
