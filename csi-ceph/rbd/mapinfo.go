package rbd

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ceph/go-ceph/rados"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// What the node asks a cluster before it maps an image: the image's ID,
// which names it for as long as it exists (a name can be reused after a
// delete, an ID cannot), and the monitors' addresses as the cluster runs
// them, for the kernel client.

// ImageID returns the ID of image in pool (ErrNotFound when there is no
// such image). It reads the image's rbd_id object: one small OSD read,
// where opening the image would cost header reads and a watch.
func (c *Conn) ImageID(ctx context.Context, pool, image string) (string, error) {
	io, err := c.ioctx(pool)
	if err != nil {
		return "", err
	}
	defer io.Destroy()
	buf := make([]byte, 256)
	n, err := io.Read("rbd_id."+image, buf, 0)
	if errors.Is(err, rados.ErrNotFound) {
		return "", fmt.Errorf("image %s/%s: %w", pool, image, errdefs.ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("read ID of %s/%s: %w", pool, image, err)
	}
	id, err := decodeImageID(buf[:n])
	if err != nil {
		return "", fmt.Errorf("ID of %s/%s: %w", pool, image, err)
	}
	return id, nil
}

// decodeImageID decodes the content of an rbd_id object: a Ceph-encoded
// string (a little-endian 32-bit length, then the bytes).
func decodeImageID(b []byte) (string, error) {
	if len(b) < 4 {
		return "", errors.New("rbd_id object too short")
	}
	n := binary.LittleEndian.Uint32(b)
	if n == 0 || uint64(n) != uint64(len(b)-4) {
		return "", fmt.Errorf("rbd_id object holds %d bytes for an ID of %d", len(b)-4, n)
	}
	for _, r := range b[4:] {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return "", fmt.Errorf("rbd_id object holds a non-hex ID %q", b[4:])
		}
	}
	return string(b[4:]), nil
}

// MonAddr is one monitor's addresses: msgr2 and legacy msgr1 ("ip:port";
// either may be empty when the monitor does not run that protocol).
type MonAddr struct {
	V2 string
	V1 string
}

// MonitorAddrs returns the monitors' addresses from the cluster's monitor
// map ("mon dump").
func (c *Conn) MonitorAddrs(ctx context.Context) ([]MonAddr, error) {
	if c.closed.Load() {
		return nil, errClosed
	}
	out, _, err := c.rados.MonCommand([]byte(`{"prefix":"mon dump","format":"json"}`))
	if err != nil {
		return nil, fmt.Errorf("mon dump: %w", err)
	}
	return parseMonDump(out)
}

func parseMonDump(b []byte) ([]MonAddr, error) {
	var dump struct {
		Mons []struct {
			PublicAddrs struct {
				Addrvec []struct {
					Type string `json:"type"`
					Addr string `json:"addr"`
				} `json:"addrvec"`
			} `json:"public_addrs"`
		} `json:"mons"`
	}
	if err := json.Unmarshal(b, &dump); err != nil {
		return nil, fmt.Errorf("decode mon dump: %w", err)
	}
	var out []MonAddr
	for _, m := range dump.Mons {
		var a MonAddr
		for _, v := range m.PublicAddrs.Addrvec {
			switch v.Type {
			case "v2":
				a.V2 = v.Addr
			case "v1":
				a.V1 = v.Addr
			}
		}
		if a != (MonAddr{}) {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("mon dump lists no monitor address")
	}
	return out, nil
}
