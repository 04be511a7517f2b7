package client

// The reader: the one goroutine that takes the guest's frames, and the
// limits it holds whatever the guest sends (see the package comment).

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
)

// Limits of a connection.
const (
	// MaxOrphans is how many exec ids the guest may send output for that
	// no Exec of this connection waits for, and that this connection did
	// not release itself. Such execs are left by an earlier connection
	// the guest had not seen end, so a handful is normal; more is a
	// protocol violation. It is also the size of the ring of released
	// ids, whose late output is dropped without counting.
	MaxOrphans = 1024
	// releaseQueue bounds the releases waiting for the releaser. A
	// release that finds it full is dropped: the releaser is stuck on a
	// guest that does not read, and the exec's output is dropped anyway.
	releaseQueue = 64
	// maxExitPayload bounds an Exit frame's JSON ({"code":137,
	// "signal":"SIGKILL"} is 33 bytes).
	maxExitPayload = 4 << 10
	// readBuffer is the connection's read buffer.
	readBuffer = 64 << 10
)

// violation returns a protocol violation error.
func violation(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// errGuestRestarted ends a connection whose guest agent started a new
// session: it lost ours, and with it our calls and processes. Not a
// violation: a new connection gets a new session.
var errGuestRestarted = errors.New("the guest agent restarted its session")

// read dispatches the guest's frames until the connection ends.
func (c *Client) read(br *bufio.Reader) {
	defer close(c.readerDone)
	for {
		if err := c.readFrame(br); err != nil {
			c.fail(err)
			return
		}
	}
}

// readFrame reads and dispatches one frame. The header comes first: a
// payload nobody waits for is skipped unread, and a payload larger than
// its type allows is refused before it is read.
//
// Violations: bytes that do not make a frame (bad magic or version, an
// unknown type, a length over MaxPayload), a frame type only the host
// sends, stdio over MaxChunk or beyond the credit the host gave, stdio or
// a second Exit after an exec's Exit, an undecodable Response or Exit, an
// Exit over maxExitPayload, a Credit that is not 4 bytes, more than
// MaxOrphans unknown exec ids.
func (c *Client) readFrame(br *bufio.Reader) error {
	var hdr [agentproto.HeaderSize]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return err // the connection ended (QEMU exited, or Close)
	}
	h, err := agentproto.ParseHeader(hdr[:])
	if err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	switch h.Type {
	case agentproto.FrameResponse:
		return c.readResponse(br, h)
	case agentproto.FrameStdout, agentproto.FrameStderr:
		return c.readOutput(br, h)
	case agentproto.FrameExit:
		return c.readExit(br, h)
	case agentproto.FrameCredit:
		return c.readCredit(br, h)
	case agentproto.FrameHello:
		return errGuestRestarted
	}
	return violation("the guest sent a %s frame, which only the host sends", h.Type)
}

// payload reads a frame's payload into the scratch buffer (valid until
// the next frame); n is at most len(c.scratch).
func (c *Client) payload(br *bufio.Reader, n uint32) ([]byte, error) {
	b := c.scratch[:n]
	if _, err := io.ReadFull(br, b); err != nil {
		return nil, unexpected(err)
	}
	return b, nil
}

func skip(br *bufio.Reader, n uint32) error {
	_, err := br.Discard(int(n))
	return unexpected(err)
}

// unexpected turns io.EOF inside a frame into io.ErrUnexpectedEOF.
func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (c *Client) lookupCall(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.calls[id]
	return ok
}

func (c *Client) lookupExec(id uint32) *execState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.execs[id]
}

// readResponse hands an answer to its call. An answer nobody waits for
// (its call gave up) is skipped.
func (c *Client) readResponse(br *bufio.Reader, h agentproto.Header) error {
	if !c.lookupCall(h.ID) {
		return skip(br, h.Length)
	}
	// Its own buffer: the answer goes to the caller.
	b := make([]byte, h.Length)
	if _, err := io.ReadFull(br, b); err != nil {
		return unexpected(err)
	}
	var resp agentproto.Response
	if err := json.Unmarshal(b, &resp); err != nil {
		return violation("undecodable answer to request %d: %v", h.ID, err)
	}
	c.mu.Lock()
	ch := c.calls[h.ID]
	delete(c.calls, h.ID)
	c.mu.Unlock()
	if ch != nil {
		ch <- resp // buffered, and sent to once: never blocks
	}
	return nil
}

// readOutput gives stdio to its exec, within the exec's window.
func (c *Client) readOutput(br *bufio.Reader, h agentproto.Header) error {
	if h.Length > agentproto.MaxChunk {
		return violation("exec %d: a %s frame of %d bytes (max %d)", h.ID, h.Type, h.Length, agentproto.MaxChunk)
	}
	e := c.lookupExec(h.ID)
	if e == nil {
		if err := skip(br, h.Length); err != nil {
			return err
		}
		if h.Length == 0 {
			return nil
		}
		return c.orphan(h.ID)
	}
	b, err := c.payload(br, h.Length)
	if err != nil {
		return err
	}
	return e.deliver(h.Type, b)
}

func (c *Client) readExit(br *bufio.Reader, h agentproto.Header) error {
	if h.Length > maxExitPayload {
		return violation("exec %d: an exit frame of %d bytes (max %d)", h.ID, h.Length, maxExitPayload)
	}
	e := c.lookupExec(h.ID)
	if e == nil {
		return skip(br, h.Length) // an exec nobody waits for any more
	}
	b, err := c.payload(br, h.Length)
	if err != nil {
		return err
	}
	var st agentproto.ExitStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return violation("exec %d: undecodable exit status: %v", h.ID, err)
	}
	return e.exited(st)
}

func (c *Client) readCredit(br *bufio.Reader, h agentproto.Header) error {
	if h.Length != 4 {
		return violation("exec %d: a credit frame of %d bytes (want 4)", h.ID, h.Length)
	}
	b, err := c.payload(br, h.Length)
	if err != nil {
		return err
	}
	if e := c.lookupExec(h.ID); e != nil {
		e.addCredit(binary.BigEndian.Uint32(b))
	}
	return nil
}

// orphan handles output for an exec no Exec waits for: one that an
// earlier connection started and the guest kept (it had not seen that
// connection end). It is released once; output of execs released already
// is dropped.
func (c *Client) orphan(id uint32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.released.has(id) {
		return nil
	}
	c.orphans++
	if c.orphans > MaxOrphans {
		return violation("output for more than %d exec ids the host never started", MaxOrphans)
	}
	c.releaseLocked(id)
	return nil
}

// release kills an exec that no caller waits for (any more) and frees its
// output from flow control, so that the guest ends it and sends its exit
// (which is dropped). The releaser does it, in the background.
func (c *Client) release(id uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.releaseLocked(id)
}

func (c *Client) releaseLocked(id uint32) {
	c.released.add(id)
	select {
	case c.relq <- id:
	default:
	}
}

// unlimitedCredit is the window given to an exec whose output nobody
// reads any more.
const unlimitedCredit = 1 << 30

// releaser sends the kills and credits of releases, one at a time, until
// the connection ends.
func (c *Client) releaser() {
	defer close(c.releaserDone)
	for {
		select {
		case <-c.done:
			return
		case id := <-c.relq:
			c.signal(id, "SIGKILL")
			c.writeBestEffort(agentproto.CreditFrame(id, unlimitedCredit))
		}
	}
}

// idRing is a set of the last ids added to it.
type idRing struct {
	ids  []uint32
	next int
	set  map[uint32]struct{}
}

func newIDRing(n int) idRing {
	return idRing{ids: make([]uint32, 0, n), set: make(map[uint32]struct{}, n)}
}

func (r *idRing) has(id uint32) bool {
	_, ok := r.set[id]
	return ok
}

func (r *idRing) add(id uint32) {
	if r.has(id) {
		return
	}
	if len(r.ids) < cap(r.ids) {
		r.ids = append(r.ids, id)
	} else {
		delete(r.set, r.ids[r.next])
		r.ids[r.next] = id
		r.next = (r.next + 1) % len(r.ids)
	}
	r.set[id] = struct{}{}
}
