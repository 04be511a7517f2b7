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

	mu sync.Mutex
	// stdout and stderr are output not yet written to the caller. Their
	// relative order is not kept: the guest reads the two pipes
	// independently, so it has none to keep.
	stdout, stderr []byte
	// unacked is output received and not yet given back as credit: the
	// guest may not send more than agentproto.Window of it, so the two
	// buffers never hold more than that.
	unacked  int
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

// deliver takes output from the reader (b is the reader's: it is copied).
// It never blocks; output beyond the window, or after the exit, is a
// protocol violation.
func (e *execState) deliver(t agentproto.FrameType, b []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.exit != nil {
		return violation("exec %d: %s after its exit", e.id, t)
	}
	if e.unacked+len(b) > agentproto.Window {
		return violation("exec %d: %d bytes of output beyond the %d-byte window", e.id, e.unacked+len(b)-agentproto.Window, agentproto.Window)
	}
	e.unacked += len(b)
	if t == agentproto.FrameStderr {
		e.stderr = append(e.stderr, b...)
	} else {
		e.stdout = append(e.stdout, b...)
	}
	kick(e.outKick)
	return nil
}

// exited records the exit; a second one is a protocol violation.
func (e *execState) exited(st agentproto.ExitStatus) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.exit != nil {
		return violation("exec %d: a second exit", e.id)
	}
	e.exit = &st
	kick(e.outKick)
	return nil
}

// addCredit takes stdin window back from the guest. A guest that gives
// back more than it got gains nothing: the window stays at most Window.
func (e *execState) addCredit(n uint32) {
	e.mu.Lock()
	e.credit = min(e.credit+int64(n), agentproto.Window)
	e.mu.Unlock()
	kick(e.credKick)
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
func (e *execState) take() (stdout, stderr []byte, exit *agentproto.ExitStatus, lost bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	stdout, stderr = e.stdout, e.stderr
	e.stdout, e.stderr = nil, nil
	return stdout, stderr, e.exit, e.lost
}

// status returns the exit status once it came and whether the connection
// is lost.
func (e *execState) status() (*agentproto.ExitStatus, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.exit, e.lost
}

// acked gives n bytes of output window back; the caller then sends the
// Credit. It is counted first, so the host never thinks the guest has
// less outstanding than it has.
func (e *execState) acked(n int) {
	e.mu.Lock()
	e.unacked -= n
	e.mu.Unlock()
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
		if exit, lost := e.status(); mayRun && exit == nil && !lost {
			// Returning without the exit (the kill was not confirmed
			// in time, or not even the start): let the guest send the
			// rest without waiting for Credit that will not come.
			c.release(id)
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
		stdout, stderr, exit, lost := e.take()
		c.writeOut(e, w, stdout, stderr)
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
		stdout, stderr, exit, lost := e.take()
		c.writeOut(e, w, stdout, stderr)
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

// writeOut writes an exec's output to the caller's writers, then gives
// the window back.
func (c *Client) writeOut(e *execState, w *outWriter, stdout, stderr []byte) {
	w.write(w.stdout, "stdout", stdout)
	w.write(w.stderr, "stderr", stderr)
	if n := len(stdout) + len(stderr); n > 0 {
		e.acked(n)
		// Credit is best effort: if it cannot go out, the connection
		// is failing and the exec with it.
		c.writeBestEffort(agentproto.CreditFrame(e.id, uint32(n)))
	}
}

// write writes b in pieces of at most MaxChunk, as the guest sent it.
func (w *outWriter) write(dst io.Writer, name string, b []byte) {
	for dst != nil && w.err == nil && len(b) > 0 {
		n := min(len(b), agentproto.MaxChunk)
		if _, err := dst.Write(b[:n]); err != nil {
			w.err = fmt.Errorf("write %s: %w", name, err)
		}
		b = b[n:]
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

// writeBestEffort sends a frame whose loss only the connection's failure
// explains: if it cannot go out in bestEffortTimeout, the connection is
// stuck anyway.
func (c *Client) writeBestEffort(f agentproto.Frame) {
	ctx, cancel := context.WithTimeout(context.Background(), bestEffortTimeout)
	defer cancel()
	_ = c.write(ctx, f)
}

const bestEffortTimeout = 5 * time.Second
