//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
)

// agent is the state that outlives host connections.
type agent struct {
	log     *slog.Logger
	version string
	reaper  *reaper
	// sysBlock is where BlockDevices looks (/sys/block).
	sysBlock string
	// netMu serialises ConfigureNetwork calls.
	netMu sync.Mutex
	// powerOff runs after Shutdown is answered; nil does nothing (tests).
	powerOff func()
	// identity is what SetIdentity changes: the guest itself, or a fake
	// (tests).
	identity identitySystem
	// identityMu serialises SetIdentity calls.
	identityMu sync.Mutex
}

func newAgent(log *slog.Logger, version string) *agent {
	return &agent{log: log, version: version, reaper: newReaper(), sysBlock: "/sys/block",
		identity: osIdentity{machineIDPath: "/etc/machine-id"}}
}

// session is one host connection: from the guest's Hello to the host's
// disconnection. Processes started in a session die with it: their stdio
// has nowhere to go once the host that started them is gone.
type session struct {
	a   *agent
	log *slog.Logger
	r   io.Reader
	w   io.Writer
	wmu *sync.Mutex

	mu     sync.Mutex
	closed bool // under wmu
	execs  map[uint32]*process
}

// errSessionClosed is returned by writes of a session that ended.
var errSessionClosed = errors.New("session closed")

func (a *agent) newSession(rw io.ReadWriter, wmu *sync.Mutex) *session {
	return &session{a: a, log: a.log, r: rw, w: rw, wmu: wmu, execs: map[uint32]*process{}}
}

// run serves the session until the host disconnects (io.EOF) or the stream
// breaks.
func (s *session) run() error {
	defer s.end()
	hello, err := agentproto.JSONFrame(agentproto.FrameHello, 0, agentproto.Hello{ProtocolVersion: agentproto.Version, AgentVersion: s.a.version})
	if err != nil {
		return err
	}
	if err := s.send(hello); err != nil {
		return err
	}
	br := bufio.NewReaderSize(s.r, 64<<10)
	for {
		f, err := agentproto.ReadFrame(br)
		if err != nil {
			return err
		}
		s.handle(f)
	}
}

// end closes the session for writing and kills its processes.
func (s *session) end() {
	s.wmu.Lock()
	s.closed = true
	s.wmu.Unlock()
	s.mu.Lock()
	execs := s.execs
	s.execs = map[uint32]*process{}
	s.mu.Unlock()
	for _, p := range execs {
		p.abort()
	}
}

// send writes one frame, unless the session has ended.
func (s *session) send(f agentproto.Frame) error {
	b, err := agentproto.AppendFrame(nil, f)
	if err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return errSessionClosed
	}
	_, err = s.w.Write(b)
	return err
}

func (s *session) handle(f agentproto.Frame) {
	switch f.Type {
	case agentproto.FrameRequest:
		var req agentproto.Request
		if err := f.DecodeJSON(&req); err != nil {
			s.reply(f.ID, nil, coded(agentproto.CodeInvalidArgument, err))
			return
		}
		s.request(f.ID, req)
	case agentproto.FrameStdin, agentproto.FrameStdinClose, agentproto.FrameSignal, agentproto.FrameCredit:
		s.mu.Lock()
		p := s.execs[f.ID]
		s.mu.Unlock()
		if p == nil {
			return // the exec has ended; the host learns it from the Exit frame
		}
		switch f.Type {
		case agentproto.FrameStdin:
			p.queueStdin(f.Payload)
		case agentproto.FrameStdinClose:
			p.closeStdin()
		case agentproto.FrameSignal:
			var sig agentproto.Signal
			if err := f.DecodeJSON(&sig); err != nil {
				s.log.Warn("bad signal frame", "exec", f.ID, "error", err)
				return
			}
			if err := p.signal(sig.Signal); err != nil && !errors.Is(err, errNotRunning) {
				s.log.Warn("signal exec", "exec", f.ID, "signal", sig.Signal, "error", err)
			}
		case agentproto.FrameCredit:
			n, err := f.Credit()
			if err != nil {
				s.log.Warn("bad credit frame", "exec", f.ID, "error", err)
				return
			}
			p.addCredit(n)
		}
	default:
		s.log.Warn("unexpected frame from the host", "type", f.Type, "id", f.ID)
	}
}

// request runs a method. Exec starts synchronously, so that frames the
// host sends after the request find the process; slow methods run on
// their own goroutine.
func (s *session) request(id uint32, req agentproto.Request) {
	switch req.Method {
	case agentproto.MethodPing:
		s.reply(id, s.ping(), nil)
	case agentproto.MethodExec:
		var spec agentproto.ExecSpec
		if err := decodeParams(req.Params, &spec); err != nil {
			s.reply(id, nil, err)
			return
		}
		p, err := s.startExec(id, spec)
		if err != nil {
			s.reply(id, nil, err)
			return
		}
		// The answer goes out before any stdio frame: the pumps start
		// after it.
		s.reply(id, agentproto.ExecStarted{PID: p.pid}, nil)
		p.run()
	case agentproto.MethodConfigureNetwork:
		var cfg agentproto.NetConfig
		if err := decodeParams(req.Params, &cfg); err != nil {
			s.reply(id, nil, err)
			return
		}
		go func() {
			s.a.netMu.Lock()
			defer s.a.netMu.Unlock()
			s.reply(id, nil, configureNetwork(cfg))
		}()
	case agentproto.MethodSetIdentity:
		var ident agentproto.Identity
		if err := decodeParams(req.Params, &ident); err != nil {
			s.reply(id, nil, err)
			return
		}
		go func() {
			s.a.identityMu.Lock()
			defer s.a.identityMu.Unlock()
			err := setIdentity(s.a.identity, ident)
			if err != nil {
				s.log.Error("set identity", "error", err)
			} else {
				s.log.Info("identity set", "hostname", ident.Hostname, "machineId", ident.MachineID, "clock", ident.UnixNano != 0)
			}
			s.reply(id, nil, err)
		}()
	case agentproto.MethodBlockDevices:
		go func() {
			devs, err := blockDevices(s.a.sysBlock)
			s.reply(id, devs, err)
		}()
	case agentproto.MethodShutdown:
		err := s.reply(id, nil, nil)
		s.log.Info("shutdown requested", "reply error", err)
		if s.a.powerOff != nil {
			go s.a.powerOff()
		}
	default:
		s.reply(id, nil, coded(agentproto.CodeInvalidArgument, fmt.Errorf("unknown method %q", req.Method)))
	}
}

func (s *session) ping() agentproto.PingResult {
	return agentproto.PingResult{ProtocolVersion: agentproto.Version, AgentVersion: s.a.version, UptimeSeconds: uptime().Seconds()}
}

// uptime is the time since the guest kernel booted.
func uptime() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// reply answers request id with result, or with err.
func (s *session) reply(id uint32, result any, err error) error {
	var resp agentproto.Response
	if err != nil {
		resp.Error = err.Error()
		resp.Code = agentproto.CodeInternal
		var ce *codedError
		if errors.As(err, &ce) {
			resp.Code = ce.code
		}
	} else if result != nil {
		b, merr := json.Marshal(result)
		if merr != nil {
			resp.Error, resp.Code = fmt.Sprintf("encode result: %v", merr), agentproto.CodeInternal
		} else {
			resp.Result = b
		}
	}
	f, ferr := agentproto.JSONFrame(agentproto.FrameResponse, id, resp)
	if ferr != nil {
		f, _ = agentproto.JSONFrame(agentproto.FrameResponse, id, agentproto.Response{Error: ferr.Error(), Code: agentproto.CodeInternal})
	}
	if err := s.send(f); err != nil {
		if !errors.Is(err, errSessionClosed) {
			s.log.Warn("send response", "id", id, "error", err)
		}
		return err
	}
	return nil
}

func decodeParams(params json.RawMessage, v any) error {
	if len(params) == 0 {
		return coded(agentproto.CodeInvalidArgument, errors.New("missing params"))
	}
	if err := json.Unmarshal(params, v); err != nil {
		return coded(agentproto.CodeInvalidArgument, fmt.Errorf("decode params: %w", err))
	}
	return nil
}

// codedError carries the agentproto code the host gets with the message.
type codedError struct {
	code agentproto.ErrorCode
	err  error
}

func coded(code agentproto.ErrorCode, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }
