package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
)

// socketPair returns the two ends of a unix stream socket pair: a
// buffered link, as QEMU's chardev socket is.
func socketPair(t testing.TB) (host, guest net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

// hostileGuest plays the guest on the other end of a connection: it says
// Hello, answers Pings (unless told not to), records the host's other
// frames, and sends whatever a test asks, legal or not.
type hostileGuest struct {
	t    testing.TB
	conn net.Conn
	wmu  sync.Mutex

	requests chan hostRequest // Exec and unanswered calls

	mu      sync.Mutex
	signals map[uint32]int    // SIGKILLs per exec id
	credits map[uint32]uint64 // credit given back per exec id
	done    chan struct{}     // closed when the host's side ends
}

type hostRequest struct {
	id  uint32
	req agentproto.Request
}

// newHostile connects a client to a hostile guest.
func newHostile(t testing.TB, answerPings bool) (*Client, *hostileGuest) {
	t.Helper()
	hc, gc := socketPair(t)
	g := &hostileGuest{t: t, conn: gc, requests: make(chan hostRequest, 64),
		signals: map[uint32]int{}, credits: map[uint32]uint64{}, done: make(chan struct{})}
	t.Cleanup(func() { gc.Close(); <-g.done })
	g.sendJSON(agentproto.FrameHello, 0, agentproto.Hello{ProtocolVersion: agentproto.Version, AgentVersion: "hostile"})
	go g.serve(answerPings)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := open(ctx, hc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, g
}

func (g *hostileGuest) serve(answerPings bool) {
	defer close(g.done)
	for {
		f, err := agentproto.ReadFrame(g.conn)
		if err != nil {
			return
		}
		switch f.Type {
		case agentproto.FrameRequest:
			var req agentproto.Request
			_ = f.DecodeJSON(&req)
			if req.Method == agentproto.MethodPing && answerPings {
				res, _ := json.Marshal(agentproto.PingResult{ProtocolVersion: agentproto.Version})
				g.sendJSON(agentproto.FrameResponse, f.ID, agentproto.Response{Result: res})
				continue
			}
			select {
			case g.requests <- hostRequest{f.ID, req}:
			default:
			}
		case agentproto.FrameSignal:
			g.mu.Lock()
			g.signals[f.ID]++
			g.mu.Unlock()
		case agentproto.FrameCredit:
			n, _ := f.Credit()
			g.mu.Lock()
			g.credits[f.ID] += uint64(n)
			g.mu.Unlock()
		}
	}
}

// write sends raw bytes; errors mean the host closed the connection,
// which is what many tests expect.
func (g *hostileGuest) write(b []byte) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	_, _ = g.conn.Write(b)
}

func (g *hostileGuest) send(t agentproto.FrameType, id uint32, payload []byte) {
	g.write(rawFrame(t, id, payload))
}

func (g *hostileGuest) sendJSON(t agentproto.FrameType, id uint32, v any) {
	b, _ := json.Marshal(v)
	g.send(t, id, b)
}

// rawFrame encodes a frame without AppendFrame's checks.
func rawFrame(t agentproto.FrameType, id uint32, payload []byte) []byte {
	b := []byte{agentproto.Magic[0], agentproto.Magic[1], agentproto.Version, byte(t)}
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// startExec starts an Exec on c whose output goes to w, takes its
// request in the guest and answers it; it returns the exec's id and
// where its result will come.
func startExec(t testing.TB, c *Client, g *hostileGuest, w *gateWriter) (uint32, chan error) {
	t.Helper()
	res := make(chan error, 1)
	go func() {
		_, err := c.Exec(context.Background(), agentproto.ExecSpec{Argv: []string{"x"}}, nil, w, w)
		res <- err
	}()
	select {
	case r := <-g.requests:
		if r.req.Method != agentproto.MethodExec {
			t.Fatalf("request %q, want Exec", r.req.Method)
		}
		res2, _ := json.Marshal(agentproto.ExecStarted{PID: 1})
		g.sendJSON(agentproto.FrameResponse, r.id, agentproto.Response{Result: res2})
		return r.id, res
	case <-time.After(5 * time.Second):
		t.Fatal("no Exec request reached the guest")
	}
	return 0, nil
}

// gateWriter is an exec's output: a slow consumer that blocks every
// write until open is closed.
type gateWriter struct {
	open chan struct{}
	mu   sync.Mutex
	n    int
}

func newGate(t testing.TB) *gateWriter {
	w := &gateWriter{open: make(chan struct{})}
	t.Cleanup(func() { w.release() })
	return w
}

func (w *gateWriter) release() {
	select {
	case <-w.open:
	default:
		close(w.open)
	}
}

func (w *gateWriter) Write(b []byte) (int, error) {
	<-w.open
	w.mu.Lock()
	w.n += len(b)
	w.mu.Unlock()
	return len(b), nil
}

// waitEnd waits for c's connection to end and returns why.
func waitEnd(t testing.TB, c *Client) error {
	t.Helper()
	select {
	case <-c.Done():
		return c.Err()
	case <-time.After(5 * time.Second):
		t.Fatal("the connection did not end")
		return nil
	}
}

// Whatever breaks the protocol ends the connection with ErrProtocol and a
// reason; execs waiting end with it.
func TestViolationsEndTheConnection(t *testing.T) {
	chunk := bytes.Repeat([]byte("x"), agentproto.MaxChunk)
	for _, tc := range []struct {
		name string
		// exec: the case runs with an exec whose output writer is
		// blocked (a slow consumer), with that exec's id.
		exec bool
		// exited: the exec had its exit before the violation, and
		// returns it.
		exited bool
		act    func(g *hostileGuest, id uint32)
		want   string
	}{
		{name: "garbage", act: func(g *hostileGuest, _ uint32) { g.write([]byte("\x00\x01garbage garbage!")) }, want: "bad frame magic"},
		{name: "other version", act: func(g *hostileGuest, _ uint32) {
			g.write([]byte{0xA5, 0x4E, 9, byte(agentproto.FrameStdout), 0, 0, 0, 1, 0, 0, 0, 0})
		}, want: "unsupported protocol version"},
		{name: "unknown type", act: func(g *hostileGuest, _ uint32) { g.send(200, 1, nil) }, want: "unknown frame type"},
		{name: "length over the maximum", act: func(g *hostileGuest, _ uint32) {
			g.write([]byte{0xA5, 0x4E, agentproto.Version, byte(agentproto.FrameResponse), 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff})
		}, want: "frame payload too large"},
		{name: "request", act: func(g *hostileGuest, _ uint32) {
			g.sendJSON(agentproto.FrameRequest, 5, agentproto.Request{Method: "Exec"})
		}, want: "a request frame, which only the host sends"},
		{name: "stdin", act: func(g *hostileGuest, _ uint32) { g.send(agentproto.FrameStdin, 5, []byte("x")) }, want: "only the host sends"},
		{name: "stdin close", act: func(g *hostileGuest, _ uint32) { g.send(agentproto.FrameStdinClose, 5, nil) }, want: "only the host sends"},
		{name: "signal", act: func(g *hostileGuest, _ uint32) { g.send(agentproto.FrameSignal, 5, []byte(`{}`)) }, want: "only the host sends"},
		{name: "stdio over MaxChunk", act: func(g *hostileGuest, _ uint32) {
			g.send(agentproto.FrameStdout, 77, append(chunk, 'y'))
		}, want: "a stdout frame of 32757 bytes (max 32756)"},
		{name: "credit of 3 bytes", act: func(g *hostileGuest, _ uint32) { g.send(agentproto.FrameCredit, 77, []byte{0, 0, 1}) }, want: "a credit frame of 3 bytes"},
		{name: "exit over 4 KiB", act: func(g *hostileGuest, _ uint32) {
			g.send(agentproto.FrameExit, 77, bytes.Repeat([]byte(" "), 5000))
		}, want: "an exit frame of 5000 bytes"},
		{name: "too many orphans", act: func(g *hostileGuest, _ uint32) {
			var b []byte
			for id := uint32(1); id <= MaxOrphans+1; id++ {
				b = append(b, rawFrame(agentproto.FrameStdout, 1<<31+id, []byte("."))...)
			}
			g.write(b)
		}, want: "output for more than 1024 exec ids the host never started"},
		{name: "output beyond the window", exec: true, act: func(g *hostileGuest, id uint32) {
			// The host's caller reads nothing: no credit comes back.
			for range agentproto.Window/agentproto.MaxChunk + 1 {
				g.send(agentproto.FrameStdout, id, chunk)
			}
		}, want: "bytes of output beyond the 262144-byte window"},
		{name: "output after the exit", exec: true, exited: true, act: func(g *hostileGuest, id uint32) {
			g.send(agentproto.FrameStderr, id, []byte("a")) // the exec blocks writing it
			g.sendJSON(agentproto.FrameExit, id, agentproto.ExitStatus{})
			g.send(agentproto.FrameStdout, id, []byte("b"))
		}, want: "stdout after its exit"},
		{name: "two exits", exec: true, exited: true, act: func(g *hostileGuest, id uint32) {
			g.send(agentproto.FrameStdout, id, []byte("a"))
			g.sendJSON(agentproto.FrameExit, id, agentproto.ExitStatus{})
			g.sendJSON(agentproto.FrameExit, id, agentproto.ExitStatus{})
		}, want: "a second exit"},
		{name: "undecodable exit", exec: true, act: func(g *hostileGuest, id uint32) {
			g.send(agentproto.FrameExit, id, []byte("{"))
		}, want: "undecodable exit status"},
		{name: "undecodable answer", act: func(g *hostileGuest, _ uint32) {}, want: "undecodable answer to request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, g := newHostile(t, true)
			var id uint32
			var res chan error
			w := newGate(t)
			switch {
			case tc.exec:
				id, res = startExec(t, c, g, w)
			case tc.name == "undecodable answer":
				go func() { _, _ = c.BlockDevices(context.Background()) }()
				r := <-g.requests
				g.send(agentproto.FrameResponse, r.id, []byte("{nope"))
			}
			tc.act(g, id)
			err := waitEnd(t, c)
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("connection ended with %v, want a protocol violation saying %q", err, tc.want)
			}
			if res != nil {
				w.release() // the slow consumer returns, to find the exec over
				select {
				case err := <-res:
					if tc.exited && err != nil {
						t.Errorf("exec ended with %v, want its exit", err)
					}
					if !tc.exited && (!errors.Is(err, ErrProtocol) || !errors.Is(err, ErrClosed)) {
						t.Errorf("exec ended with %v, want the violation", err)
					}
				case <-time.After(5 * time.Second):
					t.Error("the exec did not end with the connection")
				}
			}
			if _, err := c.Ping(context.Background()); !errors.Is(err, ErrClosed) {
				t.Errorf("ping after the violation: %v", err)
			}
		})
	}
}

// What a guest may send without breaking the protocol costs the host
// neither goroutines nor memory: answers and exits nobody waits for, and
// output of execs nobody waits for, are skipped unread; each such exec is
// released once.
func TestToleratedFloodIsCheap(t *testing.T) {
	c, g := newHostile(t, true)
	before := runtime.NumGoroutine()
	const ids = 16
	big := bytes.Repeat([]byte("r"), agentproto.MaxPayload)
	chunk := bytes.Repeat([]byte("o"), agentproto.MaxChunk)
	// Built before measuring: the guest's own allocations do not count.
	var flood bytes.Buffer
	for i := range 1000 {
		id := uint32(1<<31 + i%ids)
		flood.Write(rawFrame(agentproto.FrameStdout, id, chunk))
		flood.Write(rawFrame(agentproto.FrameStderr, id, nil))
		flood.Write(rawFrame(agentproto.FrameExit, id+ids, []byte(`{"code":1}`)))
		flood.Write(rawFrame(agentproto.FrameCredit, id, []byte{0, 0, 0, 1}))
		if i%32 == 0 {
			flood.Write(rawFrame(agentproto.FrameResponse, id, big))
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	allocBefore := ms.TotalAlloc
	peak := 0
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for i := 0; i < 200; i++ {
			peak = max(peak, runtime.NumGoroutine())
			time.Sleep(time.Millisecond)
		}
	}()
	g.write(flood.Bytes())
	if _, err := c.Ping(testCtx(t)); err != nil {
		t.Fatalf("ping after %d MiB of flood: %v (connection: %v)", flood.Len()>>20, err, c.Err())
	}
	runtime.ReadMemStats(&ms)
	allocated := ms.TotalAlloc - allocBefore
	<-sampled
	t.Logf("%d MiB of frames for execs nobody waits for: %d KiB allocated, goroutines %d before, %d at most",
		flood.Len()>>20, allocated>>10, before, peak)
	if allocated > 2<<20 {
		t.Errorf("the host allocated %d KiB for frames it should skip", allocated>>10)
	}
	// The sampler itself and the ping's timer are the only new ones.
	if peak > before+2 {
		t.Errorf("goroutines rose from %d to %d", before, peak)
	}
	// Each exec was released once: one SIGKILL, one unlimited credit.
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		n, credited := len(g.signals), len(g.credits)
		var twice bool
		for _, k := range g.signals {
			twice = twice || k != 1
		}
		g.mu.Unlock()
		if n == ids && credited == ids && !twice {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("releases: %d execs signalled, %d credited (want %d each, once)", n, credited, ids)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("connection ended: %v", err)
	}
}

// The host holds the window it gives: with a consumer that reads nothing,
// a guest that respects credit stalls at the window (no error), and the
// exec's buffer holds the window at most.
func TestSlowConsumerBoundsTheBuffer(t *testing.T) {
	c, g := newHostile(t, true)
	w := newGate(t)
	id, res := startExec(t, c, g, w)
	chunk := bytes.Repeat([]byte("x"), agentproto.MaxChunk)
	sent := 0
	for sent+len(chunk) <= agentproto.Window {
		g.send(agentproto.FrameStdout, id, chunk)
		sent += len(chunk)
	}
	g.send(agentproto.FrameStdout, id, chunk[:agentproto.Window-sent])
	// Ping goes behind the output: once it is answered, all is read.
	if _, err := c.Ping(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	e := c.lookupExec(id)
	e.mu.Lock()
	buffered, unacked := len(e.stdout)+len(e.stderr), e.unacked
	e.mu.Unlock()
	// The exec holds one take in its blocked writer, the rest here.
	if unacked != agentproto.Window || buffered > agentproto.Window {
		t.Fatalf("unacked %d, buffered %d; want the window (%d) and at most it", unacked, buffered, agentproto.Window)
	}
	g.sendJSON(agentproto.FrameExit, id, agentproto.ExitStatus{Code: 3})
	w.release()
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("exec did not end")
	}
	if w.n != agentproto.Window {
		t.Errorf("wrote %d bytes, want %d", w.n, agentproto.Window)
	}
	// The last Credit goes out as the exec returns.
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		credited := g.credits[id]
		g.mu.Unlock()
		if credited == agentproto.Window {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("credit given back %d, want %d", credited, agentproto.Window)
		}
		time.Sleep(time.Millisecond)
	}
}

// Close ends both of a connection's goroutines, also with a guest that
// neither reads nor writes.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	c, g := newHostile(t, true)
	g.mu.Lock() // keep the guest from counting: irrelevant here
	g.mu.Unlock()
	c.release(12345)
	c.Close()
	g.conn.Close()
	<-g.done
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !errors.Is(c.Err(), ErrHostClosed) {
		t.Errorf("Err after Close: %v", c.Err())
	}
}
