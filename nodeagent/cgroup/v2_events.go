package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// OOMEvents watches memory.events with inotify (the kernel notifies each
// change of the file) and sends one event per growth of its oom_kill
// count. A group's removal notifies nothing: the watch looks for its
// directory every recheckEvery.
func (g *v2Group) OOMEvents(ctx context.Context) (<-chan struct{}, error) {
	ch, err := g.oomEvents(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch cgroup %s for OOM kills: %w", g.path, err)
	}
	return ch, nil
}

func (g *v2Group) oomEvents(ctx context.Context) (<-chan struct{}, error) {
	dir := g.b.dir(g.path)
	ino, err := inode(dir)
	if err != nil {
		return nil, err
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	// Non-blocking, the descriptor goes to the runtime's poller: reads
	// park no thread, and Close wakes them.
	f := os.NewFile(uintptr(fd), "memory.events inotify")
	events := g.file("memory.events")
	if _, err := unix.InotifyAddWatch(fd, events, unix.IN_MODIFY); err != nil {
		f.Close()
		if errors.Is(err, unix.ENOENT) && !gone(dir, ino) {
			return nil, unavailable("no %s: the memory controller is not enabled for the group", events)
		}
		return nil, classify(&os.PathError{Op: "inotify_add_watch", Path: events, Err: err})
	}
	// The count from which kills are new: read once the watch is on, so
	// that none falls between.
	last, err := oomKills(events)
	if err != nil {
		f.Close()
		return nil, err
	}
	return watch(ctx, f, func([]byte) (uint64, bool) {
		if gone(dir, ino) {
			return 0, true
		}
		n, err := oomKills(events)
		if err != nil || n <= last {
			// An error: the group going; the next look tells.
			return 0, false
		}
		d := n - last
		last = n
		return d, false
	})
}

// oomKills reads memory.events' oom_kill count.
func oomKills(file string) (uint64, error) {
	kv := map[string]uint64{}
	if err := readKV(file, kv); err != nil {
		return 0, err
	}
	return kv["oom_kill"], nil
}

// readKV reads a flat keyed file ("key value" lines) into kv.
func readKV(file string, kv map[string]uint64) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return classify(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(l), " ")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return fmt.Errorf("parse %s: line %q: %w", file, l, err)
		}
		kv[k] = n
	}
	return nil
}
