package mapper

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Krbd maps through the kernel RBD client's sysfs interface, as `rbd map`
// does, without the CLI. A device is the image's when its sysfs pool,
// name and image_id are the image's (and it maps the image itself, not a
// snapshot).
type Krbd struct {
	SysRoot string // "/sys"
	DevRoot string // "/dev"
}

var _ Mapper = Krbd{}

// Name implements Mapper.
func (Krbd) Name() string { return KRBD }

func (k Krbd) devices() string { return filepath.Join(k.SysRoot, "bus/rbd/devices") }

// Map implements Mapper. The monitors are given in the protocol the
// kernel will speak (KrbdAddresses), the options are the StorageClass's
// krbd mapOptions.
func (k Krbd) Map(ctx context.Context, t Target, _ string) (Mapping, error) {
	if err := t.Validate(); err != nil {
		return Mapping{}, err
	}
	m := Mapping{Mapper: KRBD, Pool: t.Pool, PoolID: t.PoolID, Image: t.Image, ImageID: t.ImageID,
		ReadOnly: t.ReadOnly, UnmapOptions: strings.Join(t.UnmapOptions, ",")}
	if ids, err := k.find(m); err != nil {
		return Mapping{}, err
	} else if len(ids) > 0 {
		return k.at(m, ids[0]), nil // mapped already (a retried stage)
	}
	mons := t.MonAddrs
	if len(mons) == 0 {
		for _, s := range t.Monitors {
			mons = append(mons, ConfigMonitor(s))
		}
	}
	addrs, msMode, err := KrbdAddresses(mons, t.Options)
	if err != nil {
		return Mapping{}, fmt.Errorf("krbd map %s/%s: %w", t.Pool, t.Image, err)
	}
	opts := []string{"name=" + t.User, "secret=" + t.Key}
	if t.ReadOnly {
		opts = append(opts, "ro")
	}
	if msMode != "" {
		opts = append(opts, msMode)
	}
	opts = append(opts, t.Options...)
	// One request a line, as echo writes it (the kernel ignores the
	// newline; a fake sysfs reading a FIFO can tell two writes apart).
	line := fmt.Sprintf("%s %s %s %s -\n", strings.Join(addrs, ","), strings.Join(opts, ","), t.Pool, t.Image)
	if err := os.WriteFile(filepath.Join(k.SysRoot, "bus/rbd/add_single_major"), []byte(line), 0); err != nil {
		// The line holds the key: never put it in an error.
		return Mapping{}, fmt.Errorf("krbd map %s/%s: %w", t.Pool, t.Image, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ids, err := k.find(m)
		if err != nil {
			return Mapping{}, err
		}
		if len(ids) > 0 {
			return k.at(m, ids[0]), nil
		}
		if time.Now().After(deadline) {
			return Mapping{}, fmt.Errorf("krbd map %s/%s: no device appeared", t.Pool, t.Image)
		}
		select {
		case <-ctx.Done():
			return Mapping{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (k Krbd) at(m Mapping, id string) Mapping {
	m.KrbdID, m.Device = id, filepath.Join(k.DevRoot, "rbd"+id)
	return m
}

// holds reports what device id maps now: pool, pool ID, name, image ID,
// namespace and snapshot, from sysfs. found is false when there is no
// such device.
func (k Krbd) holds(id string) (attrs map[string]string, found bool, err error) {
	dir := filepath.Join(k.devices(), id)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	} else if err != nil {
		return nil, false, fmt.Errorf("krbd device %s: %w", id, err)
	}
	attrs = map[string]string{}
	for _, a := range []string{"pool", "pool_id", "name", "image_id", "pool_ns", "current_snap"} {
		b, err := os.ReadFile(filepath.Join(dir, a))
		if err == nil {
			attrs[a] = strings.TrimSpace(string(b))
		}
	}
	return attrs, true, nil
}

// maps reports whether a device with attrs maps m's image.
func maps(m Mapping, attrs map[string]string) bool {
	switch {
	case m.Image == "" || attrs["name"] != m.Image:
		return false
	case m.Pool != "" && attrs["pool"] != m.Pool:
		return false
	case m.Pool == "" && attrs["pool_id"] != strconv.FormatInt(m.PoolID, 10):
		return false
	case m.ImageID != "" && attrs["image_id"] != m.ImageID:
		return false
	case attrs["pool_ns"] != "" || (attrs["current_snap"] != "" && attrs["current_snap"] != "-"):
		return false
	}
	return true
}

// find returns the IDs of the devices that map m's image.
func (k Krbd) find(m Mapping) ([]string, error) {
	entries, err := os.ReadDir(k.devices())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list krbd devices: %w", err)
	}
	var out []string
	for _, e := range entries {
		if attrs, ok, err := k.holds(e.Name()); err == nil && ok && maps(m, attrs) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Check implements Mapper.
func (k Krbd) Check(ctx context.Context, m Mapping) error {
	if m.KrbdID == "" || m.Device != filepath.Join(k.DevRoot, "rbd"+m.KrbdID) {
		return fmt.Errorf("no krbd device recorded: %w", ErrStale)
	}
	attrs, found, err := k.holds(m.KrbdID)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%s is gone: %w", m.Device, ErrStale)
	}
	if !maps(m, attrs) {
		return fmt.Errorf("%s maps %s/%s (ID %s), not %s/%s: %w", m.Device, attrs["pool"], attrs["name"], attrs["image_id"], m.Pool, m.Image, ErrStale)
	}
	return nil
}

// Unmap implements Mapper: it removes every device that maps m's image
// (m's own device only if it still does).
func (k Krbd) Unmap(ctx context.Context, m Mapping) error {
	ids, err := k.find(m)
	if err != nil {
		return err
	}
	force := slices.Contains(strings.Split(m.UnmapOptions, ","), "force")
	for _, id := range ids {
		if err := checkUnused(filepath.Join(k.DevRoot, "rbd"+id)); err != nil && !force {
			return err
		}
	}
	for _, id := range ids {
		req := id
		if force {
			req += " force"
		}
		if err := os.WriteFile(filepath.Join(k.SysRoot, "bus/rbd/remove_single_major"), []byte(req+"\n"), 0); err != nil {
			if _, found, _ := k.holds(id); !found {
				continue // gone in the meantime
			}
			return fmt.Errorf("krbd unmap %s: %w", filepath.Join(k.DevRoot, "rbd"+id), err)
		}
	}
	return nil
}
