package mapper

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Krbd maps through the kernel RBD client's sysfs interface, as `rbd map`
// does, without the CLI.
type Krbd struct {
	SysRoot string // "/sys"
	DevRoot string // "/dev"
}

var _ Mapper = Krbd{}

// Name implements Mapper.
func (Krbd) Name() string { return KRBD }

// Map implements Mapper.
func (k Krbd) Map(ctx context.Context, t Target, _ string) (Mapping, error) {
	if err := t.Validate(); err != nil {
		return Mapping{}, err
	}
	if id, ok, err := k.find(t.Pool, t.Image); err != nil {
		return Mapping{}, err
	} else if ok {
		return Mapping{Mapper: KRBD, KrbdID: id, Device: filepath.Join(k.DevRoot, "rbd"+id)}, nil
	}
	opts := "name=" + t.User + ",secret=" + t.Key
	if t.ReadOnly {
		opts += ",ro"
	}
	line := fmt.Sprintf("%s %s %s %s -", strings.Join(t.Monitors, ","), opts, t.Pool, t.Image)
	if err := os.WriteFile(filepath.Join(k.SysRoot, "bus/rbd/add_single_major"), []byte(line), 0); err != nil {
		// The line holds the key: never put it in an error.
		return Mapping{}, fmt.Errorf("krbd map %s/%s: %w", t.Pool, t.Image, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		id, ok, err := k.find(t.Pool, t.Image)
		if err != nil {
			return Mapping{}, err
		}
		if ok {
			return Mapping{Mapper: KRBD, KrbdID: id, Device: filepath.Join(k.DevRoot, "rbd"+id)}, nil
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

// find returns the device ID of pool/image if it is mapped.
func (k Krbd) find(pool, image string) (string, bool, error) {
	dir := filepath.Join(k.SysRoot, "bus/rbd/devices")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("list krbd devices: %w", err)
	}
	for _, e := range entries {
		p, _ := os.ReadFile(filepath.Join(dir, e.Name(), "pool"))
		n, _ := os.ReadFile(filepath.Join(dir, e.Name(), "name"))
		if strings.TrimSpace(string(p)) == pool && strings.TrimSpace(string(n)) == image {
			return e.Name(), true, nil
		}
	}
	return "", false, nil
}

// Unmap implements Mapper.
func (k Krbd) Unmap(ctx context.Context, m Mapping) error {
	if m.KrbdID == "" {
		return nil
	}
	if _, err := os.Stat(filepath.Join(k.SysRoot, "bus/rbd/devices", m.KrbdID)); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := os.WriteFile(filepath.Join(k.SysRoot, "bus/rbd/remove_single_major"), []byte(m.KrbdID), 0); err != nil {
		return fmt.Errorf("krbd unmap %s: %w", m.Device, err)
	}
	return nil
}
