package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// fakeGuest accepts one connection on a unix socket and hands it to
// script, which plays the guest.
func fakeGuest(t *testing.T, sock string, script func(conn net.Conn, r *bufio.Reader)) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	t.Cleanup(func() { l.Close(); wg.Wait() })
	go func() {
		defer wg.Done()
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		script(conn, bufio.NewReader(conn))
	}()
}

func sendJSON(t *testing.T, w net.Conn, typ agentproto.FrameType, id uint32, v any) {
	f, err := agentproto.JSONFrame(typ, id, v)
	if err != nil {
		t.Error(err)
		return
	}
	if err := agentproto.WriteFrame(w, f); err != nil {
		t.Log(err)
	}
}

func readRequest(t *testing.T, r *bufio.Reader) (uint32, agentproto.Request, bool) {
	f, err := agentproto.ReadFrame(r)
	if err != nil {
		return 0, agentproto.Request{}, false
	}
	var req agentproto.Request
	if f.Type != agentproto.FrameRequest || f.DecodeJSON(&req) != nil {
		t.Errorf("want a request, got %s", f.Type)
		return 0, req, false
	}
	return f.ID, req, true
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A running guest (no Hello) is adopted through the Ping's answer, after
// stale frames and a cut frame from an earlier connection.
func TestDialAdoptsRunningGuest(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	fakeGuest(t, sock, func(conn net.Conn, r *bufio.Reader) {
		// The tail of a frame cut short, then a whole stale frame.
		_, _ = conn.Write([]byte{0xA5, 0x4E, 1, byte(agentproto.FrameStdout), 0, 0})
		_ = agentproto.WriteFrame(conn, agentproto.Frame{Type: agentproto.FrameStdout, ID: 99, Payload: []byte{0xA5, 0x4E, 1, 1, 0, 0, 0, 0, 0, 0, 0, 2, '{', '}'}})
		id, req, ok := readRequest(t, r)
		if !ok || req.Method != agentproto.MethodPing {
			t.Errorf("first request: %+v", req)
			return
		}
		res, _ := json.Marshal(agentproto.PingResult{ProtocolVersion: agentproto.Version, AgentVersion: "old", UptimeSeconds: 12.5})
		sendJSON(t, conn, agentproto.FrameResponse, id, agentproto.Response{Result: res})
		_, _ = io.Copy(io.Discard, r) // until the client closes
	})
	c, err := Dial(testCtx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if info := c.Info(); info.AgentVersion != "old" || info.Uptime != 12500*time.Millisecond {
		t.Fatalf("info %+v", info)
	}
}

// Dial waits for the socket to appear.
func TestDialWaitsForSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	go func() {
		time.Sleep(100 * time.Millisecond)
		fakeGuest(t, sock, func(conn net.Conn, r *bufio.Reader) {
			sendJSON(t, conn, agentproto.FrameHello, 0, agentproto.Hello{ProtocolVersion: agentproto.Version, AgentVersion: "new"})
			_, _ = io.Copy(io.Discard, r)
		})
	}()
	c, err := Dial(testCtx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Info().AgentVersion != "new" {
		t.Fatalf("info %+v", c.Info())
	}
}

func TestDialTimesOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := Dial(ctx, filepath.Join(t.TempDir(), "never.sock"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	// A guest that never speaks.
	sock := filepath.Join(t.TempDir(), "agent.sock")
	fakeGuest(t, sock, func(conn net.Conn, r *bufio.Reader) { _, _ = io.Copy(io.Discard, r) })
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if _, err := Dial(ctx2, sock); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("silent guest: %v", err)
	}
}

func TestDialVersionMismatch(t *testing.T) {
	for name, frame := range map[string][]byte{
		"header": {0xA5, 0x4E, 7, byte(agentproto.FrameHello), 0, 0, 0, 0, 0, 0, 0, 2, '{', '}'},
		"hello":  append([]byte{0xA5, 0x4E, agentproto.Version, byte(agentproto.FrameHello), 0, 0, 0, 0, 0, 0, 0, 22}, `{"protocolVersion":7} `...),
	} {
		t.Run(name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "agent.sock")
			fakeGuest(t, sock, func(conn net.Conn, r *bufio.Reader) {
				_, _ = conn.Write(frame)
				_, _ = io.Copy(io.Discard, r)
			})
			_, err := Dial(testCtx(t), sock)
			if !errors.Is(err, agentproto.ErrUnsupportedVersion) {
				t.Fatalf("got %v", err)
			}
		})
	}
}

// Answers come back to the right callers whatever their order; errors
// carry their code; a call's context bounds only that call; the end of the
// connection fails what is left.
func TestCalls(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	release := make(chan struct{})
	fakeGuest(t, sock, func(conn net.Conn, r *bufio.Reader) {
		sendJSON(t, conn, agentproto.FrameHello, 0, agentproto.Hello{ProtocolVersion: agentproto.Version})
		var held []uint32
		for {
			id, req, ok := readRequest(t, r)
			if !ok {
				return
			}
			switch req.Method {
			case agentproto.MethodPing:
				// Never answered: Dial's own ping, and the one
				// that times out.
			case agentproto.MethodBlockDevices:
				held = append(held, id)
				if len(held) == 3 {
					for i := len(held) - 1; i >= 0; i-- {
						res, _ := json.Marshal([]agentproto.BlockDevice{{Name: "vda", SizeBytes: uint64(held[i])}})
						sendJSON(t, conn, agentproto.FrameResponse, held[i], agentproto.Response{Result: res})
					}
				}
			case agentproto.MethodConfigureNetwork:
				sendJSON(t, conn, agentproto.FrameResponse, id, agentproto.Response{Error: "no link with mac 02:00:00:00:00:01", Code: agentproto.CodeNotFound})
			case agentproto.MethodShutdown:
				<-release
				return // the connection ends unanswered
			}
		}
	})
	c, err := Dial(testCtx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			devs, err := c.BlockDevices(testCtx(t))
			if err != nil || len(devs) != 1 || devs[0].SizeBytes == 0 {
				t.Errorf("block devices: %+v, %v", devs, err)
			}
		}()
	}
	wg.Wait()
	err = c.ConfigureNetwork(testCtx(t), agentproto.NetConfig{Interfaces: []agentproto.Interface{{MAC: "02:00:00:00:00:01"}}})
	var re *RemoteError
	if !errors.As(err, &re) || !errors.Is(err, errdefs.ErrNotFound) || re.Message != "no link with mac 02:00:00:00:00:01" {
		t.Fatalf("configure network: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("unanswered ping: %v", err)
	}
	close(release)
	if err := c.Shutdown(testCtx(t)); err != nil {
		t.Fatalf("shutdown ended by the connection: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed")
	}
	if _, err := c.Ping(testCtx(t)); !errors.Is(err, ErrClosed) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("ping after the end: %v", err)
	}
}

// A Hello in the middle of a connection means the guest lost the session.
func TestHelloMidSessionEndsConnection(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	fakeGuest(t, sock, func(conn net.Conn, r *bufio.Reader) {
		hello := agentproto.Hello{ProtocolVersion: agentproto.Version}
		sendJSON(t, conn, agentproto.FrameHello, 0, hello)
		readRequest(t, r) // Dial's ping
		readRequest(t, r) // the exec
		sendJSON(t, conn, agentproto.FrameHello, 0, hello)
		_, _ = io.Copy(io.Discard, r)
	})
	c, err := Dial(testCtx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Exec(testCtx(t), agentproto.ExecSpec{Argv: []string{"true"}}, nil, nil, nil)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("exec: %v", err)
	}
}

// Output of a process that no Exec waits for (left by an earlier
// connection) gets it killed and its output freed from flow control.
func TestOrphanOutputReleasesProcess(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	got := make(chan []agentproto.Frame, 1)
	fakeGuest(t, sock, func(conn net.Conn, r *bufio.Reader) {
		sendJSON(t, conn, agentproto.FrameHello, 0, agentproto.Hello{ProtocolVersion: agentproto.Version})
		readRequest(t, r) // Dial's ping
		_ = agentproto.WriteFrame(conn, agentproto.Frame{Type: agentproto.FrameStdout, ID: 77, Payload: []byte("stale")})
		_ = agentproto.WriteFrame(conn, agentproto.Frame{Type: agentproto.FrameStderr, ID: 77, Payload: []byte("stale")})
		var frames []agentproto.Frame
		for len(frames) < 2 {
			f, err := agentproto.ReadFrame(r)
			if err != nil {
				break
			}
			frames = append(frames, f)
		}
		got <- frames
	})
	c, err := Dial(testCtx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var frames []agentproto.Frame
	select {
	case frames = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing sent for the orphan")
	}
	var sig agentproto.Signal
	if len(frames) != 2 || frames[0].Type != agentproto.FrameSignal || frames[0].ID != 77 ||
		frames[0].DecodeJSON(&sig) != nil || sig.Signal != "SIGKILL" || frames[1].Type != agentproto.FrameCredit || frames[1].ID != 77 {
		t.Fatalf("frames %+v", frames)
	}
}
