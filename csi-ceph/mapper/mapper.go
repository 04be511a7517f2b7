// Package mapper makes an RBD image a block device on the node, three
// ways behind one interface: krbd (the kernel client, through sysfs),
// rbd-nbd, and rbd-fuse + a loop device for hosts that have neither; Host
// tells which of them a node has. A Mapping is plain data that the node
// service stores with the staged volume, so that Unmap releases
// everything (map, loop device, fuse process, credentials) even after a
// restart or when the pod's mount is already gone; WaitForSize makes a
// mapped device show its image's new size. It knows nothing of CSI or
// gRPC.
package mapper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Target is the image to map and how to reach it.
type Target struct {
	Monitors []string
	User     string // cephx ID, without "client."
	Key      string
	Pool     string
	Image    string
	ReadOnly bool
}

// Validate checks a target.
func (t Target) Validate() error {
	switch {
	case len(t.Monitors) == 0:
		return errors.New("map: no monitors")
	case t.User == "" || t.Key == "":
		return errors.New("map: no credentials")
	case t.Pool == "" || t.Image == "":
		return errors.New("map: no pool or image")
	case strings.ContainsAny(t.Pool+t.Image+t.User, "/ \n\t,="):
		return fmt.Errorf("map: pool %q, image %q or user %q has a forbidden character", t.Pool, t.Image, t.User)
	}
	return nil
}

// Mapping is a mapped image: enough to find and release everything later.
type Mapping struct {
	Mapper string `json:"mapper"`
	Device string `json:"device"`
	// krbd: the device ID under /sys/bus/rbd/devices.
	KrbdID string `json:"krbdID,omitempty"`
	// fuse: the directory holding the config, keyring and fuse mount.
	Dir string `json:"dir,omitempty"`
}

// Mapper maps images to block devices.
type Mapper interface {
	Name() string
	// Map maps t; work is a private directory the mapper may use.
	Map(ctx context.Context, t Target, work string) (Mapping, error)
	// Unmap releases a mapping; releasing one that is gone is not an error.
	Unmap(ctx context.Context, m Mapping) error
}

// Names of the mappers, as the StorageClass parameter "mounter" gives them.
const (
	KRBD   = "krbd"
	RBDNBD = "rbd-nbd"
	Fuse   = "fuse"
)

// Host describes what a host offers; Detect fills it in.
type Host struct {
	SysRoot  string // "/sys" on a real host
	DevRoot  string // "/dev"
	LookPath func(string) (string, error)
}

// Available lists the mappers this host can use, best first.
func (h Host) Available() []string {
	var out []string
	if _, err := os.Stat(filepath.Join(h.SysRoot, "bus/rbd/add_single_major")); err == nil {
		out = append(out, KRBD)
	}
	if _, err := h.LookPath("rbd-nbd"); err == nil {
		if _, err := os.Stat(filepath.Join(h.SysRoot, "module/nbd")); err == nil {
			out = append(out, RBDNBD)
		}
	}
	if _, err := h.LookPath("rbd-fuse"); err == nil {
		if _, err := os.Stat(filepath.Join(h.DevRoot, "fuse")); err == nil {
			if _, err := os.Stat(filepath.Join(h.DevRoot, "loop-control")); err == nil {
				out = append(out, Fuse)
			}
		}
	}
	return out
}

// Choose picks the mapper: the requested one if the host has it, else the
// best one the host has.
func (h Host) Choose(requested string) (string, error) {
	avail := h.Available()
	if requested != "" {
		switch requested {
		case KRBD, RBDNBD, Fuse:
		default:
			return "", fmt.Errorf("mounter %q: want %s, %s or %s", requested, KRBD, RBDNBD, Fuse)
		}
		for _, a := range avail {
			if a == requested {
				return a, nil
			}
		}
		return "", fmt.Errorf("mounter %q is not available on this node (it has %v)", requested, avail)
	}
	if len(avail) == 0 {
		return "", errors.New("no way to map RBD images on this node: no krbd, no rbd-nbd with the nbd module, no rbd-fuse with /dev/fuse and loop devices")
	}
	return avail[0], nil
}

// WaitForSize refreshes a mapping after its image grew and waits until the
// device shows at least size bytes: krbd and rbd-nbd pick the new size up
// by themselves; a loop device on an rbd-fuse file needs `losetup -c` once
// FUSE reports the new file size (its attribute cache lives about 1 s).
func WaitForSize(ctx context.Context, m Mapping, size uint64, losetup string) (uint64, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		if m.Mapper == Fuse {
			if _, err := run(ctx, losetup, "--set-capacity", m.Device); err != nil {
				return 0, err
			}
		}
		got, err := deviceSize(m.Device)
		if err != nil {
			return 0, err
		}
		if got >= size {
			return got, nil
		}
		if time.Now().After(deadline) {
			return got, fmt.Errorf("%s still has %d bytes, want %d", m.Device, got, size)
		}
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func deviceSize(dev string) (uint64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("size of %s: %w", dev, err)
	}
	return uint64(n), nil
}
