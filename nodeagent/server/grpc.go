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
// code (here, once), failures logged and calls counted.
func NewGRPCServer(log *slog.Logger, m *metrics.Metrics, opts ...grpc.ServerOption) *grpc.Server {
	opts = append(opts, grpc.ChainUnaryInterceptor(UnaryInterceptor(log, m)), grpc.ChainStreamInterceptor(StreamInterceptor(log, m)))
	return grpc.NewServer(opts...)
}

// UnaryInterceptor puts a logger with the method into the context,
// converts the handler's domain error to a gRPC status (handlers return
// domain errors as they are), logs failures and counts requests.
func UnaryInterceptor(log *slog.Logger, m *metrics.Metrics) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		l := log.With("method", info.FullMethod)
		start := time.Now()
		resp, err := handler(logging.With(ctx, l), req)
		err = errdefs.ToGRPC(err) // the one place domain errors become codes
		code := status.Code(err)
		if m != nil {
			m.CountRPC(info.FullMethod, code.String())
		}
		if err != nil {
			l.Warn("request failed", "code", code.String(), "error", status.Convert(err).Message(), "duration", time.Since(start))
		} else {
			l.Debug("request served", "duration", time.Since(start))
		}
		return resp, err
	}
}

// StreamInterceptor is UnaryInterceptor for streaming calls (WatchEvents,
// Exec): a logger with the method in the context, domain errors converted
// to gRPC codes, failures logged, calls counted.
func StreamInterceptor(log *slog.Logger, m *metrics.Metrics) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		l := log.With("method", info.FullMethod)
		start := time.Now()
		err := errdefs.ToGRPC(handler(srv, &loggedStream{ServerStream: ss, ctx: logging.With(ss.Context(), l)}))
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
