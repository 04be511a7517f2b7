package client

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// killWait is how long Exec waits for a process it killed (its context
// ended) to be reported gone.
const killWait = 5 * time.Second

// execState is one running exec as the reader goroutine fills it in.
type execState struct {
	id uint32

	mu       sync.Mutex
	out      []agentproto.Frame // stdout and stderr, in order
	exit     *agentproto.ExitStatus
	lost     bool  // the connection ended
	credit   int64 // stdin window left
	outKick  chan struct{}
	credKick chan struct{}
}

func newExecState() *execState {
	return &execState{credit: agentproto.Window, outKick: make(chan struct{}, 1), credKick: make(chan struct{}, 1)}
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// deliver takes one of the exec's frames from the reader. It never
// blocks: the guest sends at most a window of output ahead of Credit.
func (e *execState) deliver(f agentproto.Frame) {
	e.mu.Lock()
	defer e.mu.Unlock()
	switch f.Type {
	case agentproto.FrameStdout, agentproto.FrameStderr:
		if e.exit == nil {
			e.out = append(e.out, f)
		}
		kick(e.outKick)
	case agentproto.FrameExit:
		var st agentproto.ExitStatus
		if err := f.DecodeJSON(&st); err != nil {
			st = agentproto.ExitStatus{Code: -1}
		}
		e.exit = &st
		kick(e.outKick)
	case agentproto.FrameCredit:
		if n, err := f.Credit(); err == nil {
			e.credit += int64(n)
			kick(e.credKick)
		}
	}
}

func (e *execState) fail() {
	e.mu.Lock()
	e.lost = true
	e.mu.Unlock()
	kick(e.outKick)
	kick(e.credKick)
}

// take returns the output received so far, the exit status once it came
// and whether the connection is lost.
func (e *execState) take() ([]agentproto.Frame, *agentproto.ExitStatus, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := e.out
	e.out = nil
	return out, e.exit, e.lost
}

// reserve waits for stdin window and takes up to max bytes of it; 0 means
// stop.
func (e *execState) reserve(max int, stop <-chan struct{}) int {
	for {
		e.mu.Lock()
		if e.lost || e.exit != nil {
			e.mu.Unlock()
			return 0
		}
		if e.credit > 0 {
			n := int(min(e.credit, int64(max)))
			e.credit -= int64(n)
			e.mu.Unlock()
			return n
		}
		e.mu.Unlock()
		select {
		case <-e.credKick:
		case <-stop:
			return 0
		}
	}
}

func (e *execState) giveBack(n int) {
	if n > 0 {
		e.mu.Lock()
		e.credit += int64(n)
		e.mu.Unlock()
	}
}

// Exec runs spec in the guest and returns how it ended. stdin feeds the
// process (nil: it reads EOF at once); its stdout and stderr go to the
// writers (nil: dropped). When ctx ends, the guest kills the process
// group; Exec then returns ctx's error (with the exit status if the kill
// was confirmed in time). Exec does not wait for a stdin Read that is
// still blocked when the process ends.
func (c *Client) Exec(ctx context.Context, spec agentproto.ExecSpec, stdin io.Reader, stdout, stderr io.Writer) (agentproto.ExitStatus, error) {
	if err := spec.Validate(); err != nil {
		return agentproto.ExitStatus{}, fmt.Errorf("guest agent: exec: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	e := newExecState()
	id, ch, err := c.send(ctx, agentproto.MethodExec, spec, e)
	if err != nil {
		return agentproto.ExitStatus{}, fmt.Errorf("guest agent: exec: %w", err)
	}
	mayRun := true // the process may be running in the guest
	defer func() {
		c.forget(id)
		if _, exit, lost := e.take(); mayRun && exit == nil && !lost {
			// Returning without the exit (the kill was not confirmed
			// in time, or not even the start): let the guest send the
			// rest without waiting for Credit that will not come.
			go c.release(id)
		}
	}()
	w := &outWriter{stdout: stdout, stderr: stderr}
	var started agentproto.ExecStarted
	select {
	case resp, ok := <-ch:
		if !ok {
			return agentproto.ExitStatus{}, fmt.Errorf("guest agent: exec: %w", c.closedErr())
		}
		if err := decodeResponse(agentproto.MethodExec, resp, &started); err != nil {
			mayRun = false
			return agentproto.ExitStatus{}, fmt.Errorf("guest agent: exec: %w", err)
		}
	case <-ctx.Done():
		// The guest handles the kill after the request: if the process
		// starts, it dies at once.
		c.signal(id, "SIGKILL")
		timeout := time.After(killWait)
		select {
		case resp, ok := <-ch:
			if !ok || decodeResponse(agentproto.MethodExec, resp, &started) != nil {
				mayRun = false
				return agentproto.ExitStatus{}, fmt.Errorf("guest agent: exec: %w", ctx.Err())
			}
		case <-timeout:
			return agentproto.ExitStatus{}, fmt.Errorf("guest agent: exec: %w", ctx.Err())
		}
		return c.killed(ctx, e, w, timeout)
	}

	stop := make(chan struct{})
	defer close(stop)
	go c.feedStdin(ctx, e, stdin, stop)
	for {
		out, exit, lost := e.take()
		c.writeOut(id, w, out)
		switch {
		case exit != nil && w.err != nil:
			return *exit, fmt.Errorf("guest agent: exec: %w", w.err)
		case exit != nil:
			return *exit, nil
		case lost:
			return agentproto.ExitStatus{}, fmt.Errorf("guest agent: exec: %w", c.closedErr())
		}
		select {
		case <-e.outKick:
		case <-ctx.Done():
			c.signal(id, "SIGKILL")
			return c.killed(ctx, e, w, time.After(killWait))
		}
	}
}

// killed copies output until the exit of a killed exec, the connection's
// end, or timeout, and returns ctx's error.
func (c *Client) killed(ctx context.Context, e *execState, w *outWriter, timeout <-chan time.Time) (agentproto.ExitStatus, error) {
	for {
		out, exit, lost := e.take()
		c.writeOut(e.id, w, out)
		if exit != nil {
			return *exit, fmt.Errorf("guest agent: exec: %w", ctx.Err())
		}
		if lost {
			return agentproto.ExitStatus{}, fmt.Errorf("guest agent: exec: %w (and the connection ended: %v)", ctx.Err(), c.closedErr())
		}
		select {
		case <-e.outKick:
		case <-timeout:
			return agentproto.ExitStatus{}, fmt.Errorf("guest agent: exec: %w (no exit from the guest %v after the kill)", ctx.Err(), killWait)
		}
	}
}

// outWriter writes an exec's output; after a write error it drops the
// rest and keeps the error.
type outWriter struct {
	stdout, stderr io.Writer
	err            error
}

func (c *Client) writeOut(id uint32, w *outWriter, frames []agentproto.Frame) {
	n := 0
	for _, f := range frames {
		dst := w.stdout
		name := "stdout"
		if f.Type == agentproto.FrameStderr {
			dst, name = w.stderr, "stderr"
		}
		if dst != nil && w.err == nil {
			if _, err := dst.Write(f.Payload); err != nil {
				w.err = fmt.Errorf("write %s: %w", name, err)
			}
		}
		n += len(f.Payload)
	}
	if n > 0 {
		// Credit is best effort: if it cannot go out, the connection
		// is failing and the exec with it.
		c.writeBestEffort(agentproto.CreditFrame(id, uint32(n)))
	}
}

// feedStdin sends stdin to the guest within the window, then closes it.
func (c *Client) feedStdin(ctx context.Context, e *execState, stdin io.Reader, stop <-chan struct{}) {
	closeFrame := agentproto.Frame{Type: agentproto.FrameStdinClose, ID: e.id}
	if stdin == nil {
		_ = c.write(ctx, closeFrame)
		return
	}
	buf := make([]byte, agentproto.MaxChunk)
	for {
		n := e.reserve(len(buf), stop)
		if n == 0 {
			return
		}
		m, err := stdin.Read(buf[:n])
		e.giveBack(n - m)
		if m > 0 {
			if werr := c.write(ctx, agentproto.Frame{Type: agentproto.FrameStdin, ID: e.id, Payload: buf[:m]}); werr != nil {
				return
			}
		}
		if err != nil {
			// EOF or a broken reader: either way, no more stdin.
			_ = c.write(ctx, closeFrame)
			return
		}
	}
}

// signal asks the guest to signal an exec's process group.
func (c *Client) signal(id uint32, sig string) {
	f, err := agentproto.JSONFrame(agentproto.FrameSignal, id, agentproto.Signal{Signal: sig})
	if err == nil {
		c.writeBestEffort(f)
	}
}

// unlimitedCredit is the window given to an exec whose output nobody
// reads any more.
const unlimitedCredit = 1 << 30

// release kills an exec that no caller waits for (any more) and frees its
// output from flow control, so that the guest ends it and sends its exit
// (which is dropped).
func (c *Client) release(id uint32) {
	c.signal(id, "SIGKILL")
	c.writeBestEffort(agentproto.CreditFrame(id, unlimitedCredit))
}

// writeBestEffort sends a frame whose loss only the connection's failure
// explains: if it cannot go out in bestEffortTimeout, the connection is
// stuck anyway.
func (c *Client) writeBestEffort(f agentproto.Frame) {
	ctx, cancel := context.WithTimeout(context.Background(), bestEffortTimeout)
	defer cancel()
	_ = c.write(ctx, f)
}

const bestEffortTimeout = 5 * time.Second
