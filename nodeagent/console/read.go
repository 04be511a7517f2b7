package console

import (
	"context"
	"errors"
	"io"
	"os"
	"time"
)

// Options say what Copy writes.
type Options struct {
	// Tail, when positive, starts that many bytes before the end of the
	// log; 0 writes all of it.
	Tail int64
	// Follow keeps writing what is appended, across rotations, until Done
	// closes (what was appended by then is still written) or ctx ends.
	Follow bool
	Done   <-chan struct{}
	// Poll is how often a followed log is checked for new bytes (0: 200
	// ms). Polling, not inotify: the writer may be another process (QEMU
	// writes qemu.log) and a log is followed by an admin, not a machine.
	Poll time.Duration
}

// Copy writes the log at path to w: Prev(path), then path, either of
// which may be missing; a plain file (no Prev) works the same way. It
// returns w's error, ctx's when it ended a follow, or nil.
func Copy(ctx context.Context, path string, opt Options, w io.Writer) error {
	cur, prev := openPair(path)
	if prev != nil {
		defer prev.Close()
	}
	f := &follower{path: path, w: w, buf: make([]byte, 32<<10), cur: cur}
	defer f.close()
	var prevSize, curSize int64
	if prev != nil {
		prevSize = size(prev)
	}
	if cur != nil {
		curSize = size(cur)
	}
	var prevOff int64
	if opt.Tail > 0 {
		fromCur := min(curSize, opt.Tail)
		f.off = curSize - fromCur
		prevOff = prevSize - min(prevSize, opt.Tail-fromCur)
	}
	if prev != nil {
		if err := f.copyRange(prev, prevOff, prevSize); err != nil {
			return err
		}
	}
	if err := f.drain(); err != nil || !opt.Follow {
		return err
	}
	poll := opt.Poll
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		last := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-opt.Done:
			last = true
		case <-t.C:
		}
		if err := f.drain(); err != nil {
			return err
		}
		if f.rotated() {
			// The writer moved on: what it wrote to the old file
			// before the rename is read first.
			if err := f.drain(); err != nil {
				return err
			}
			f.close()
			f.cur, f.off = openOptional(path), 0
			if err := f.drain(); err != nil {
				return err
			}
		}
		if last {
			return nil
		}
	}
}

// follower reads the current file of a log from an offset.
type follower struct {
	path string
	w    io.Writer
	buf  []byte
	cur  *os.File // nil while the file does not exist
	off  int64
}

func (f *follower) close() {
	if f.cur != nil {
		f.cur.Close()
		f.cur = nil
	}
}

// drain writes the current file from the offset to its end. A file cut
// shorter than the offset (truncated in place, as QEMU's log is when it
// starts again) is read from its start.
func (f *follower) drain() error {
	if f.cur == nil {
		if f.cur = openOptional(f.path); f.cur == nil {
			return nil
		}
		f.off = 0
	}
	if size(f.cur) < f.off {
		f.off = 0
	}
	return f.copyRange(f.cur, f.off, -1)
}

// copyRange writes file's bytes from off to end (-1: to EOF) and, for the
// current file, advances the offset.
func (f *follower) copyRange(file *os.File, off, end int64) error {
	for end < 0 || off < end {
		b := f.buf
		if end >= 0 {
			b = b[:min(int64(len(b)), end-off)]
		}
		n, err := file.ReadAt(b, off)
		if n > 0 {
			if _, werr := f.w.Write(b[:n]); werr != nil {
				return werr
			}
			off += int64(n)
			if file == f.cur {
				f.off = off
			}
		}
		if errors.Is(err, io.EOF) || n == 0 {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// rotated says whether the path now names another file than the one
// being read (or names one while none was).
func (f *follower) rotated() bool {
	st, err := os.Stat(f.path)
	if err != nil {
		return false // gone for now: keep reading the open file
	}
	if f.cur == nil {
		return true
	}
	cst, err := f.cur.Stat()
	return err == nil && !os.SameFile(st, cst)
}

// openPair opens the current and the previous file of a log, either nil
// when missing. A rotation between the two opens would make them the
// same file (and skip the one in between): then it tries again.
func openPair(path string) (cur, prev *os.File) {
	for range 5 {
		cur, prev = openOptional(path), openOptional(Prev(path))
		if cur == nil || prev == nil || !sameFile(cur, prev) {
			return cur, prev
		}
		cur.Close()
		prev.Close()
	}
	return openOptional(path), nil
}

func openOptional(path string) *os.File {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	return f
}

func sameFile(a, b *os.File) bool {
	as, err1 := a.Stat()
	bs, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(as, bs)
}

func size(f *os.File) int64 {
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	return st.Size()
}
