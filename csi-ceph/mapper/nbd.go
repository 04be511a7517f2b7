package mapper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// NBD maps with rbd-nbd, which serves the image to the kernel's nbd
// driver from a userspace daemon.
//
// The daemon is started so that another can take over its device: over
// netlink, with a reattach window during which the kernel keeps the
// device and its I/O waiting for a new daemon, and with a cookie that
// names the device (the kernel shows it as the device's backend). The
// key stays in the work dir (0600) while the mapping lives, so that Heal
// can attach a new daemon without the stage secrets.
//
// A device is the image's while `rbd-nbd list-mapped` lists it for the
// image; a device no daemon serves is the image's (and Broken) when its
// backend is the mapping's cookie.
type NBD struct {
	Bin     string // "rbd-nbd"
	SysRoot string // "/sys" ("" too)
	// Daemons starts rbd-nbd; nil: in the caller's cgroup.
	Daemons *Daemons
}

var (
	_ Mapper = NBD{}
	_ Healer = NBD{}
)

// nbdDefaults are the options that let a new rbd-nbd take over a device
// whose daemon died; a StorageClass's nbd mapOptions may override them.
var nbdDefaults = []string{"try-netlink", "reattach-timeout=300"}

// Name implements Mapper.
func (NBD) Name() string { return RBDNBD }

// Map implements Mapper.
func (n NBD) Map(ctx context.Context, t Target, work string) (Mapping, error) {
	if err := t.Validate(); err != nil {
		return Mapping{}, err
	}
	m := Mapping{Mapper: RBDNBD, Dir: work, Pool: t.Pool, PoolID: t.PoolID, Image: t.Image, ImageID: t.ImageID,
		User: t.User, Monitors: strings.Join(t.Monitors, ","), ReadOnly: t.ReadOnly,
		MapOptions: strings.Join(t.Options, ","), UnmapOptions: strings.Join(t.UnmapOptions, ",")}
	if list, err := n.list(ctx); err == nil {
		for _, e := range list {
			if e.holds(m) {
				m.Device, m.Cookie = e.Device, e.Cookie // mapped already (a retried stage)
				return m, nil
			}
		}
	}
	if err := os.MkdirAll(work, 0o700); err != nil {
		return Mapping{}, fmt.Errorf("rbd-nbd map: %w", err)
	}
	if err := writePrivate(filepath.Join(work, keyFile), []byte(t.Key)); err != nil {
		return Mapping{}, fmt.Errorf("rbd-nbd map: write key: %w", err)
	}
	args := append([]string{"map"}, n.args(m, withDefaults(nbdDefaults, t.Options), "--show-cookie")...)
	out, err := run(ctx, n.Bin+" map", n.Daemons.command(ctx, n.Bin, args...))
	if err != nil {
		_ = removeWorkDir(work)
		return Mapping{}, fmt.Errorf("rbd-nbd map %s/%s: %w", t.Pool, t.Image, err)
	}
	f := strings.Fields(out)
	if len(f) == 0 || !strings.HasPrefix(f[0], "/dev/nbd") {
		_ = removeWorkDir(work)
		return Mapping{}, fmt.Errorf("rbd-nbd map %s/%s: unexpected output %q", t.Pool, t.Image, out)
	}
	m.Device = f[0]
	if len(f) > 1 {
		m.Cookie = f[1]
	}
	return m, nil
}

// args are the arguments after the verb: credentials, options, monitors,
// read-only and the image.
func (n NBD) args(m Mapping, opts []string, extra ...string) []string {
	a := []string{"--id", m.User, "--keyfile", filepath.Join(m.Dir, keyFile)}
	a = append(a, nbdFlags(opts)...)
	a = append(a, extra...)
	a = append(a, "-m", m.Monitors)
	if m.ReadOnly {
		a = append(a, "--read-only")
	}
	return append(a, m.Pool+"/"+m.Image)
}

// nbdDevice is an entry of `rbd-nbd list-mapped --format json`.
type nbdDevice struct {
	Pool      string `json:"pool"`
	Namespace string `json:"namespace"`
	Image     string `json:"image"`
	Snap      string `json:"snap"`
	Device    string `json:"device"`
	Cookie    string `json:"cookie"`
}

func (e nbdDevice) holds(m Mapping) bool {
	return m.Image != "" && e.Image == m.Image && e.Pool == m.Pool && e.Namespace == "" && (e.Snap == "" || e.Snap == "-")
}

// list returns the devices that rbd-nbd daemons serve.
func (n NBD) list(ctx context.Context) ([]nbdDevice, error) {
	out, err := run(ctx, n.Bin+" list-mapped", newCmd(ctx, n.Bin, "list-mapped", "--format", "json"))
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(out) == "" {
		return nil, nil
	}
	var list []nbdDevice
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, fmt.Errorf("rbd-nbd list-mapped: %w", err)
	}
	return list, nil
}

// Check implements Mapper.
func (n NBD) Check(ctx context.Context, m Mapping) error {
	if m.Device == "" {
		return fmt.Errorf("no nbd device recorded: %w", ErrStale)
	}
	list, err := n.list(ctx)
	if err != nil {
		return err
	}
	for _, e := range list {
		if e.Device != m.Device {
			continue
		}
		if e.holds(m) {
			return nil
		}
		return fmt.Errorf("%s maps %s/%s, not %s/%s: %w", m.Device, e.Pool, e.Image, m.Pool, m.Image, ErrStale)
	}
	b, err := os.ReadFile(filepath.Join(or(n.SysRoot, "/sys"), "block", filepath.Base(m.Device), "backend"))
	if err == nil && m.Cookie != "" && strings.TrimSpace(string(b)) == m.Cookie {
		return fmt.Errorf("no rbd-nbd serves %s: %w", m.Device, ErrBroken)
	}
	return fmt.Errorf("no rbd-nbd serves %s, and its backend is not the mapping's: %w", m.Device, ErrStale)
}

// Heal implements Healer: a new rbd-nbd takes over the device (within the
// reattach window), so that the file systems on it carry on.
func (n NBD) Heal(ctx context.Context, m Mapping) (Mapping, error) {
	if m.Cookie == "" || m.Device == "" || m.User == "" || m.Monitors == "" {
		return m, errors.New("rbd-nbd heal: the mapping has no cookie, user or monitors to reattach with")
	}
	var opts []string
	if m.MapOptions != "" {
		opts = strings.Split(m.MapOptions, ",")
	}
	args := append([]string{"attach"}, n.args(m, withDefaults(nbdDefaults, opts), "--device", m.Device, "--cookie", m.Cookie)...)
	if _, err := run(ctx, n.Bin+" attach", n.Daemons.command(ctx, n.Bin, args...)); err != nil {
		return m, fmt.Errorf("rbd-nbd attach %s to %s/%s: %w", m.Device, m.Pool, m.Image, err)
	}
	return m, nil
}

// Unmap implements Mapper: it unmaps m's device when it is the image's,
// and every other device an rbd-nbd serves the image on.
func (n NBD) Unmap(ctx context.Context, m Mapping) error {
	var devs []string
	if err := n.Check(ctx, m); err == nil || errors.Is(err, ErrBroken) {
		devs = append(devs, m.Device)
	}
	if list, err := n.list(ctx); err == nil {
		for _, e := range list {
			if e.holds(m) && e.Device != m.Device {
				devs = append(devs, e.Device)
			}
		}
	}
	var opts []string
	if m.UnmapOptions != "" {
		opts = nbdFlags(strings.Split(m.UnmapOptions, ","))
	}
	for _, d := range devs {
		if err := checkUnused(d); err != nil && !slices.Contains(opts, "--force") {
			return err
		}
	}
	for _, d := range devs {
		args := append(append([]string{"unmap"}, opts...), d)
		if _, err := run(ctx, n.Bin+" unmap", newCmd(ctx, n.Bin, args...)); err != nil {
			if strings.Contains(err.Error(), "not mapped") || strings.Contains(err.Error(), "No such") {
				continue
			}
			return fmt.Errorf("rbd-nbd unmap %s: %w", d, err)
		}
	}
	if err := removeWorkDir(m.Dir); err != nil {
		return fmt.Errorf("rbd-nbd unmap: %w", err)
	}
	return nil
}
