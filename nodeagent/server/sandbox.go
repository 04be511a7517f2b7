package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
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
	// Unavailable says what the node lacks when Svc is nil.
	Unavailable []string
}

var _ apiv1.SandboxServiceServer = (*SandboxServer)(nil)

// NewSandboxServer returns a SandboxServer for svc, which may be nil.
func NewSandboxServer(svc sandbox.Service) *SandboxServer {
	return &SandboxServer{Svc: svc}
}

// execChunk bounds the stdout and stderr messages of Exec and the chunks
// of SandboxLogs, well below gRPC's default 4 MiB message limit.
const execChunk = 32 << 10

var errNoSandboxes = fmt.Errorf("sandboxes are not enabled on this node: %w", errdefs.ErrFailedPrecondition)

func (s *SandboxServer) service() (sandbox.Service, error) {
	if s.Svc == nil {
		if len(s.Unavailable) > 0 {
			return nil, fmt.Errorf("sandboxes are unavailable on this node: %s: %w",
				strings.Join(s.Unavailable, "; "), errdefs.ErrFailedPrecondition)
		}
		return nil, errNoSandboxes
	}
	return s.Svc, nil
}

// CreateSandbox implements apiv1.SandboxServiceServer.
func (s *SandboxServer) CreateSandbox(ctx context.Context, req *apiv1.CreateSandboxRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	spec, err := SpecFromProto(req.GetSpec())
	if err != nil {
		return nil, err
	}
	sb, err := svc.Create(ctx, spec, req.GetWait())
	if err != nil {
		return nil, err
	}
	return SandboxToProto(sb), nil
}

// StopSandbox implements apiv1.SandboxServiceServer.
func (s *SandboxServer) StopSandbox(ctx context.Context, req *apiv1.StopSandboxRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	sb, err := svc.Stop(ctx, req.GetId(), time.Duration(req.GetTimeoutSeconds())*time.Second)
	if err != nil {
		return nil, err
	}
	return SandboxToProto(sb), nil
}

// DeleteSandbox implements apiv1.SandboxServiceServer.
func (s *SandboxServer) DeleteSandbox(ctx context.Context, req *apiv1.DeleteSandboxRequest) (*apiv1.DeleteSandboxResponse, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	if err := svc.Delete(ctx, req.GetId()); err != nil {
		return nil, err
	}
	return &apiv1.DeleteSandboxResponse{}, nil
}

// GetSandbox implements apiv1.SandboxServiceServer.
func (s *SandboxServer) GetSandbox(ctx context.Context, req *apiv1.GetSandboxRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	sb, err := svc.Get(req.GetId())
	if err != nil {
		return nil, err
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
	sb, err := svc.AttachDisk(ctx, req.GetSandboxId(), DiskFromProto(req.GetDisk()))
	if err != nil {
		return nil, err
	}
	return SandboxToProto(sb), nil
}

// DetachDisk implements apiv1.SandboxServiceServer.
func (s *SandboxServer) DetachDisk(ctx context.Context, req *apiv1.DetachDiskRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	sb, err := svc.DetachDisk(ctx, req.GetSandboxId(), req.GetDiskId())
	if err != nil {
		return nil, err
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
				return fmt.Errorf("watch events: the stream fell behind or the agent is stopping; watch again: %w", errdefs.ErrAborted)
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
		return fmt.Errorf("exec: no start message: %w", errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return fmt.Errorf("exec: the first message must be a start: %w", errdefs.ErrInvalidArgument)
	}
	id := start.GetSandboxId()
	if argv := start.GetArgv(); len(argv) > 0 {
		// Never log argv beyond the program nor env: they may carry secrets.
		logging.From(stream.Context()).Debug("exec", "sandbox", id, "program", argv[0])
	}

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
		return cause // the client broke the protocol
	}
	if err != nil {
		out.end(nil)
		return err
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

// logSources maps the API's log sources to the domain's; a value not here
// goes through as an unknown source, which the domain refuses.
var logSources = map[apiv1.SandboxLogsRequest_Source]sandbox.LogSource{
	apiv1.SandboxLogsRequest_SOURCE_UNSPECIFIED: sandbox.LogConsole,
	apiv1.SandboxLogsRequest_CONSOLE:            sandbox.LogConsole,
	apiv1.SandboxLogsRequest_QEMU:               sandbox.LogQEMU,
}

// SandboxLogs implements apiv1.SandboxServiceServer: the log goes out in
// chunks of at most execChunk bytes.
func (s *SandboxServer) SandboxLogs(req *apiv1.SandboxLogsRequest, stream apiv1.SandboxService_SandboxLogsServer) error {
	svc, err := s.service()
	if err != nil {
		return err
	}
	src, ok := logSources[req.GetSource()]
	if !ok {
		src = sandbox.LogSource(req.GetSource().String())
	}
	tail := int64(min(req.GetTailBytes(), math.MaxInt64))
	return svc.Logs(stream.Context(), req.GetId(), sandbox.LogRequest{Source: src, TailBytes: tail, Follow: req.GetFollow()},
		logWriter{stream})
}

type logWriter struct {
	stream apiv1.SandboxService_SandboxLogsServer
}

func (w logWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		// gRPC may use a message after Send returns: give it its own bytes.
		chunk := bytes.Clone(p[:min(len(p), execChunk)])
		if err := w.stream.Send(&apiv1.SandboxLogChunk{Data: chunk}); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// UpdateSandboxResources implements apiv1.SandboxServiceServer.
func (s *SandboxServer) UpdateSandboxResources(ctx context.Context, req *apiv1.UpdateSandboxResourcesRequest) (*apiv1.Sandbox, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	r, err := ResourcesFromProto(req.GetResources())
	if err != nil {
		return nil, err
	}
	qos := map[string]sandbox.DiskQoS{}
	for id, q := range req.GetDiskQos() {
		qos[id] = QoSFromProto(q)
	}
	sb, err := svc.UpdateResources(ctx, req.GetId(), r, qos)
	if err != nil {
		return nil, err
	}
	return SandboxToProto(sb), nil
}

// GetSandboxStats implements apiv1.SandboxServiceServer.
func (s *SandboxServer) GetSandboxStats(ctx context.Context, req *apiv1.GetSandboxStatsRequest) (*apiv1.ResourceStats, error) {
	svc, err := s.service()
	if err != nil {
		return nil, err
	}
	st, err := svc.Stats(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return StatsToProto(st.Stats, st.Cgroup, st.Disks, st.NetRxBytes, st.NetTxBytes), nil
}
