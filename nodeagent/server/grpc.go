package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/metrics"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NewGRPCServer returns the agent's gRPC server: every call gets a logger
// with its method in its context, its domain error converted to a gRPC
// code (here, once), failures logged and, with m, the standard gRPC
// server metrics (outermost, so that they see the converted codes).
// Call m.GRPC.InitializeMetrics once the services are registered.
func NewGRPCServer(log *slog.Logger, m *metrics.Metrics, opts ...grpc.ServerOption) *grpc.Server {
	unary, stream := []grpc.UnaryServerInterceptor{UnaryInterceptor(log)}, []grpc.StreamServerInterceptor{StreamInterceptor(log)}
	if m != nil {
		unary = append([]grpc.UnaryServerInterceptor{m.GRPC.UnaryServerInterceptor()}, unary...)
		stream = append([]grpc.StreamServerInterceptor{m.GRPC.StreamServerInterceptor()}, stream...)
	}
	opts = append(opts, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
	return grpc.NewServer(opts...)
}

// UnaryInterceptor puts a logger with the method into the context,
// converts the handler's domain error to a gRPC status (handlers return
// domain errors as they are) and logs failures.
func UnaryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		l := log.With("method", info.FullMethod)
		start := time.Now()
		resp, err := handler(logging.With(ctx, l), req)
		err = errdefs.ToGRPC(err) // the one place domain errors become codes
		code := status.Code(err)
		if err != nil {
			l.Warn("request failed", "code", code.String(), "error", status.Convert(err).Message(), "seconds", time.Since(start).Seconds())
		} else {
			l.Debug("request served", "seconds", time.Since(start).Seconds())
		}
		return resp, err
	}
}

// StreamInterceptor is UnaryInterceptor for streaming calls (WatchEvents,
// Exec): a logger with the method in the context, domain errors converted
// to gRPC codes, failures logged.
func StreamInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		l := log.With("method", info.FullMethod)
		start := time.Now()
		err := errdefs.ToGRPC(handler(srv, &loggedStream{ServerStream: ss, ctx: logging.With(ss.Context(), l)}))
		code := status.Code(err)
		if err != nil && code != codes.Canceled {
			l.Warn("stream failed", "code", code.String(), "error", status.Convert(err).Message(), "seconds", time.Since(start).Seconds())
		} else {
			l.Debug("stream ended", "seconds", time.Since(start).Seconds())
		}
		return err
	}
}

type loggedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *loggedStream) Context() context.Context { return s.ctx }
