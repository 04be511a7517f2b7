// Package console keeps a sandbox's console output on disk in a log of
// bounded size, and reads it back for admins (whole, its tail, or
// followed as it grows).
//
// A Log is two files: NAME holds the newest bytes and NAME.1 the ones
// before them. Each holds at most the Log's file size: when NAME is full
// it is renamed to NAME.1 (dropping the older NAME.1) and a new NAME is
// started, so the log never takes more than twice the file size on disk,
// whatever the guest writes. This is the rotation the kubelet applies to
// container logs, done at write time instead of by a periodic job, so that
// a guest writing flat out cannot get ahead of it.
//
// Files are opened without following symbolic links: the directory may be
// a confined QEMU's chroot, and the writer is root.
//
// The package knows nothing of sandboxes or gRPC.
package console

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
)

// DefaultFileSize is the size of each of a Log's two files: a sandbox's
// console takes at most 2 MiB of disk.
const DefaultFileSize = 1 << 20

// Prev returns the name of the file that holds the bytes before path's.
func Prev(path string) string { return path + ".1" }

// Log is a size-capped log on disk; see the package comment. Its methods
// may be called from several goroutines.
type Log struct {
	path string
	max  int64

	mu      sync.Mutex
	f       *os.File // nil after a failed rotation: the next write retries
	size    int64    // bytes in f
	dropped int64    // bytes lost to write errors (a full disk)
	closed  bool
}

// Open opens the log at path for appending, creating it if needed, with
// files of at most fileSize bytes (0: DefaultFileSize). Files left larger
// than that (by an older agent's unbounded log) are cut to their last
// fileSize bytes first.
func Open(path string, fileSize int64) (*Log, error) {
	if fileSize <= 0 {
		fileSize = DefaultFileSize
	}
	for _, p := range []string{Prev(path), path} {
		if err := trimHead(p, fileSize); err != nil {
			return nil, fmt.Errorf("open log %s: %w", path, err)
		}
	}
	l := &Log{path: path, max: fileSize}
	if err := l.openCurrent(); err != nil {
		return nil, fmt.Errorf("open log %s: %w", path, err)
	}
	return l, nil
}

func (l *Log) openCurrent() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	l.f, l.size = f, st.Size()
	return nil
}

// Write appends p, rotating as the current file fills. It never fails
// for a lack of space: what cannot be written (a full disk, a failed
// rotation) is dropped and counted (Dropped), so that the console's
// reader never stops and QEMU never waits for it. It fails only once the
// log is closed.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, os.ErrClosed
	}
	n := len(p)
	for len(p) > 0 {
		if l.f == nil || l.size >= l.max {
			if err := l.rotate(); err != nil {
				l.dropped += int64(len(p))
				return n, nil
			}
		}
		chunk := p[:min(int64(len(p)), l.max-l.size)]
		w, err := l.f.Write(chunk)
		l.size += int64(w)
		if err != nil {
			// The rest of this write would fail the same way: drop it.
			l.dropped += int64(len(p) - w)
			return n, nil
		}
		p = p[w:]
	}
	return n, nil
}

// rotate makes the current file the previous one and starts a new one.
func (l *Log) rotate() error {
	if l.f != nil {
		l.f.Close()
		l.f = nil
	}
	// Also after a failed rotation: the full file is still there.
	if err := os.Rename(l.path, Prev(l.path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	l.f, l.size = f, 0
	return nil
}

// ReadFrom copies r into the log until r ends, and returns how many bytes
// it read. Write errors never stop it (see Write).
func (l *Log) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, 32<<10)
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			total += int64(n)
			if _, werr := l.Write(buf[:n]); werr != nil {
				return total, werr
			}
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Dropped returns how many bytes were lost to write errors.
func (l *Log) Dropped() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}

// Close closes the current file; later writes fail.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if l.f == nil {
		return nil
	}
	return l.f.Close()
}

// trimHead cuts the file at path down to its last max bytes (written to
// a temporary file renamed over it); a missing file is left missing.
func trimHead(path string, max int64) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() <= max {
		return nil
	}
	tmp := path + ".trim"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, io.NewSectionReader(f, st.Size()-max, max))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("trim %s: %w", path, err)
	}
	return nil
}
