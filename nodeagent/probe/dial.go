package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// netnsSwitch serializes the moments a thread spends in a pod's namespace
// to create a socket (microseconds each), so probes never hold more than
// one OS thread between them, however many start at once.
var netnsSwitch sync.Mutex

// DialInNetns opens a TCP connection to addr ("host:port") whose socket
// lives in the network namespace at path. A socket belongs to the
// namespace it was created in, so only its creation runs on a thread
// switched into that namespace; the connect and the wait for it run on the
// netpoller like any other dial. A target that never answers (a port that
// drops SYNs) holds a goroutine and a socket until ctx ends, no OS thread.
func DialInNetns(ctx context.Context, path, addr string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, path, err)
	}
	c, err := dialInNetns(ctx, path, ap)
	if err != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, path, err)
	}
	return c, nil
}

func dialInNetns(ctx context.Context, path string, ap netip.AddrPort) (net.Conn, error) {
	var sa unix.Sockaddr
	family := unix.AF_INET
	if a := ap.Addr().Unmap(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	} else {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	}
	fd, err := socketIn(path, family)
	if err != nil {
		return nil, err
	}
	// A non-blocking fd makes a pollable os.File: its RawConn waits on the
	// netpoller and honours deadlines.
	f := os.NewFile(uintptr(fd), "probe")
	defer f.Close()
	if d, ok := ctx.Deadline(); ok {
		if err := f.SetWriteDeadline(d); err != nil {
			return nil, fmt.Errorf("set deadline: %w", err)
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Unix(1, 0)) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var connErr error
	started := false
	err = rc.Write(func(fd uintptr) bool {
		if !started {
			started = true
			connErr = unix.Connect(int(fd), sa)
			return connErr != unix.EINPROGRESS
		}
		// Writable: connected or failed. The poller may also wake us
		// early, as Go's own connect expects.
		v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			connErr = err
			return true
		}
		switch e := unix.Errno(v); e {
		case 0:
			if _, err := unix.Getpeername(int(fd)); err != nil {
				return false
			}
			connErr = nil
			return true
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		default:
			connErr = e
			return true
		}
	})
	if err != nil {
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case errors.Is(err, os.ErrDeadlineExceeded):
			err = context.DeadlineExceeded // ctx's, a moment before ctx says so
		default:
			if v, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); v != 0 {
				err = unix.Errno(v)
			}
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	if connErr != nil && !errors.Is(connErr, unix.EISCONN) {
		return nil, fmt.Errorf("connect: %w", connErr)
	}
	return net.FileConn(f) // its own copy of the fd, on the netpoller
}

// socketIn creates a non-blocking TCP socket in the network namespace at
// path.
func socketIn(path string, family int) (int, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		return -1, fmt.Errorf("open netns: %w", err)
	}
	defer n.Close()
	netnsSwitch.Lock()
	defer netnsSwitch.Unlock()
	fd := -1
	err = n.Do(func(ns.NetNS) error {
		var err error
		fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		return nil
	})
	if err != nil && fd >= 0 {
		unix.Close(fd)
	}
	return fd, err
}
