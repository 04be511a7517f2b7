package cgroup

import (
	"errors"
	"io"
	"io/fs"
	"sync"

	"golang.org/x/sys/unix"
)

// Kernel files are read and written with plain system calls, not os.File:
// os registers every file it opens with Go's network poller, and cgroup
// files are pollable, so each read cost five more system calls (fcntl
// twice, epoll_ctl twice, fstat) and woke the poller's thread. A stats
// call reads ten of them.

// readKernelFile reads a whole kernel (or test tree) file.
func readKernelFile(file string) ([]byte, error) {
	fd, err := openKernelFile(file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	b, err := preadAll(fd, nil)
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: file, Err: err}
	}
	return b, nil
}

// writeKernelFile writes a kernel file in one write(2), as the kernel wants. It
// may create the file: only in a test's tree, where the kernel does not
// fill the directories.
func writeKernelFile(file, value string) error {
	fd, err := openKernelFile(file, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	var n int
	for {
		n, err = unix.Write(fd, []byte(value))
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	cerr := unix.Close(fd)
	switch {
	case err != nil:
		return &fs.PathError{Op: "write", Path: file, Err: err}
	case n != len(value):
		return &fs.PathError{Op: "write", Path: file, Err: io.ErrShortWrite}
	case cerr != nil:
		return &fs.PathError{Op: "close", Path: file, Err: cerr}
	}
	return nil
}

func openKernelFile(file string, flags int, perm uint32) (int, error) {
	for {
		fd, err := unix.Open(file, flags, perm)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, &fs.PathError{Op: "open", Path: file, Err: err}
		}
		return fd, nil
	}
}

// openFiles keeps a group's accounting files open: reading one again is
// a pread from offset 0 (the kernel makes the content anew), 5 µs, where
// a path walk, open and close cost 30-45 µs. A file that fails (the group
// went, or was made again) is opened afresh once.
type openFiles struct {
	mu     sync.Mutex
	fds    map[fileKey]int
	buf    []byte // the reads' scratch
	closed bool
}

// fileKey names a group's file: its controller (v1) and name.
type fileKey struct{ dir, name string }

// maxOpenFiles bounds what one group keeps open (its stats read 10).
const maxOpenFiles = 16

func newOpenFiles() *openFiles { return &openFiles{fds: map[fileKey]int{}} }

// read reads file k (at path()) whole.
func (o *openFiles) read(k fileKey, path func() string) (string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if fd, ok := o.fds[k]; ok {
		var err error
		if o.buf, err = preadAll(fd, o.buf); err == nil {
			return string(o.buf), nil
		}
		unix.Close(fd)
		delete(o.fds, k)
	}
	file := path()
	fd, err := openKernelFile(file, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	o.buf, err = preadAll(fd, o.buf)
	if err != nil || o.closed || len(o.fds) >= maxOpenFiles {
		unix.Close(fd)
	} else {
		o.fds[k] = fd
	}
	if err != nil {
		return "", &fs.PathError{Op: "read", Path: file, Err: err}
	}
	return string(o.buf), nil
}

// close closes the files; later reads open and close each time.
func (o *openFiles) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, fd := range o.fds {
		unix.Close(fd)
		delete(o.fds, k)
	}
	o.closed = true
}

// preadAll reads fd whole from offset 0 into buf's storage.
func preadAll(fd int, buf []byte) ([]byte, error) {
	buf = buf[:0]
	if cap(buf) == 0 {
		buf = make([]byte, 0, 512)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Pread(fd, buf[len(buf):cap(buf)], int64(len(buf)))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return buf, err
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}
