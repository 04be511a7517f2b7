//go:build linux

// Command hostileguest is the /init of the e2e tests' hostile sandboxes.
// In a sandbox whose ID starts with "hostile" it plays a guest agent that
// a pod has taken over: it greets the host and answers Pings, and each
// Exec request names an attack (argv[0]) that it runs against the host:
//
//	flood SECONDS  output for 256 exec IDs the host never started, 1 MiB
//	               answers nobody asked for, stray exits and credits, and
//	               the serial console written flat out, for SECONDS; then
//	               the exec exits 0
//	console BYTES  the serial console written flat out, BYTES of it
//	ignore-credit  the exec's output, past the window, without waiting
//	               for credit
//	garbage        bytes that are no frame
//	unknown-ids    output for more exec IDs than the host allows
//	silence SECS   no answer to anything for SECS
//	hello          a new session in the middle of this one
//
// In any other sandbox it execs the real guest agent, which the test puts
// at /sbin/nodeinfra-agent, so that one initramfs serves the hostile
// sandboxes and their well-behaved neighbours. It is a test fixture:
// nothing in production runs it.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
)

// realAgent is where the test puts the real guest agent.
const realAgent = "/sbin/nodeinfra-agent"

func main() {
	if err := unix.Mount("proc", "/proc", "proc", 0, ""); err != nil {
		fatal("mount proc: %v", err)
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fatal("read cmdline: %v", err)
	}
	if !strings.Contains(" "+string(cmdline), " nodeinfra.id=hostile") {
		// Leave the system as the kernel gave it to the real agent.
		_ = unix.Unmount("/proc", 0)
		err := unix.Exec(realAgent, []string{realAgent}, os.Environ())
		fatal("exec %s: %v", realAgent, err)
	}
	for _, m := range []struct{ src, target, fstype string }{{"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"}} {
		if err := unix.Mount(m.src, m.target, m.fstype, 0, ""); err != nil && err != unix.EBUSY {
			fatal("mount %s: %v", m.target, err)
		}
	}
	p := openPort("agent.0")
	fmt.Fprintln(os.Stderr, "hostileguest: ready")
	g := &guest{p: p}
	g.send(json1(agentproto.FrameHello, 0, agentproto.Hello{ProtocolVersion: agentproto.Version, AgentVersion: "hostile"}))
	g.serve()
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "hostileguest: "+format+"\n", args...)
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// port is the virtio-serial port, blocking: a write waits for the host, a
// read while the host is away sees EOF, so it waits and tries again.
type port struct{ fd int }

func openPort(name string) *port {
	for {
		names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
		for _, f := range names {
			if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == name {
				dev := filepath.Join("/dev", filepath.Base(filepath.Dir(f)))
				if fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NOCTTY, 0); err == nil {
					return &port{fd: fd}
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *port) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(p.fd, b)
		switch {
		case err == unix.EINTR:
		case err != nil:
			return 0, err
		case n > 0:
			return n, nil
		default: // no host: wait for the next one
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func (p *port) Write(b []byte) (int, error) {
	done := 0
	for done < len(b) {
		n, err := unix.Write(p.fd, b[done:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

type guest struct {
	p      *port
	wmu    sync.Mutex
	silent atomic.Int64 // unix nanoseconds until which nothing is answered
}

// send writes whole frames (one write, so attacks never interleave
// inside a frame).
func (g *guest) send(b []byte) {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	_, _ = g.p.Write(b)
}

func frame(t agentproto.FrameType, id uint32, payload []byte) []byte {
	b := []byte{agentproto.Magic[0], agentproto.Magic[1], agentproto.Version, byte(t)}
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

func json1(t agentproto.FrameType, id uint32, v any) []byte {
	b, _ := json.Marshal(v)
	return frame(t, id, b)
}

func (g *guest) reply(id uint32, result any) {
	b, _ := json.Marshal(result)
	g.send(json1(agentproto.FrameResponse, id, agentproto.Response{Result: b}))
}

// serve reads the host's frames forever: it answers Pings and runs the
// attack each Exec names; stdin, credit and signals are ignored.
func (g *guest) serve() {
	r := io.Reader(g.p)
	for {
		f, err := agentproto.ReadFrame(r)
		if err != nil {
			// The host left in the middle of a frame; the next one
			// starts afresh.
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if f.Type != agentproto.FrameRequest || time.Now().UnixNano() < g.silent.Load() {
			continue
		}
		var req agentproto.Request
		_ = f.DecodeJSON(&req)
		switch req.Method {
		case agentproto.MethodPing:
			g.reply(f.ID, agentproto.PingResult{ProtocolVersion: agentproto.Version, AgentVersion: "hostile"})
		case agentproto.MethodShutdown:
			g.reply(f.ID, nil)
			unix.Sync()
			_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		case agentproto.MethodExec:
			var spec agentproto.ExecSpec
			_ = json.Unmarshal(req.Params, &spec)
			g.reply(f.ID, agentproto.ExecStarted{PID: 1})
			go g.attack(f.ID, spec.Argv)
		default:
			g.send(json1(agentproto.FrameResponse, f.ID, agentproto.Response{Error: "hostile", Code: agentproto.CodeInternal}))
		}
	}
}

func (g *guest) exit(id uint32, code int) {
	g.send(json1(agentproto.FrameExit, id, agentproto.ExitStatus{Code: code}))
}

func (g *guest) attack(id uint32, argv []string) {
	arg := func(i, def int) int {
		if len(argv) > i {
			if n, err := strconv.Atoi(argv[i]); err == nil {
				return n
			}
		}
		return def
	}
	switch argv[0] {
	case "flood":
		frames, sent := g.flood(time.Duration(arg(1, 10)) * time.Second)
		g.send(frame(agentproto.FrameStderr, id, fmt.Appendf(nil, "%d frames, %d MiB, for execs the host never started\n", frames, sent>>20)))
		g.exit(id, 0)
	case "console":
		writeConsole(time.Time{}, int64(arg(1, 3<<20)))
		g.exit(id, 0)
	case "ignore-credit":
		// Twice the window, and more, without waiting for credit.
		chunk := bytes.Repeat([]byte("c"), agentproto.MaxChunk)
		for range 4 * agentproto.Window / agentproto.MaxChunk {
			g.send(frame(agentproto.FrameStdout, id, chunk))
		}
	case "garbage":
		b := make([]byte, 4096)
		for i := range b {
			b[i] = byte(rand.Uint32())
		}
		b[0] = 0 // never the magic
		g.send(b)
	case "unknown-ids":
		var b []byte
		for i := range uint32(2000) {
			b = append(b, frame(agentproto.FrameStdout, 1<<30+i, []byte("."))...)
		}
		g.send(b)
	case "silence":
		g.silent.Store(time.Now().Add(time.Duration(arg(1, 3)) * time.Second).UnixNano())
	case "hello":
		g.send(json1(agentproto.FrameHello, 0, agentproto.Hello{ProtocolVersion: agentproto.Version, AgentVersion: "hostile"}))
	default:
		g.send(frame(agentproto.FrameStderr, id, []byte("unknown attack\n")))
		g.exit(id, 2)
	}
}

// flood sends, for d, frames for execs the host never started, answers
// it never asked for, and stray exits and credits, as fast as the port
// takes them, while a second goroutine writes the console flat out.
func (g *guest) flood(d time.Duration) (frames, sent int) {
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		writeConsole(end, 0)
	}()
	chunk := bytes.Repeat([]byte("o"), agentproto.MaxChunk)
	big := frame(agentproto.FrameResponse, 0, bytes.Repeat([]byte(" "), agentproto.MaxPayload))
	var batch []byte
	for i := uint32(0); time.Now().Before(end); i++ {
		id := 1<<31 + i%256
		batch = append(batch[:0], frame(agentproto.FrameStdout, id, chunk)...)
		batch = append(batch, frame(agentproto.FrameExit, id+256, []byte(`{"code":0}`))...)
		batch = append(batch, frame(agentproto.FrameCredit, id, []byte{0, 0, 16, 0})...)
		g.send(batch)
		frames, sent = frames+3, sent+len(batch)
		if i%64 == 0 {
			binary.BigEndian.PutUint32(big[4:8], id)
			g.send(big)
			frames, sent = frames+1, sent+len(big)
		}
	}
	wg.Wait()
	return frames, sent
}

// writeConsole writes the serial console flat out until end (zero: no
// limit in time) or, when size is positive, until size bytes are written.
func writeConsole(end time.Time, size int64) {
	tty, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostileguest: console:", err)
		return
	}
	defer tty.Close()
	line := bytes.Repeat([]byte("flood the console "), 227) // about 4 KiB
	line = append(line, '\n')
	var written int64
	for (end.IsZero() || time.Now().Before(end)) && (size <= 0 || written < size) {
		n, err := tty.Write(line)
		written += int64(n)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
	}
}
