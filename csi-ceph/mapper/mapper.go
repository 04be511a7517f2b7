// Package mapper makes an RBD image a block device on the node, three
// ways behind one interface: krbd (the kernel client, through sysfs),
// rbd-nbd, and rbd-fuse + a loop device for hosts that have neither; Host
// tells which of them a node has.
//
// A Mapping is plain data that the node service keeps in its staging
// record. It names the image it maps (pool, name, ID) as well as the
// device, because a device name outlives its mapping: after a reboot, or
// once a daemon has died, /dev/loop0 or /dev/rbd0 may hold another
// tenant's image. So every mapper can Check that a device still maps the
// image of a Mapping (krbd: the device's sysfs pool, name and image_id;
// rbd-nbd: its list of mapped devices; rbd-fuse + loop: the loop's backing
// file on a live FUSE mount of that image), and Unmap releases a device
// only after that check; otherwise it releases only what it finds mapping
// the image. A mapping whose daemon died is Broken: a Healer brings it
// back from what its work dir keeps.
//
// The daemons (rbd-nbd, rbd-fuse) start in a cgroup of their own
// (Daemons), so that they outlive the node plugin's container. Map
// options follow ceph-csi's mapOptions syntax (options.go), and krbd gets
// the monitors' addresses in the protocol the kernel will speak. It knows
// nothing of CSI or gRPC.
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

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Target is the image to map and how to reach it.
type Target struct {
	// Monitors are the cluster's monitors as the cluster config gives
	// them: what the librados clients (rbd-nbd, rbd-fuse) are given.
	Monitors []string
	// MonAddrs are the monitors' addresses from the cluster's monitor
	// map; krbd picks msgr2 or msgr1 addresses from them (when empty,
	// from Monitors).
	MonAddrs []MonAddr
	User     string // cephx ID, without "client."
	Key      string
	Pool     string
	PoolID   int64
	Image    string
	// ImageID is the image's RBD ID: unlike its name, never reused.
	ImageID  string
	ReadOnly bool
	// Options are the map options for this mapper (MapOptions.For), and
	// UnmapOptions what Unmap will pass; both validated by
	// ParseMapOptions.
	Options      []string
	UnmapOptions []string
}

// MonAddr is a monitor's msgr2 and msgr1 address ("ip:port"; one may be
// empty).
type MonAddr struct {
	V2 string
	V1 string
}

// Validate checks a target.
func (t Target) Validate() error {
	switch {
	case len(t.Monitors) == 0 && len(t.MonAddrs) == 0:
		return errors.New("map: no monitors")
	case t.User == "" || t.Key == "":
		return errors.New("map: no credentials")
	case t.Pool == "" || t.Image == "":
		return errors.New("map: no pool or image")
	case strings.ContainsAny(t.Pool+t.Image+t.User+t.ImageID, "/ \n\t,="):
		return fmt.Errorf("map: pool %q, image %q, image ID %q or user %q has a forbidden character", t.Pool, t.Image, t.ImageID, t.User)
	case strings.ContainsAny(t.Key, " \n\t,"):
		return errors.New("map: the key has a forbidden character")
	}
	for _, m := range t.Monitors {
		if strings.ContainsAny(m, " \n\t") {
			return fmt.Errorf("map: monitor %q has a forbidden character", m)
		}
	}
	return nil
}

// Mapping is a mapped image: what it maps, on which device, and enough to
// find and release everything later.
type Mapping struct {
	Mapper string `json:"mapper"`
	Device string `json:"device"`
	// The image the device maps: Check compares what the device holds now
	// with them. Records written before they were kept have none (the
	// node service fills in what the volume ID tells).
	Pool    string `json:"pool,omitempty"`
	PoolID  int64  `json:"poolID,omitempty"`
	Image   string `json:"image,omitempty"`
	ImageID string `json:"imageID,omitempty"`
	// krbd: the device ID under /sys/bus/rbd/devices.
	KrbdID string `json:"krbdID,omitempty"`
	// rbd-nbd and fuse: the work dir, holding the key (0600) for as long
	// as the mapping lives, so that a daemon can be started again without
	// the stage secrets; fuse: also the FUSE mount.
	Dir string `json:"dir,omitempty"`
	// rbd-nbd: the user and monitors to reattach with, and the device's
	// cookie (the kernel's "backend" of the nbd device).
	User string `json:"user,omitempty"`
	// Monitors as mon_host takes them: comma-separated.
	Monitors string `json:"monitors,omitempty"`
	Cookie   string `json:"cookie,omitempty"`
	// ReadOnly: a heal maps read-only again.
	ReadOnly bool `json:"readOnly,omitempty"`
	// MapOptions (rbd-nbd: a reattach passes them again) and
	// UnmapOptions (krbd: "force"), comma-separated.
	MapOptions   string `json:"mapOptions,omitempty"`
	UnmapOptions string `json:"unmapOptions,omitempty"`
}

// Errors of Check. Neither is an answer for a CSI caller as it is: the
// node service decides what a stale or broken mapping means for a call.
var (
	// ErrStale means the device no longer maps the image: it is gone, or
	// holds another image now. Nothing may be done to it on the image's
	// behalf.
	ErrStale = errors.New("the device does not map the image")
	// ErrBroken means the device still belongs to the image but no longer
	// serves it: its daemon died, or the FUSE mount under a loop device
	// is gone.
	ErrBroken = errors.New("the mapping is broken")
)

// ErrInUse means Unmap found the image's device still mounted (by a pod
// of an earlier staging, say) while it still serves the image: releasing
// it and mapping again would give one filesystem two live instances.
var ErrInUse = fmt.Errorf("the image is still in use on this node: %w", errdefs.ErrFailedPrecondition)

// mountedFrom lists the mount points of file systems on device dev.
func mountedFrom(dev string) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("stat %s: %w", dev, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, nil
	}
	all, err := mounts.List()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range all {
		if m.Dev() == st.Rdev {
			out = append(out, m.Point)
		}
	}
	return out, nil
}

// checkUnused fails with ErrInUse when a file system on dev is mounted.
func checkUnused(dev string) error {
	at, err := mountedFrom(dev)
	if err != nil {
		return err
	}
	if len(at) > 0 {
		return fmt.Errorf("%s is mounted at %v: %w", dev, at, ErrInUse)
	}
	return nil
}

// Mapper maps images to block devices.
type Mapper interface {
	Name() string
	// Map maps t; work is a private directory the mapper may use. Mapping
	// an image that is mapped already (a retried stage) returns that
	// mapping.
	Map(ctx context.Context, t Target, work string) (Mapping, error)
	// Check reports whether m.Device maps m's image now: nil when it does
	// and serves it, an error wrapping ErrBroken when it is the image's
	// but does not serve it, ErrStale when it is not the image's (any
	// other error: it could not tell).
	Check(ctx context.Context, m Mapping) error
	// Unmap releases m: its device only when Check finds it is m's, and
	// whatever else it finds mapping m's image; then m's work dir. A
	// device that serves the image and is still mounted is left alone
	// (ErrInUse). Releasing a mapping that is gone is not an error.
	Unmap(ctx context.Context, m Mapping) error
}

// Healer is a Mapper that can bring a broken mapping back from what its
// work dir keeps: rbd-nbd reattaches a new daemon to the same device,
// rbd-fuse starts again and gets a new loop device. The returned mapping
// replaces m.
type Healer interface {
	Heal(ctx context.Context, m Mapping) (Mapping, error)
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
			if _, err := run(ctx, "losetup --set-capacity", newCmd(ctx, losetup, "--set-capacity", m.Device)); err != nil {
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
