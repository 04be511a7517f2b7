package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
)

// service is what serveCSI serves: the CSI services register adds, on a
// socket at endpoint, and, when metrics is not nil, the metrics on
// metricsAddr over HTTP. background runs while it serves; onStop runs
// after the last call.
type service struct {
	endpoint    string
	log         *slog.Logger
	metrics     *metrics.Metrics
	metricsAddr string
	register    func(*grpc.Server)
	background  func(context.Context)
	onStop      func()
}

// serveCSI listens on the endpoint (a socket only root can reach) and the
// metrics address, and serves until ctx ends. Both drivers (RBD and
// CephFS) serve through it.
func serveCSI(ctx context.Context, s service) error {
	var web *http.Server
	webErr := make(chan error, 1)
	if s.metrics != nil {
		addr, err := metricsListenAddr(s.metricsAddr)
		if err != nil {
			return err
		}
		// Listen before the socket is there: a port that is taken fails
		// the start rather than a scrape.
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen for metrics on %s: %w", addr, err)
		}
		web = &http.Server{Handler: s.metrics.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := web.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				webErr <- fmt.Errorf("serve metrics: %w", err)
			}
		}()
		defer web.Close()
		s.log.Info("serving metrics", "addr", lis.Addr().String())
	}
	sock, err := socketPath(s.endpoint)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old socket: %w", err)
	}
	old := syscall.Umask(0o077)
	lis, err := net.Listen("unix", sock)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", sock, err)
	}
	// The metrics' interceptor comes first, so that it counts a call as
	// the client sees it, logging included.
	unary := []grpc.UnaryServerInterceptor{logCalls(s.log)}
	var opts []grpc.ServerOption
	if s.metrics != nil {
		unary = append([]grpc.UnaryServerInterceptor{s.metrics.UnaryServerInterceptor()}, unary...)
		opts = append(opts, grpc.ChainStreamInterceptor(s.metrics.StreamServerInterceptor()))
	}
	g := grpc.NewServer(append(opts, grpc.ChainUnaryInterceptor(unary...))...)
	s.register(g)
	if s.metrics != nil {
		s.metrics.InitializeMetrics(g)
	}
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	bgCtx, stopBG := context.WithCancel(ctx)
	defer stopBG()
	go s.background(bgCtx)
	select {
	case <-ctx.Done():
		g.GracefulStop()
	case err := <-errc:
		return err
	case err := <-webErr:
		g.Stop()
		return err
	}
	s.onStop()
	return nil
}

// callKey is the context key of a call's start.
type callKey struct{}

// logCalls gives each call a logger (pkg/logging's, in its context) that
// names its method and what it is about: the volume ID, the snapshot ID,
// and the name of a volume or snapshot to create, on every line the call
// logs; never its secrets. It logs a failed call at Warn and any other at
// Debug, with its duration in seconds.
func logCalls(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		l := log.With(callAttrs(info.FullMethod, req)...)
		ctx = context.WithValue(logging.With(ctx, l), callKey{}, start)
		resp, err := h(ctx, req)
		if err != nil {
			l.Warn("CSI call failed", "code", status.Code(err).String(), "error", err, "seconds", time.Since(start).Seconds())
		} else {
			l.Debug("CSI call", "seconds", time.Since(start).Seconds())
		}
		return resp, err
	}
}

// callAttrs are the log attributes of a call: its method and the IDs and
// names its request carries.
func callAttrs(fullMethod string, req any) []any {
	attrs := []any{"method", path.Base(fullMethod)}
	add := func(key, val string) {
		if val != "" {
			attrs = append(attrs, key, val)
		}
	}
	if r, ok := req.(interface{ GetVolumeId() string }); ok {
		add("volumeID", r.GetVolumeId())
	}
	if r, ok := req.(interface{ GetSourceVolumeId() string }); ok {
		add("volumeID", r.GetSourceVolumeId())
	}
	if r, ok := req.(interface{ GetSnapshotId() string }); ok {
		add("snapshotID", r.GetSnapshotId())
	}
	if r, ok := req.(interface{ GetName() string }); ok {
		add("name", r.GetName())
	}
	return attrs
}

// logChange logs at Info a change the call of ctx made (a volume
// created, staged, published ...), with the seconds the call took so
// far, through the call's logger.
func logChange(ctx context.Context, msg string, args ...any) {
	if start, ok := ctx.Value(callKey{}).(time.Time); ok {
		args = append(args, "seconds", time.Since(start).Seconds())
	}
	logging.From(ctx).Info(msg, args...)
}
