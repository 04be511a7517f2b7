package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
)

// Ops of FuzzGuestStream's guest: each is one byte of the script,
// followed by its argument byte.
const (
	opAnswer      = iota // answer the next request the host sent
	opStdout             // output within the credit the host gave
	opStderr             //
	opExit               // an exec's exit
	opOrphan             // output for an exec the host never started
	opStrayAnswer        // an answer nobody asked for, arg KiB long
	opCredit             // stdin credit, arg KiB
	opGarbage            // arg bytes of the script, raw (a violation, mostly)
	opFlood              // output ignoring credit (a violation)
	opHostOnly           // a frame only the host sends (a violation)
	opHello              // a new session (ends the connection)
	opPause              // let the host catch up
	numOps
)

// guestExec is an exec as the fuzzing guest sees it.
type guestExec struct {
	id     uint32
	sent   uint64
	exited bool
}

// FuzzGuestStream drives a client with a guest that plays a script: legal
// frames, frames for unknown execs, floods, garbage. Whatever the script,
// the client never panics or hangs, never buffers more than the window per
// exec, ends every call once the connection ends, leaves no goroutine
// behind, and calls a script without violations no violation.
//
//	go test -fuzz FuzzGuestStream ./nodeagent/guest/client
//	go test -race -run FuzzGuestStream ./nodeagent/guest/client
func FuzzGuestStream(f *testing.F) {
	op := func(ops ...byte) []byte { return ops }
	f.Add(op(opAnswer, 0, opAnswer, 0, opAnswer, 0, opStdout, 9, opStderr, 3, opExit, 0, opStdout, 200, opExit, 1, opAnswer, 0, opExit, 2))
	f.Add(op(opAnswer, 0, opAnswer, 1, opStdout, 255, opStdout, 255, opStdout, 255, opPause, 0, opStdout, 255, opCredit, 64, opExit, 0))
	f.Add(op(opOrphan, 1, opOrphan, 2, opOrphan, 1, opStrayAnswer, 255, opStrayAnswer, 0, opAnswer, 0, opOrphan, 3))
	f.Add(op(opAnswer, 0, opFlood, 0))
	f.Add(op(opAnswer, 0, opStdout, 40, opGarbage, 12, 0xA5, 0x4E, 1, 6, 0, 0, 0, 1, 0x7f, 0, 0, 0))
	f.Add(op(opAnswer, 0, opHostOnly, 1, opStdout, 1))
	f.Add(op(opAnswer, 0, opAnswer, 0, opHello, 0, opStdout, 1))
	f.Add(op(opPause, 0, opAnswer, 2, opAnswer, 2, opAnswer, 2, opAnswer, 2, opExit, 9, opExit, 9))
	f.Fuzz(func(t *testing.T, script []byte) {
		if len(script) > 512 {
			return
		}
		before := runtime.NumGoroutine()
		c, g := newHostile(t, true)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()

		// The host: three execs (one with stdin, one with a slow
		// consumer, one whose consumer fails) and a call.
		var wg sync.WaitGroup
		run := func(f func()) {
			wg.Add(1)
			go func() { defer wg.Done(); f() }()
		}
		var outs [3]bytes.Buffer
		run(func() {
			_, _ = c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"a"}}, strings.NewReader(strings.Repeat("in", 100<<10)), &outs[0], &outs[0])
		})
		run(func() {
			_, _ = c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"b"}}, nil, slowWriter{&outs[1]}, nil)
		})
		run(func() {
			_, _ = c.Exec(ctx, agentproto.ExecSpec{Argv: []string{"c"}}, nil, failingWriter{}, nil)
		})
		run(func() { _, _ = c.BlockDevices(ctx) })

		illegal := playScript(t, c, g, script)
		g.conn.Close() // the guest goes away: every call must end
		wg.Wait()
		if ctx.Err() != nil {
			t.Fatal("host calls did not end with the connection")
		}
		<-c.Done()
		if err := c.Err(); !illegal && errors.Is(err, ErrProtocol) {
			t.Fatalf("a legal script ended in %v", err)
		}
		c.Close()
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<16)
				t.Fatalf("%d goroutines left, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(time.Millisecond)
		}
	})
}

// playScript plays the guest's side and reports whether it broke the
// protocol (sent bytes that are no frame, a frame only the host sends,
// or output beyond the credit).
func playScript(t *testing.T, c *Client, g *hostileGuest, script []byte) (illegal bool) {
	var execs []*guestExec
	chunk := bytes.Repeat([]byte("o"), agentproto.MaxChunk)
	pick := func(arg byte) *guestExec {
		if len(execs) == 0 {
			return nil
		}
		return execs[int(arg)%len(execs)]
	}
	// credit is the output window the guest knows it has: the host may
	// have given more back already, never less.
	credit := func(e *guestExec) uint64 {
		g.mu.Lock()
		defer g.mu.Unlock()
		return agentproto.Window + g.credits[e.id] - e.sent
	}
	for i := 0; i+1 < len(script); i += 2 {
		op, arg := script[i]%numOps, script[i+1]
		switch op {
		case opAnswer:
			select {
			case r := <-g.requests:
				var result any = []agentproto.BlockDevice{}
				if r.req.Method == agentproto.MethodExec {
					execs = append(execs, &guestExec{id: r.id})
					result = agentproto.ExecStarted{PID: int(r.id)}
				}
				if arg%4 == 3 {
					g.sendJSON(agentproto.FrameResponse, r.id, agentproto.Response{Error: "no", Code: agentproto.CodeNotFound})
					break
				}
				b, _ := json.Marshal(result)
				g.sendJSON(agentproto.FrameResponse, r.id, agentproto.Response{Result: b})
			case <-time.After(20 * time.Millisecond):
			}
		case opStdout, opStderr:
			e := pick(arg)
			if e == nil || e.exited {
				break
			}
			n := min(uint64(arg)*128+1, credit(e), agentproto.MaxChunk)
			if n == 0 {
				break
			}
			t := agentproto.FrameStdout
			if op == opStderr {
				t = agentproto.FrameStderr
			}
			g.send(t, e.id, chunk[:n])
			e.sent += n
		case opExit:
			if e := pick(arg); e != nil && !e.exited {
				g.sendJSON(agentproto.FrameExit, e.id, agentproto.ExitStatus{Code: int(arg)})
				e.exited = true
			}
		case opOrphan:
			g.send(agentproto.FrameStdout, 1<<31+uint32(arg), chunk[:arg])
		case opStrayAnswer:
			g.send(agentproto.FrameResponse, 1<<30+uint32(arg), bytes.Repeat([]byte(" "), int(arg)<<10))
		case opCredit:
			if e := pick(arg); e != nil {
				g.send(agentproto.FrameCredit, e.id, binary.BigEndian.AppendUint32(nil, uint32(arg)<<10))
			}
		case opGarbage:
			end := min(len(script), i+2+int(arg)%32)
			g.write(script[i+2 : end])
			i = end - 2
			illegal = true
		case opFlood:
			if e := pick(arg); e != nil && !e.exited {
				for range agentproto.Window/agentproto.MaxChunk + 2 {
					g.send(agentproto.FrameStdout, pick(arg).id, chunk)
				}
				illegal = true
			}
		case opHostOnly:
			g.send(agentproto.FrameStdin+agentproto.FrameType(arg%2), uint32(arg), []byte("x"))
			illegal = true
		case opHello:
			g.sendJSON(agentproto.FrameHello, 0, agentproto.Hello{ProtocolVersion: agentproto.Version})
		case opPause:
			time.Sleep(time.Millisecond)
		}
		checkBuffers(t, c)
	}
	// Let the host read what is in flight, unless the stream is broken.
	if !illegal {
		pctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = c.Ping(pctx)
		cancel()
		checkBuffers(t, c)
	}
	return illegal
}

// checkBuffers checks that no exec holds more output than the window.
func checkBuffers(t *testing.T, c *Client) {
	c.mu.Lock()
	execs := make([]*execState, 0, len(c.execs))
	for _, e := range c.execs {
		execs = append(execs, e)
	}
	c.mu.Unlock()
	for _, e := range execs {
		e.mu.Lock()
		buffered, unacked := len(e.stdout)+len(e.stderr), e.unacked
		e.mu.Unlock()
		if buffered > agentproto.Window || unacked > agentproto.Window || unacked < 0 {
			t.Fatalf("exec %d: %d bytes buffered, %d unacked; the window is %d", e.id, buffered, unacked, agentproto.Window)
		}
	}
}

type slowWriter struct{ w io.Writer }

func (s slowWriter) Write(b []byte) (int, error) {
	time.Sleep(100 * time.Microsecond)
	return s.w.Write(b)
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("consumer gone") }
