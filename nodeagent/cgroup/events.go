package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

const (
	// eventBuffer is how many OOM events wait for a slow reader; more
	// are dropped (they coalesce: the reader learns that kills happened).
	eventBuffer = 16
	// recheckEvery is how often a watch looks for its group gone (and
	// at the counters) when the kernel says nothing: a v2 group's
	// removal wakes no inotify watch.
	recheckEvery = time.Second
)

// wake is what a watch learns each time it wakes: how many events to
// send, and whether the group is gone (the watch ends).
type wake func(data []byte) (events uint64, gone bool)

// watch reads f, a non-blocking eventfd or inotify descriptor, in a
// goroutine until ctx ends or check reports the group gone, and sends the
// events check counts on the returned channel without ever blocking on
// it; then it closes f and the channel. check gets what f gave, or nil
// when recheckEvery passed without a word. watch takes f over, closing it
// when it fails.
func watch(ctx context.Context, f *os.File, check wake) (<-chan struct{}, error) {
	// Deadlines work on what the runtime's poller holds only.
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("poll %s: %w", f.Name(), err)
	}
	out := make(chan struct{}, eventBuffer)
	// Closing f wakes the read below.
	stop := context.AfterFunc(ctx, func() { _ = f.Close() })
	go func() {
		defer close(out)
		defer stop()
		defer f.Close()
		buf := make([]byte, 4096)
		for {
			if err := f.SetReadDeadline(time.Now().Add(recheckEvery)); err != nil {
				return
			}
			n, err := f.Read(buf)
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return // closed: ctx ended
			}
			data := buf[:n]
			if err != nil {
				data = nil
			}
			events, gone := check(data)
			// More than the buffer holds would be dropped anyway.
			for range min(events, eventBuffer) {
				select {
				case out <- struct{}{}:
				default:
				}
			}
			if gone {
				return
			}
		}
	}()
	return out, nil
}
