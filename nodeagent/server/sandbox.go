package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/metrics"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
)

// SandboxServer serves apiv1.SandboxService from a sandbox.Service. With a
// nil Svc (sandboxes not enabled on this node) every call is
// FailedPrecondition.
type SandboxServer struct {
	apiv1.UnimplementedSandboxServiceServer
	Svc sandbox.Service
}

var _ apiv1.SandboxServiceServer = (*SandboxServer)(nil)

// NewSandboxServer returns a SandboxServer for svc, which may be nil.
func NewSandboxServer(svc sandbox.Service) *SandboxServer {
	return &SandboxServer{Svc: svc}
}

// execChunk bounds the stdout and stderr messages of Exec, well below
// gRPC's default 4 MiB message limit.
const execChunk = 32 << 10

var errNoSandboxes = fmt.Errorf("sandboxes are not enabled on this node: %w", errdefs.ErrFailedPrecondition)

func (s *SandboxServer) service() (sandbox.Service, error) {
	if s.Svc == nil {
		return nil, errdefs.ToGRPC(errNoSandboxes)
	}
	return s.Svc, nil
}

// CreateSandbox implements apiv1.SandboxServiceServer.
func (s *SandboxServer) CreateSandbox(ctx context.Context, req *apiv1.CreateSandboxRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	spec := SpecFromProto(req.GetSpec()).WithDefaults()
	if err := spec.Validate(); err != nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("create sandbox: %w", err))
	}
	sb, err := svc.Create(ctx, spec, req.GetWait())
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return SandboxToProto(sb), nil
}

// StopSandbox implements apiv1.SandboxServiceServer.
func (s *SandboxServer) StopSandbox(ctx context.Context, req *apiv1.StopSandboxRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	if err := sandbox.ValidateID(req.GetId()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	sb, err := svc.Stop(ctx, req.GetId(), time.Duration(req.GetTimeoutSeconds())*time.Second)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return SandboxToProto(sb), nil
}

// DeleteSandbox implements apiv1.SandboxServiceServer.
func (s *SandboxServer) DeleteSandbox(ctx context.Context, req *apiv1.DeleteSandboxRequest) (*apiv1.DeleteSandboxResponse, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	if err := sandbox.ValidateID(req.GetId()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if err := svc.Delete(ctx, req.GetId()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return &apiv1.DeleteSandboxResponse{}, nil
}

// GetSandbox implements apiv1.SandboxServiceServer.
func (s *SandboxServer) GetSandbox(ctx context.Context, req *apiv1.GetSandboxRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	if err := sandbox.ValidateID(req.GetId()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	sb, err := svc.Get(req.GetId())
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return SandboxToProto(sb), nil
}

// ListSandboxes implements apiv1.SandboxServiceServer.
func (s *SandboxServer) ListSandboxes(ctx context.Context, _ *apiv1.ListSandboxesRequest) (*apiv1.ListSandboxesResponse, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	resp := &apiv1.ListSandboxesResponse{}
	for _, sb := range svc.List() {
		resp.Sandboxes = append(resp.Sandboxes, SandboxToProto(sb))
	}
	return resp, nil
}

// AttachDisk implements apiv1.SandboxServiceServer.
func (s *SandboxServer) AttachDisk(ctx context.Context, req *apiv1.AttachDiskRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	if err := sandbox.ValidateID(req.GetSandboxId()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if req.GetDisk() == nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("attach disk to %q: a disk is required: %w", req.GetSandboxId(), errdefs.ErrInvalidArgument))
	}
	d := DiskFromProto(req.GetDisk())
	if err := d.Validate(); err != nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("attach disk to %q: %w", req.GetSandboxId(), err))
	}
	sb, err := svc.AttachDisk(ctx, req.GetSandboxId(), d)
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return SandboxToProto(sb), nil
}

// DetachDisk implements apiv1.SandboxServiceServer.
func (s *SandboxServer) DetachDisk(ctx context.Context, req *apiv1.DetachDiskRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	if err := sandbox.ValidateID(req.GetSandboxId()); err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	if err := sandbox.ValidateDiskID(req.GetDiskId()); err != nil {
		return nil, errdefs.ToGRPC(fmt.Errorf("detach disk from %q: %w", req.GetSandboxId(), err))
	}
	sb, err := svc.DetachDisk(ctx, req.GetSandboxId(), req.GetDiskId())
	if err != nil {
		return nil, errdefs.ToGRPC(err)
	}
	return SandboxToProto(sb), nil
}

// WatchEvents implements apiv1.SandboxServiceServer. It sends the response
// headers once it is subscribed, so that a client that waits for them
// misses no later event; it ends when the client goes away.
func (s *SandboxServer) WatchEvents(req *apiv1.WatchEventsRequest, stream apiv1.SandboxService_WatchEventsServer) error {
	svc, err := s.service()
	if err != nil {
		return err
	}
	ctx := stream.Context()
	events := svc.Watch(ctx, req.GetIncludeCurrent())
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case e, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return status.FromContextError(ctx.Err()).Err()
				}
				return errdefs.ToGRPC(fmt.Errorf("watch events: the stream fell behind or the agent is stopping; watch again: %w", errdefs.ErrAborted))
			}
			if err := stream.Send(EventToProto(e)); err != nil {
				return err
			}
		}
	}
}

// Exec implements apiv1.SandboxServiceServer: stdin messages feed a pipe
// that the process reads, and the process's writes become stdout and
// stderr messages.
func (s *SandboxServer) Exec(stream apiv1.SandboxService_ExecServer) error {
	svc, err := s.service()
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return errdefs.ToGRPC(fmt.Errorf("exec: no start message: %w", errdefs.ErrInvalidArgument))
	}
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return errdefs.ToGRPC(fmt.Errorf("exec: the first message must be a start: %w", errdefs.ErrInvalidArgument))
	}
	id := start.GetSandboxId()
	if err := sandbox.ValidateID(id); err != nil {
		return errdefs.ToGRPC(fmt.Errorf("exec: %w", err))
	}
	if argv := start.GetArgv(); len(argv) == 0 || argv[0] == "" {
		return errdefs.ToGRPC(fmt.Errorf("exec in %q: empty command: %w", id, errdefs.ErrInvalidArgument))
	}
	// Never log argv beyond the program nor env: they may carry secrets.
	logging.From(stream.Context()).Debug("exec", "sandbox", id, "program", start.GetArgv()[0])

	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	stdinR, stdinW := io.Pipe()
	go pumpStdin(stream, stdinW, cancel)
	out := &execOutput{stream: stream}
	st, err := svc.Exec(ctx, id, sandbox.ExecRequest{
		Argv: start.GetArgv(), Env: start.GetEnv(), Dir: start.GetDir(), Stdin: stdinR,
		Stdout: execWriter{out, false}, Stderr: execWriter{out, true},
	})
	// A stdin write the process never read returns now; the pump keeps
	// draining the stream until it ends with this call.
	stdinR.CloseWithError(io.ErrClosedPipe)
	if cause := context.Cause(ctx); errors.Is(cause, errdefs.ErrInvalidArgument) {
		out.end(nil)
		return errdefs.ToGRPC(cause) // the client broke the protocol
	}
	if err != nil {
		out.end(nil)
		return errdefs.ToGRPC(err)
	}
	return out.end(&apiv1.ExecResponse{Kind: &apiv1.ExecResponse_Exit{Exit: &apiv1.ExitStatus{
		Code: int32(st.Code), Signal: st.Signal}}})
}

// pumpStdin copies the client's stdin messages into w until the client
// closes stdin or its side of the stream. A second start cancels the call.
func pumpStdin(stream apiv1.SandboxService_ExecServer, w *io.PipeWriter, cancel context.CancelCauseFunc) {
	closed := false
	for {
		m, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = nil // the client closed its side: stdin ends
			}
			w.CloseWithError(err)
			return
		}
		switch k := m.GetKind().(type) {
		case *apiv1.ExecRequest_Stdin:
			if closed || len(k.Stdin) == 0 {
				continue
			}
			if _, err := w.Write(k.Stdin); err != nil {
				closed = true // the process is done with its stdin
			}
		case *apiv1.ExecRequest_CloseStdin:
			if k.CloseStdin && !closed {
				w.Close()
				closed = true
			}
		case *apiv1.ExecRequest_Start:
			cancel(fmt.Errorf("exec: a second start message: %w", errdefs.ErrInvalidArgument))
			w.CloseWithError(io.ErrUnexpectedEOF)
			return
		}
	}
}

// execOutput serializes the messages of an Exec call: the process may
// write stdout and stderr from two goroutines.
type execOutput struct {
	mu     sync.Mutex
	stream apiv1.SandboxService_ExecServer
	ended  bool
}

var errExecEnded = errors.New("exec call ended")

func (o *execOutput) send(m *apiv1.ExecResponse) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ended {
		return errExecEnded
	}
	return o.stream.Send(m)
}

// end sends the last message, if any; later writes fail.
func (o *execOutput) end(last *apiv1.ExecResponse) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ended = true
	if last == nil {
		return nil
	}
	return o.stream.Send(last)
}

type execWriter struct {
	out    *execOutput
	stderr bool
}

func (w execWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		// gRPC may use a message after Send returns: give it its own bytes.
		chunk := bytes.Clone(p[:min(len(p), execChunk)])
		m := &apiv1.ExecResponse{Kind: &apiv1.ExecResponse_Stdout{Stdout: chunk}}
		if w.stderr {
			m.Kind = &apiv1.ExecResponse_Stderr{Stderr: chunk}
		}
		if err := w.out.send(m); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// StreamInterceptor is UnaryInterceptor for streaming calls (WatchEvents,
// Exec): a logger with the method in the context, failures logged, calls
// counted.
func StreamInterceptor(log *slog.Logger, m *metrics.Metrics) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		l := log.With("method", info.FullMethod)
		start := time.Now()
		err := handler(srv, &loggedStream{ServerStream: ss, ctx: logging.With(ss.Context(), l)})
		code := status.Code(err)
		if m != nil {
			m.CountRPC(info.FullMethod, code.String())
		}
		if err != nil && code != codes.Canceled {
			l.Warn("stream failed", "code", code.String(), "error", status.Convert(err).Message(), "duration", time.Since(start))
		} else {
			l.Debug("stream ended", "duration", time.Since(start))
		}
		return err
	}
}

type loggedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *loggedStream) Context() context.Context { return s.ctx }
