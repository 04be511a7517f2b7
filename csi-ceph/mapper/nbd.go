package mapper

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// NBD maps with rbd-nbd, which serves the image to the kernel's nbd
// driver from a userspace daemon.
type NBD struct {
	Bin string // "rbd-nbd"
}

var _ Mapper = NBD{}

// Name implements Mapper.
func (NBD) Name() string { return RBDNBD }

// Map implements Mapper.
func (n NBD) Map(ctx context.Context, t Target, work string) (Mapping, error) {
	if err := t.Validate(); err != nil {
		return Mapping{}, err
	}
	if err := os.MkdirAll(work, 0o700); err != nil {
		return Mapping{}, fmt.Errorf("rbd-nbd map: %w", err)
	}
	keyfile := filepath.Join(work, "key")
	if err := os.WriteFile(keyfile, []byte(t.Key), 0o600); err != nil {
		return Mapping{}, fmt.Errorf("rbd-nbd map: write key: %w", err)
	}
	defer os.Remove(keyfile)
	args := []string{"map", "--id", t.User, "--keyfile", keyfile, "-m", strings.Join(t.Monitors, ",")}
	if t.ReadOnly {
		args = append(args, "--read-only")
	}
	args = append(args, t.Pool+"/"+t.Image)
	out, err := run(ctx, n.Bin, args...)
	if err != nil {
		return Mapping{}, fmt.Errorf("rbd-nbd map %s/%s: %w", t.Pool, t.Image, err)
	}
	dev := strings.TrimSpace(out)
	if !strings.HasPrefix(dev, "/dev/nbd") {
		return Mapping{}, fmt.Errorf("rbd-nbd map %s/%s: unexpected output %q", t.Pool, t.Image, dev)
	}
	return Mapping{Mapper: RBDNBD, Device: dev}, nil
}

// Unmap implements Mapper.
func (n NBD) Unmap(ctx context.Context, m Mapping) error {
	if m.Device == "" {
		return nil
	}
	if _, err := run(ctx, n.Bin, "unmap", m.Device); err != nil {
		if strings.Contains(err.Error(), "not mapped") || strings.Contains(err.Error(), "No such") {
			return nil
		}
		return fmt.Errorf("rbd-nbd unmap %s: %w", m.Device, err)
	}
	return nil
}

// run runs a command and returns its stdout; the error carries stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, args[0], err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}
