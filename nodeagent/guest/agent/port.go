//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// errHostGone means the host side of the port closed during a write.
var errHostGone = errors.New("host disconnected")

// port is the guest end of a virtio-serial port, opened non-blocking.
//
// What the virtio console driver does, and why this code looks the way it
// does: while no host is connected, read returns 0 (EOF) once the data is
// drained, write blocks (EAGAIN here), and poll reports POLLHUP (with
// POLLIN) at once, so polling for the host to come back would spin. The
// driver sends SIGIO when the host connects or disconnects, so waitHost
// sleeps on SIGIO, with a timeout in case one is missed.
type port struct {
	fd   int
	path string
	log  *slog.Logger
	wmu  sync.Mutex // serialises frames; shared by every session on the port

	sigio chan os.Signal
}

// openPort finds the virtio-serial port called name and opens it. Ports
// show up when the host's control messages arrive, possibly after /init
// started, so it waits for the port, logging once if that takes long.
func openPort(log *slog.Logger, name string) (*port, error) {
	start := time.Now()
	warned := false
	for {
		path, err := findPort("/sys/class/virtio-ports", name)
		if err == nil {
			fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
			if err == nil {
				p := &port{fd: fd, path: path, log: log, sigio: make(chan os.Signal, 1)}
				signal.Notify(p.sigio, unix.SIGIO)
				return p, nil
			}
			// ENXIO: the node exists before the driver is ready for it.
			if err != unix.ENXIO && err != unix.ENOENT {
				return nil, fmt.Errorf("open %s: %w", path, err)
			}
		}
		if !warned && time.Since(start) > 5*time.Second {
			log.Warn("still waiting for the virtio-serial port", "name", name, "error", err)
			warned = true
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// findPort returns the device of the port whose name attribute (under
// sysDir/*/name) is name.
func findPort(sysDir, name string) (string, error) {
	names, _ := filepath.Glob(filepath.Join(sysDir, "*", "name"))
	for _, f := range names {
		b, err := os.ReadFile(f)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join("/dev", filepath.Base(filepath.Dir(f))), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q", name)
}

// poll waits up to timeout (-1: forever) for events on the port and
// returns what it reports.
func (p *port) poll(events int16, timeout time.Duration) (int16, error) {
	ms := -1
	if timeout >= 0 {
		ms = int(timeout / time.Millisecond)
	}
	for {
		fds := []unix.PollFd{{Fd: int32(p.fd), Events: events}}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("poll %s: %w", p.path, err)
		}
		if n == 0 {
			return 0, nil
		}
		return fds[0].Revents, nil
	}
}

// Read reads from the port; it returns io.EOF when the host side is
// closed and nothing is left to read.
func (p *port) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(p.fd, b)
		switch {
		case err == nil && n > 0:
			return n, nil
		case err == nil:
			return 0, io.EOF
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			if _, err := p.poll(unix.POLLIN, -1); err != nil {
				return 0, err
			}
		default:
			return 0, fmt.Errorf("read %s: %w", p.path, err)
		}
	}
}

// Write writes all of b. It fails with errHostGone when the host is not
// connected, rather than block until some host connects: the rest of a
// frame must not reach the next host. Callers hold wmu.
func (p *port) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n, err := unix.Write(p.fd, b[done:])
		switch {
		case err == nil:
			done += n
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			// Connected but the queue is full (POLLOUT comes back), or
			// not connected (POLLHUP without POLLOUT).
			rev, err := p.poll(unix.POLLOUT, time.Second)
			if err != nil {
				return done, err
			}
			if rev&unix.POLLOUT == 0 && rev&unix.POLLHUP != 0 {
				return done, errHostGone
			}
		default:
			return done, fmt.Errorf("write %s: %w", p.path, err)
		}
	}
	return done, nil
}

// connected says whether a host has the port open.
func (p *port) connected() bool {
	rev, err := p.poll(unix.POLLOUT, 0)
	return err == nil && rev&unix.POLLOUT != 0
}

// waitHost returns once a host has the port open.
func (p *port) waitHost() {
	if p.connected() {
		return
	}
	if err := p.setAsync(true); err != nil {
		p.log.Warn("no SIGIO from the port; polling it", "error", err)
	}
	defer func() { _ = p.setAsync(false) }()
	for !p.connected() {
		select {
		case <-p.sigio:
		case <-time.After(time.Second):
		}
	}
}

// setAsync turns SIGIO delivery for the port on or off.
func (p *port) setAsync(on bool) error {
	if on {
		if _, err := unix.FcntlInt(uintptr(p.fd), unix.F_SETOWN, os.Getpid()); err != nil {
			return err
		}
	}
	fl, err := unix.FcntlInt(uintptr(p.fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if on {
		fl |= unix.O_ASYNC
	} else {
		fl &^= unix.O_ASYNC
	}
	_, err = unix.FcntlInt(uintptr(p.fd), unix.F_SETFL, fl)
	return err
}
