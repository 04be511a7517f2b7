package cgroup

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containerd/cgroups/v3/cgroup1"
	"golang.org/x/sys/unix"
)

// OOMEvents registers an eventfd on memory.oom_control through
// cgroup.event_control. The kernel signals it each time the group runs
// out of memory (just before the OOM killer picks its victim), and once
// more when the group is removed: the directory gone tells that one apart.
func (g *v1Group) OOMEvents(ctx context.Context) (<-chan struct{}, error) {
	ch, err := g.oomEvents(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch cgroup %s for OOM kills: %w", g.path, err)
	}
	return ch, nil
}

func (g *v1Group) oomEvents(ctx context.Context) (<-chan struct{}, error) {
	dir := g.b.file(cgroup1.Memory, g.path, "")
	ino, err := inode(dir)
	if err != nil {
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	// Non-blocking, the descriptor goes to the runtime's poller: reads
	// park no thread, and Close wakes them.
	f := os.NewFile(uintptr(efd), "oom eventfd")
	ctl, err := os.Open(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		f.Close()
		return nil, classify(err)
	}
	// The kernel keeps its own reference to memory.oom_control.
	defer ctl.Close()
	reg := strconv.Itoa(efd) + " " + strconv.FormatUint(uint64(ctl.Fd()), 10)
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(reg), 0); err != nil {
		f.Close()
		return nil, classify(err)
	}
	return watch(ctx, f, func(data []byte) (uint64, bool) {
		if gone(dir, ino) {
			return 0, true
		}
		if len(data) < 8 {
			return 0, false
		}
		// The eventfd's counter: the OOMs since the last read.
		return binary.NativeEndian.Uint64(data), false
	})
}
