package sandbox

// A sandbox's logs: the guest's serial console, which the agent copies
// from QEMU's console FIFO into a rotated log (at most 2 MiB on disk,
// whatever the guest writes), and QEMU's own output. Both stay after the
// sandbox ends, until it is deleted.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/nodeagent/console"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// LogSource names one of a sandbox's logs.
type LogSource string

// Log sources.
const (
	// LogConsole is the guest's serial console: the kernel's messages,
	// the guest agent's log, whatever the guest writes to /dev/ttyS0.
	LogConsole LogSource = "console"
	// LogQEMU is what QEMU printed itself (qemu.log).
	LogQEMU LogSource = "qemu"
)

// ConsoleFileSize is the size of each of the two files of a sandbox's
// console log (console.log and console.log.1): the console takes at most
// twice that on disk.
const ConsoleFileSize = console.DefaultFileSize

// LogRequest says which log to read and how much of it.
type LogRequest struct {
	// Source is the log; empty means LogConsole.
	Source LogSource
	// TailBytes, when positive, starts that many bytes before the end;
	// 0 means all that is kept.
	TailBytes int64
	// Follow keeps writing what the log gains until the sandbox's QEMU is
	// gone (at once for a sandbox that does not run) or ctx ends.
	Follow bool
}

// Validate checks r.
func (r LogRequest) Validate() error {
	if _, err := r.file(); err != nil {
		return err
	}
	if r.TailBytes < 0 {
		return fmt.Errorf("negative tail %d: %w", r.TailBytes, errdefs.ErrInvalidArgument)
	}
	return nil
}

// file is the name of the log's file in the sandbox's dir.
func (r LogRequest) file() (string, error) {
	switch r.Source {
	case "", LogConsole:
		return qemu.ConsoleLog, nil
	case LogQEMU:
		return qemu.LogFile, nil
	}
	return "", fmt.Errorf("unknown log source %q (want console or qemu): %w", r.Source, errdefs.ErrInvalidArgument)
}

// Logs writes a sandbox's log to w, as LogRequest says.
func (m *Manager) Logs(ctx context.Context, id string, req LogRequest, w io.Writer) error {
	if err := req.Validate(); err != nil {
		return fmt.Errorf("logs of sandbox %q: %w", id, err)
	}
	file, _ := req.file()
	b, err := m.lookup(id)
	if err != nil {
		return err
	}
	opt := console.Options{Tail: req.TailBytes}
	if req.Follow {
		m.mu.Lock()
		r := b.cur
		m.mu.Unlock()
		if r != nil {
			opt.Follow, opt.Done = true, r.ended
		}
	}
	if err := console.Copy(ctx, filepath.Join(b.dir, file), opt, w); err != nil {
		return fmt.Errorf("logs of sandbox %q: %w", id, err)
	}
	return nil
}

// isLogFile says whether a file of a sandbox's dir is one of its logs,
// which stay after the run for a post-mortem (they are bounded).
func isLogFile(name string) bool {
	switch name {
	case qemu.ConsoleLog, console.Prev(qemu.ConsoleLog), qemu.LogFile:
		return true
	}
	return false
}

// stepConsole opens the guest's serial console and copies it into the
// sandbox's console log. For a new VM it makes the FIFO and hands its
// write end to QEMU (so it runs before the "qemu" step); a re-adopted
// VM's FIFO is opened again, its console taken up where the last agent
// left it (QEMU dropped what the guest wrote in between). It never fails
// the boot: a guest without a console log still runs.
func (m *Manager) stepConsole(ctx context.Context, bt *booting) error {
	id := bt.spec.ID
	fifo := filepath.Join(bt.b.dir, qemu.ConsoleFIFO)
	var w *os.File
	if !bt.adopted {
		var err error
		if w, err = makeConsoleFIFO(fifo); err != nil {
			m.log.Warn("sandbox runs without a console log", "sandbox", id, "error", err)
			return nil
		}
	}
	fd, err := unix.Open(fifo, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		// A re-adopted QEMU an older agent started has no FIFO.
		if w != nil {
			w.Close()
		}
		m.log.Warn("sandbox runs without a console log", "sandbox", id, "error", fmt.Errorf("console: %w", err))
		return nil
	}
	if w != nil {
		// QEMU's descriptor number: ExtraFiles start at 3.
		bt.mach.Console = &qemu.Console{FD: 3 + len(bt.files)}
		bt.files = append(bt.files, w) // closed once the boot's steps are done
	}
	l, err := console.Open(filepath.Join(bt.b.dir, qemu.ConsoleLog), ConsoleFileSize)
	if err != nil {
		unix.Close(fd)
		m.log.Warn("sandbox's console is dropped", "sandbox", id, "error", err)
		return nil
	}
	stop := make(stopCloser)
	bt.r.mu.Lock()
	bt.r.console = stop
	bt.r.mu.Unlock()
	go func() {
		copyConsole(fd, l, stop)
		unix.Close(fd)
		l.Close()
		if n := l.Dropped(); n > 0 {
			m.log.Warn("console output dropped: the log could not be written", "sandbox", id, "bytes", n)
		}
	}()
	return nil
}

// makeConsoleFIFO makes the console FIFO afresh and returns its write end,
// opened non-blocking (the agent's read end must be open first: it is,
// as the caller opens it before QEMU starts writing).
func makeConsoleFIFO(path string) (*os.File, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("console: %w", err)
	}
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return nil, fmt.Errorf("console: mkfifo %s: %w", path, err)
	}
	// A writer may open a FIFO without blocking only once a reader has
	// it open; the read end opened here is dropped when the caller's
	// opens.
	r, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	defer unix.Close(r)
	w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	return w, nil
}

// consolePeriod is how often the console FIFO is read.
const consolePeriod = 50 * time.Millisecond

// copyConsole copies what QEMU writes to the FIFO (fd, non-blocking) into
// the log, until QEMU closes its end (it exited) or stop closes. It reads
// every consolePeriod, never waits in the kernel and never registers the
// FIFO with Go's poller: QEMU writes a byte at a time, and a reader woken
// for each would cost the agent a good part of a core for a guest writing
// its console flat out. Between reads the FIFO holds 64 KiB (1.3 MB/s);
// a guest writing faster makes its own serial port wait. The log drops
// what it cannot write, so this never stops reading.
func copyConsole(fd int, l *console.Log, stop <-chan struct{}) {
	buf := make([]byte, 64<<10)
	t := time.NewTicker(consolePeriod)
	defer t.Stop()
	for {
		for {
			n, err := unix.Read(fd, buf)
			if n > 0 {
				_, _ = l.Write(buf[:n])
				continue
			}
			if err == unix.EINTR {
				continue
			}
			if err == nil || err != unix.EAGAIN {
				return // n == 0: no writer left, QEMU is gone
			}
			break // empty for now
		}
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// stopCloser is a channel that Close closes (once).
type stopCloser chan struct{}

func (s stopCloser) Close() error {
	select {
	case <-s:
	default:
		close(s)
	}
	return nil
}
