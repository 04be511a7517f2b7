//go:build linux

package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
)

// exitGrace is how long output is still read after an exec's process
// ended: background children may hold its stdout or stderr open forever.
const exitGrace = time.Second

// process is one exec: a process in a session of its own, its stdio
// pumped to and from the host with per-direction flow control.
type process struct {
	s   *session
	id  uint32
	pid int

	wait           <-chan syscall.WaitStatus
	stdin          *os.File // write end
	stdout, stderr *os.File // read ends

	mu       sync.Mutex
	cond     *sync.Cond
	credit   int64    // output window left
	stdinQ   [][]byte // stdin data waiting for the pipe
	queued   int      // bytes in stdinQ
	inClose  bool     // close stdin once stdinQ is written
	inBroken bool     // the pipe is closed: drop data, return credit
	aborted  bool
}

// startExec starts spec's process with pipes for its stdio.
func (s *session) startExec(id uint32, spec agentproto.ExecSpec) (_ *process, err error) {
	if err := spec.Validate(); err != nil {
		return nil, coded(agentproto.CodeInvalidArgument, err)
	}
	s.mu.Lock()
	_, dup := s.execs[id]
	s.mu.Unlock()
	if dup {
		return nil, coded(agentproto.CodeAlreadyExists, fmt.Errorf("id %d is running", id))
	}
	env := spec.Env
	path := agentproto.DefaultPath
	hasPath := false
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path, hasPath = v, true
		}
	}
	if !hasPath {
		env = append(env[:len(env):len(env)], "PATH="+path)
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}
	argv0, err := lookPath(spec.Argv[0], path, dir)
	if err != nil {
		return nil, err
	}

	var files []*os.File // closed on return: the parent's copies of the child's ends, or all on failure
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	pipe := func() (r, w *os.File) {
		if err != nil {
			return nil, nil
		}
		if r, w, err = os.Pipe(); err != nil {
			err = fmt.Errorf("pipe: %w", err)
		}
		files = append(files, r, w)
		return r, w
	}
	inR, inW := pipe()
	outR, outW := pipe()
	errR, errW := pipe()
	if err != nil {
		return nil, err
	}
	// Fd puts the child's ends in blocking mode, as programs expect.
	attr := &syscall.ProcAttr{Dir: dir, Env: env, Files: []uintptr{inR.Fd(), outW.Fd(), errW.Fd()},
		Sys: &syscall.SysProcAttr{Setsid: true}}
	pid, wait, err := s.a.reaper.forkExec(argv0, spec.Argv, attr)
	if err != nil {
		code := agentproto.CodeFailedPrecondition
		if errors.Is(err, fs.ErrNotExist) {
			code = agentproto.CodeNotFound
		}
		return nil, coded(code, fmt.Errorf("start %q in %s: %w", spec.Argv[0], dir, err))
	}
	files = []*os.File{inR, outW, errW}
	p := &process{s: s, id: id, pid: pid, wait: wait, stdin: inW, stdout: outR, stderr: errR, credit: agentproto.Window}
	p.cond = sync.NewCond(&p.mu)
	s.mu.Lock()
	s.execs[id] = p
	s.mu.Unlock()
	return p, nil
}

// lookPath finds name in path (a PATH value) the way execvp does; names
// with a slash are taken as they are (relative to dir).
func lookPath(name, path, dir string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		cand := filepath.Join(d, name)
		if !filepath.IsAbs(cand) {
			cand = filepath.Join(dir, cand)
		}
		if st, err := os.Stat(cand); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return cand, nil
		}
	}
	return "", coded(agentproto.CodeNotFound, fmt.Errorf("%q: executable file not found in PATH %s", name, path))
}

// run pumps the process's stdio and, once it has exited and its output is
// drained, sends its Exit frame.
func (p *process) run() {
	var pumps sync.WaitGroup
	pumps.Add(2)
	go p.pumpOut(p.stdout, agentproto.FrameStdout, &pumps)
	go p.pumpOut(p.stderr, agentproto.FrameStderr, &pumps)
	go p.pumpIn()
	go func() {
		ws := <-p.wait
		drained := make(chan struct{})
		go func() { pumps.Wait(); close(drained) }()
		select {
		case <-drained:
		case <-time.After(exitGrace):
			// Someone still holds the pipes open: stop waiting for
			// them. The pumps read what is buffered and stop.
			_ = p.stdout.SetReadDeadline(time.Now())
			_ = p.stderr.SetReadDeadline(time.Now())
			<-drained
		}
		st := exitStatus(ws)
		if f, err := agentproto.JSONFrame(agentproto.FrameExit, p.id, st); err == nil {
			_ = p.s.send(f)
		}
		p.s.mu.Lock()
		if p.s.execs[p.id] == p {
			delete(p.s.execs, p.id)
		}
		p.s.mu.Unlock()
		p.finish()
	}()
}

func exitStatus(ws syscall.WaitStatus) agentproto.ExitStatus {
	if ws.Signaled() {
		return agentproto.ExitStatus{Code: 128 + int(ws.Signal()), Signal: unix.SignalName(ws.Signal())}
	}
	return agentproto.ExitStatus{Code: ws.ExitStatus()}
}

// finish releases the process's pipes and wakes its goroutines.
func (p *process) finish() {
	p.mu.Lock()
	p.aborted = true
	p.cond.Broadcast()
	p.mu.Unlock()
	p.stdin.Close()
	p.stdout.Close()
	p.stderr.Close()
}

// abort kills the process group: the session that started it is over.
func (p *process) abort() {
	_ = p.s.a.reaper.signal(p.pid, syscall.SIGKILL)
	p.mu.Lock()
	p.aborted = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// signal sends a named or numbered signal to the process group.
func (p *process) signal(name string) error {
	sig, err := parseSignal(name)
	if err != nil {
		return err
	}
	return p.s.a.reaper.signal(p.pid, sig)
}

func parseSignal(name string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(name); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	up := strings.ToUpper(name)
	if !strings.HasPrefix(up, "SIG") {
		up = "SIG" + up
	}
	if sig := unix.SignalNum(up); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", name)
}

// reserve waits for output window and takes up to max bytes of it; 0
// means the process is being torn down.
func (p *process) reserve(max int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.credit <= 0 && !p.aborted {
		p.cond.Wait()
	}
	if p.aborted {
		return 0
	}
	n := int(min(p.credit, int64(max)))
	p.credit -= int64(n)
	return n
}

func (p *process) addCredit(n uint32) {
	p.mu.Lock()
	p.credit += int64(n)
	p.cond.Broadcast()
	p.mu.Unlock()
}

// pumpOut sends what the process writes to r as frames of type t.
func (p *process) pumpOut(r *os.File, t agentproto.FrameType, wg *sync.WaitGroup) {
	defer wg.Done()
	buf := make([]byte, agentproto.MaxChunk)
	for {
		n := p.reserve(len(buf))
		if n == 0 {
			return
		}
		m, err := r.Read(buf[:n])
		p.addCredit(uint32(n - m))
		if m > 0 {
			if serr := p.s.send(agentproto.Frame{Type: t, ID: p.id, Payload: buf[:m]}); serr != nil {
				return
			}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			p.drain(r, t, buf)
			return
		}
		if err != nil {
			return
		}
	}
}

// drain sends what is left in r's pipe without waiting for more.
func (p *process) drain(r *os.File, t agentproto.FrameType, buf []byte) {
	_ = r.SetReadDeadline(time.Time{})
	rc, err := r.SyscallConn()
	if err != nil {
		return
	}
	for {
		n := p.reserve(len(buf))
		if n == 0 {
			return
		}
		var m int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			m, rerr = unix.Read(int(fd), buf[:n])
			return true // never wait: the pipe may never see EOF
		}); err != nil {
			return
		}
		if m < 0 {
			m = 0
		}
		p.addCredit(uint32(n - m))
		if m == 0 || rerr != nil {
			return
		}
		if p.s.send(agentproto.Frame{Type: t, ID: p.id, Payload: buf[:m]}) != nil {
			return
		}
	}
}

// queueStdin takes data from the host for the process's stdin.
func (p *process) queueStdin(b []byte) {
	p.mu.Lock()
	switch {
	case p.inBroken || p.inClose || p.aborted:
		p.mu.Unlock()
		// Nobody reads it: give the window back at once.
		_ = p.s.send(agentproto.CreditFrame(p.id, uint32(len(b))))
		return
	case p.queued+len(b) > agentproto.Window:
		p.mu.Unlock()
		p.s.log.Warn("host sent stdin beyond its window; dropped", "exec", p.id, "bytes", len(b))
		return
	}
	p.stdinQ = append(p.stdinQ, b)
	p.queued += len(b)
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *process) closeStdin() {
	p.mu.Lock()
	p.inClose = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// pumpIn writes queued stdin data to the pipe, giving the window back as
// it goes, and closes the pipe after StdinClose.
func (p *process) pumpIn() {
	for {
		p.mu.Lock()
		for len(p.stdinQ) == 0 && !p.inClose && !p.aborted {
			p.cond.Wait()
		}
		if len(p.stdinQ) == 0 || p.aborted {
			p.inBroken = true
			p.mu.Unlock()
			p.stdin.Close()
			return
		}
		b := p.stdinQ[0]
		p.stdinQ = p.stdinQ[1:]
		p.mu.Unlock()
		_, err := p.stdin.Write(b)
		n := len(b)
		p.mu.Lock()
		p.queued -= n
		if err != nil {
			// The process closed its stdin (or exited): what is queued
			// is dropped, and its window given back.
			n += p.queued
			p.stdinQ, p.queued, p.inBroken = nil, 0, true
		}
		p.mu.Unlock()
		_ = p.s.send(agentproto.CreditFrame(p.id, uint32(n)))
		if err != nil {
			p.stdin.Close()
			return
		}
	}
}
