// Package mounts answers "what is mounted here, and does it still answer"
// without hanging on a dead FUSE mount: it reads the mount table
// (/proc/self/mountinfo) instead of comparing stat results, probes a
// mount with a bounded stat, and unmounts lazily when the kernel says the
// mount is busy. A FUSE mount whose daemon died answers stat with
// ENOTCONN (or EIO, ESTALE): to this package it is mounted but broken,
// where a stat-based check would call it "not mounted" and leave it
// wedged. It knows nothing of CSI or gRPC.
package mounts

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is one line of the mount table.
type Mount struct {
	Point  string // where it is mounted
	Root   string // the part of its file system it shows ("/" for all)
	FsType string // "ext4", "fuse.rbd-fuse", "cgroup", ...
	Source string
	Major  uint32 // the device of its file system (0 for virtual ones)
	Minor  uint32
}

// Dev is the device number stat reports for files on m.
func (m Mount) Dev() uint64 { return unix.Mkdev(m.Major, m.Minor) }

// Table is the mount table of this process's mount namespace.
const Table = "/proc/self/mountinfo"

// List reads the mount table, in mount order (a later mount at the same
// point covers an earlier one).
func List() ([]Mount, error) {
	b, err := os.ReadFile(Table)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return Parse(b)
}

// Parse parses mountinfo text (proc(5)).
func Parse(b []byte) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		m, err := parseLine(line)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return out, nil
}

// parseLine parses "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3
// /dev/root rw,errors=continue".
func parseLine(line string) (Mount, error) {
	bad := func(why string) (Mount, error) {
		return Mount{}, fmt.Errorf("parse mount table line %q: %s", line, why)
	}
	f := strings.Fields(line)
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 7 || sep < 0 || len(f) < sep+3 {
		return bad("too few fields")
	}
	if f[sep+1] == "-" {
		return bad("no file system type")
	}
	maj, min, ok := strings.Cut(f[2], ":")
	if !ok {
		return bad("no major:minor")
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return bad("bad major:minor")
	}
	return Mount{
		Root: unescape(f[3]), Point: unescape(f[4]),
		FsType: f[sep+1], Source: unescape(f[sep+2]),
		Major: uint32(ma), Minor: uint32(mi),
	}, nil
}

// unescape undoes the kernel's octal escapes of space, tab, newline and
// backslash (\040 and so on).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// At returns the mount at path that covers the others there, if any.
func At(path string) (Mount, bool, error) {
	all, err := List()
	if err != nil {
		return Mount{}, false, err
	}
	m, ok := at(all, path)
	return m, ok, nil
}

func at(all []Mount, path string) (Mount, bool) {
	path = filepath.Clean(path)
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Point == path {
			return all[i], true
		}
	}
	return Mount{}, false
}

// Under returns the mount points at or below dir, deepest first (the order
// to unmount them in).
func Under(dir string) ([]string, error) {
	all, err := List()
	if err != nil {
		return nil, err
	}
	dir = filepath.Clean(dir)
	var out []string
	seen := map[string]bool{}
	for i := len(all) - 1; i >= 0; i-- {
		p := all[i].Point
		if (p == dir || strings.HasPrefix(p, dir+"/")) && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	// Deepest first: longer paths before their parents.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && len(out[j]) > len(out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, nil
}

// ErrHung means a mount did not answer statfs in time (a FUSE daemon that
// is alive but stuck).
var ErrHung = errors.New("mount does not answer")

// DefaultProbeTimeout bounds Probe when the caller gives no timeout.
const DefaultProbeTimeout = 2 * time.Second

// Probe asks the file system at path for its statistics (statfs: FUSE
// passes it to its daemon every time, where a stat may be answered from
// cached attributes for a second after the daemon died), giving up after
// timeout: nil when it answers, the errno when it fails (ENOTCONN, EIO,
// ESTALE: see IsBroken), ErrHung when it does not answer. A call stuck in
// a hung FUSE mount keeps its goroutine until the kernel lets go; the
// caller is not held.
func Probe(path string, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	done := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		done <- unix.Statfs(path, &st)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("statfs %s: %w", path, err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("statfs %s: %w after %v", path, ErrHung, timeout)
	}
}

// IsBroken reports whether err says a mount is there but its file system
// no longer answers: a FUSE daemon that died (ENOTCONN, ECONNABORTED), a
// device that fails (EIO), a stale handle (ESTALE), or a hung daemon.
func IsBroken(err error) bool {
	return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) || errors.Is(err, unix.EIO) ||
		errors.Is(err, unix.ESTALE) || errors.Is(err, ErrHung)
}

// Unmount removes every mount stacked at path; a mount the kernel calls
// busy (a broken FUSE mount a loop device still holds, say) is detached
// lazily, to go once its last user lets go. Nothing mounted is not an
// error; the directory stays.
func Unmount(path string) error {
	path = filepath.Clean(path)
	for i := 0; i < 16; i++ {
		_, ok, err := At(path)
		if err != nil || !ok {
			return err
		}
		err = unix.Unmount(path, 0)
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(path, unix.MNT_DETACH)
		}
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 16 unmounts", path)
}

// Cleanup unmounts path and removes the directory (or file, for a block
// volume's target) left behind. A missing path is not an error.
func Cleanup(path string) error {
	if err := Unmount(path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}
