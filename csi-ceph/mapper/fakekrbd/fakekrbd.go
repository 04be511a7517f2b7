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
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
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
	for _, f := range []string{"add_single_major", "remove_single_major"} {
		if err := os.WriteFile(filepath.Join(k.SysRoot, "bus/rbd", f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			k.serve()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return k
}

func (k *Kernel) devices() string { return filepath.Join(k.SysRoot, "bus/rbd/devices") }

func (k *Kernel) serve() {
	add := filepath.Join(k.SysRoot, "bus/rbd/add_single_major")
	if b, _ := os.ReadFile(add); len(b) > 0 {
		_ = os.WriteFile(add, nil, 0o644)
		k.add(string(b))
	}
	rm := filepath.Join(k.SysRoot, "bus/rbd/remove_single_major")
	if b, _ := os.ReadFile(rm); len(b) > 0 {
		_ = os.WriteFile(rm, nil, 0o644)
		req := strings.TrimSpace(string(b))
		k.mu.Lock()
		k.removed = append(k.removed, req)
		k.mu.Unlock()
		k.Remove(strings.Fields(req)[0])
	}
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
