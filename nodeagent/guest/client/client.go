// Package client is the host side of the guest agent protocol
// (agentproto): it connects to the unix socket of QEMU's virtio-serial
// chardev and calls the guest agent. Calls may overlap from many
// goroutines; each has its own deadline through its context.
//
// The guest is not trusted: a pod may own it, agent and all. Whatever it
// sends, a connection costs the host no more than these (read.go holds
// the code that keeps them):
//
//   - Goroutines: two per connection, the reader and the releaser, plus
//     one per running Exec (its stdin feeder). Calls and execs are started
//     by the host only; no frame from the guest starts a goroutine.
//   - Memory: a 64 KiB read buffer and a MaxChunk scratch buffer per
//     connection; per running Exec at most agentproto.Window (256 KiB) of
//     output not yet written to its caller, as the host never gives more
//     credit than that; per outstanding call one answer of at most
//     agentproto.MaxPayload (1 MiB); and the ids of the last MaxOrphans
//     execs released.
//   - Output of execs nobody here waits for (left by an earlier
//     connection, or by an Exec that gave up) is discarded unread, and
//     each such exec is killed once, by the releaser.
//
// A guest that breaks the protocol ends the connection with ErrProtocol
// (see read.go for what counts); nothing after that can be trusted, and
// the caller decides the sandbox's fate (nodeagent/sandbox kills it).
package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// ErrClosed means the connection to the guest agent is gone: Close was
// called, QEMU exited, or the stream broke. Err says why.
var ErrClosed = fmt.Errorf("guest agent connection closed: %w", errdefs.ErrUnavailable)

// ErrProtocol is why a connection ended when the guest broke the protocol.
var ErrProtocol = errors.New("guest agent protocol violation")

// ErrHostClosed is why a connection ended when Close ended it.
var ErrHostClosed = errors.New("closed by the host")

// Info describes the guest agent.
type Info struct {
	ProtocolVersion int
	AgentVersion    string
	// Uptime is the guest's uptime at the last Ping (0 if there was none).
	Uptime time.Duration
}

// RemoteError is a request the guest agent answered with an error. It
// wraps the errdefs sentinel of its code, if any.
type RemoteError struct {
	Method  string
	Code    agentproto.ErrorCode
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// Unwrap returns the errdefs sentinel matching e.Code.
func (e *RemoteError) Unwrap() error {
	switch e.Code {
	case agentproto.CodeInvalidArgument:
		return errdefs.ErrInvalidArgument
	case agentproto.CodeNotFound:
		return errdefs.ErrNotFound
	case agentproto.CodeAlreadyExists:
		return errdefs.ErrAlreadyExists
	case agentproto.CodeFailedPrecondition:
		return errdefs.ErrFailedPrecondition
	case agentproto.CodeUnavailable:
		return errdefs.ErrUnavailable
	}
	return nil
}

// Client is a connection to one guest agent.
type Client struct {
	conn net.Conn
	// wsem serialises frames; a channel so that waiting for it heeds ctx.
	wsem chan struct{}

	mu     sync.Mutex
	nextID uint32
	calls  map[uint32]chan agentproto.Response
	execs  map[uint32]*execState
	cause  error // why the connection ended
	err    error // ErrClosed with the cause
	info   Info
	// released are the last exec ids handed to the releaser; orphans
	// counts the ones the guest sent output for unasked.
	released idRing
	orphans  int
	relq     chan uint32

	// scratch holds one stdio or small control payload; the reader's own.
	scratch []byte

	done         chan struct{} // closed when the connection ends
	readerDone   chan struct{}
	releaserDone chan struct{}
}

// Dial connects to the guest agent behind QEMU's chardev socket and waits
// for it. It retries the connection until ctx ends (QEMU may not have
// created the socket yet), sends a Ping at once, and returns after the
// guest's Hello (a guest that just opened its port) or the answer to the
// Ping (a running guest, re-adopted). A protocol version other than
// agentproto.Version is an error.
func Dial(ctx context.Context, socket string) (*Client, error) {
	conn, err := dialRetry(ctx, socket)
	if err != nil {
		return nil, fmt.Errorf("guest agent: connect to %s: %w", socket, err)
	}
	c, err := open(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("guest agent: %s: %w", socket, err)
	}
	return c, nil
}

// open runs the handshake on conn and starts the connection's goroutines;
// on failure it closes conn.
func open(ctx context.Context, conn net.Conn) (*Client, error) {
	c := newClient(conn)
	br := bufio.NewReaderSize(conn, readBuffer)
	if err := c.handshake(ctx, br); err != nil {
		conn.Close()
		return nil, err
	}
	c.start(br)
	return c, nil
}

func newClient(conn net.Conn) *Client {
	return &Client{
		conn: conn, wsem: make(chan struct{}, 1),
		nextID: rand.Uint32(), calls: map[uint32]chan agentproto.Response{}, execs: map[uint32]*execState{},
		released: newIDRing(MaxOrphans), relq: make(chan uint32, releaseQueue),
		scratch: make([]byte, agentproto.MaxChunk),
		done:    make(chan struct{}), readerDone: make(chan struct{}), releaserDone: make(chan struct{}),
	}
}

// start runs the connection's two goroutines.
func (c *Client) start(br *bufio.Reader) {
	go c.read(br)
	go c.releaser()
}

func dialRetry(ctx context.Context, socket string) (net.Conn, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", socket)
		if err == nil {
			return conn, nil
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, err
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// handshake sends a Ping and reads until the guest's Hello or the Ping's
// answer. Whole frames before them are skipped (stale output of an
// earlier connection), and so are bytes that do not start a frame (the
// tail of one cut short when that connection ended).
func (c *Client) handshake(ctx context.Context, br *bufio.Reader) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetReadDeadline(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.conn.SetReadDeadline(time.Unix(1, 0))
		close(fired)
	})
	defer func() {
		// ctx may end later on: it must not touch the connection then.
		if !stop() {
			<-fired
		}
		_ = c.conn.SetReadDeadline(time.Time{})
	}()
	pingID := c.newID()
	ping, err := agentproto.JSONFrame(agentproto.FrameRequest, pingID, agentproto.Request{Method: agentproto.MethodPing})
	if err != nil {
		return err
	}
	if err := c.write(ctx, ping); err != nil {
		return err
	}
	for {
		hdr, err := br.Peek(agentproto.HeaderSize)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Only ctx sets the read deadline: it ends now, if it has
			// not already.
			<-ctx.Done()
			return fmt.Errorf("wait for the guest: %w", ctx.Err())
		}
		if err != nil {
			return fmt.Errorf("wait for the guest: %w", err)
		}
		h, err := agentproto.ParseHeader(hdr)
		switch {
		case errors.Is(err, agentproto.ErrUnsupportedVersion):
			return fmt.Errorf("the guest agent's first frame: %w", err)
		case err != nil:
			_, _ = br.Discard(1)
			continue
		case h.Type == agentproto.FrameHello && h.ID == 0, h.Type == agentproto.FrameResponse && h.ID == pingID:
		default:
			if _, err := br.Discard(agentproto.HeaderSize + int(h.Length)); err != nil {
				return fmt.Errorf("wait for the guest: %w", err)
			}
			continue
		}
		f, err := agentproto.ReadFrame(br)
		if err != nil {
			return fmt.Errorf("wait for the guest: %w", err)
		}
		if f.Type == agentproto.FrameHello {
			var hello agentproto.Hello
			if err := f.DecodeJSON(&hello); err != nil {
				return err
			}
			return c.setInfo(Info{ProtocolVersion: hello.ProtocolVersion, AgentVersion: hello.AgentVersion})
		}
		var resp agentproto.Response
		if err := f.DecodeJSON(&resp); err != nil {
			return err
		}
		var pr agentproto.PingResult
		if err := decodeResponse(agentproto.MethodPing, resp, &pr); err != nil {
			return err
		}
		return c.setInfo(pingInfo(pr))
	}
}

func pingInfo(pr agentproto.PingResult) Info {
	return Info{ProtocolVersion: pr.ProtocolVersion, AgentVersion: pr.AgentVersion,
		Uptime: time.Duration(pr.UptimeSeconds * float64(time.Second))}
}

func (c *Client) setInfo(info Info) error {
	if info.ProtocolVersion != agentproto.Version {
		return fmt.Errorf("%w: the guest agent speaks protocol %d, the host %d", agentproto.ErrUnsupportedVersion, info.ProtocolVersion, agentproto.Version)
	}
	c.mu.Lock()
	c.info = info
	c.mu.Unlock()
	return nil
}

// newID returns an id that no outstanding call or exec uses. Ids start at
// a random number, so that a reconnected client does not take the ids of
// processes an earlier connection left behind.
func (c *Client) newID() uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.newIDLocked()
}

func (c *Client) newIDLocked() uint32 {
	for {
		c.nextID++
		id := c.nextID
		if _, ok := c.calls[id]; ok || id == 0 {
			continue
		}
		if _, ok := c.execs[id]; ok {
			continue
		}
		return id
	}
}

// write sends one frame. Waiting for the connection and a write that
// blocks both end with ctx; a frame cut short breaks the stream, so the
// connection is then closed.
func (c *Client) write(ctx context.Context, f agentproto.Frame) error {
	b, err := agentproto.AppendFrame(nil, f)
	if err != nil {
		return err
	}
	select {
	case c.wsem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return c.closedErr()
	}
	defer func() { <-c.wsem }()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.conn.SetWriteDeadline(time.Unix(1, 0))
		close(fired)
	})
	n, err := c.conn.Write(b)
	if !stop() {
		<-fired
	}
	_ = c.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		if n > 0 {
			c.fail(fmt.Errorf("write cut short: %w", err))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	return nil
}

// fail ends the connection: every call and exec waiting gets ErrClosed.
func (c *Client) fail(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.cause = cause
	c.err = fmt.Errorf("%w: %w", ErrClosed, cause)
	calls, execs := c.calls, c.execs
	c.calls, c.execs = map[uint32]chan agentproto.Response{}, map[uint32]*execState{}
	c.mu.Unlock()
	close(c.done)
	c.conn.Close()
	for _, ch := range calls {
		close(ch)
	}
	for _, e := range execs {
		e.fail()
	}
}

// Err returns why the connection ended (wrapping ErrProtocol when the
// guest broke the protocol, ErrHostClosed after Close), or nil while it
// is open.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}

func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	return ErrClosed
}

// call sends a request and decodes its answer into result (nil: ignore).
func (c *Client) call(ctx context.Context, method string, params, result any) error {
	id, ch, err := c.send(ctx, method, params, nil)
	if err != nil {
		return err
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return c.closedErr()
		}
		return decodeResponse(method, resp, result)
	case <-ctx.Done():
		c.forget(id)
		return ctx.Err()
	}
}

// send registers and sends a request; its Response will come on the
// channel, which is closed if the connection ends first. With e, the id is
// also registered as an exec before the request leaves.
func (c *Client) send(ctx context.Context, method string, params any, e *execState) (uint32, chan agentproto.Response, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	req := agentproto.Request{Method: method}
	if params != nil {
		b, err := json.Marshal(params)
		if err != nil {
			return 0, nil, fmt.Errorf("encode params: %w", err)
		}
		req.Params = b
	}
	ch := make(chan agentproto.Response, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, nil, err
	}
	id := c.newIDLocked()
	c.calls[id] = ch
	if e != nil {
		e.id = id
		c.execs[id] = e
	}
	c.mu.Unlock()
	f, err := agentproto.JSONFrame(agentproto.FrameRequest, id, req)
	if err == nil {
		err = c.write(ctx, f)
	}
	if err != nil {
		c.forget(id)
		return 0, nil, err
	}
	return id, ch, nil
}

// forget drops a request's and exec's registration: later frames for id
// are ignored.
func (c *Client) forget(id uint32) {
	c.mu.Lock()
	delete(c.calls, id)
	delete(c.execs, id)
	c.mu.Unlock()
}

func decodeResponse(method string, resp agentproto.Response, result any) error {
	if resp.Error != "" || resp.Code != "" {
		return &RemoteError{Method: method, Code: resp.Code, Message: resp.Error}
	}
	if result != nil {
		if len(resp.Result) == 0 {
			return fmt.Errorf("%s: empty answer", method)
		}
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("%s: decode answer: %w", method, err)
		}
	}
	return nil
}

// Info returns what the guest agent said of itself at Dial or at the
// last Ping.
func (c *Client) Info() Info {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info
}

// Ping checks that the guest agent answers.
func (c *Client) Ping(ctx context.Context) (Info, error) {
	var pr agentproto.PingResult
	if err := c.call(ctx, agentproto.MethodPing, nil, &pr); err != nil {
		return Info{}, fmt.Errorf("guest agent: ping: %w", err)
	}
	info := pingInfo(pr)
	if err := c.setInfo(info); err != nil {
		return Info{}, fmt.Errorf("guest agent: ping: %w", err)
	}
	return info, nil
}

// ConfigureNetwork has the guest take over cfg's links, addresses and
// routes. Applying the same config again is harmless.
func (c *Client) ConfigureNetwork(ctx context.Context, cfg agentproto.NetConfig) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("guest agent: configure network: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if err := c.call(ctx, agentproto.MethodConfigureNetwork, cfg, nil); err != nil {
		return fmt.Errorf("guest agent: %w", err)
	}
	return nil
}

// SetIdentity gives the guest its own hostname, machine id, fresh kernel
// entropy and, unless id.UnixNano is 0, wall clock. Call it on every start,
// cold or restored from a template many clones share, with id.UnixNano
// read right before the call.
func (c *Client) SetIdentity(ctx context.Context, id agentproto.Identity) error {
	if err := id.Validate(); err != nil {
		return fmt.Errorf("guest agent: set identity: %w: %w", errdefs.ErrInvalidArgument, err)
	}
	if err := c.call(ctx, agentproto.MethodSetIdentity, id, nil); err != nil {
		return fmt.Errorf("guest agent: set identity: %w", err)
	}
	return nil
}

// BlockDevices lists the guest's virtio-blk disks.
func (c *Client) BlockDevices(ctx context.Context) ([]agentproto.BlockDevice, error) {
	var devs []agentproto.BlockDevice
	if err := c.call(ctx, agentproto.MethodBlockDevices, nil, &devs); err != nil {
		return nil, fmt.Errorf("guest agent: block devices: %w", err)
	}
	return devs, nil
}

// Shutdown asks the guest to power off. It returns once the guest has
// answered (or the connection ended first, as the guest going down ends
// it); the VM is gone shortly after.
func (c *Client) Shutdown(ctx context.Context) error {
	id, ch, err := c.send(ctx, agentproto.MethodShutdown, nil, nil)
	if err != nil {
		return fmt.Errorf("guest agent: shutdown: %w", err)
	}
	select {
	case resp, ok := <-ch:
		if !ok {
			return nil // the request went out, then the guest went down
		}
		if err := decodeResponse(agentproto.MethodShutdown, resp, nil); err != nil {
			return fmt.Errorf("guest agent: shutdown: %w", err)
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("guest agent: shutdown: %w", ctx.Err())
	}
}

// Done is closed when the connection ends.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close ends the connection; calls in progress fail with ErrClosed. The
// guest kills the processes that Execs of this connection started.
func (c *Client) Close() error {
	c.fail(ErrHostClosed)
	<-c.readerDone
	<-c.releaserDone
	return nil
}
