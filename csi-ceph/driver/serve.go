package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
)

// serveCSI listens on endpoint (a socket only root can reach), lets
// register add the services, and serves until ctx ends; onStop runs
// after the last call. Both drivers (RBD and CephFS) serve through it.
func serveCSI(ctx context.Context, endpoint string, log *slog.Logger, register func(*grpc.Server), background func(context.Context), onStop func()) error {
	path, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old socket: %w", err)
	}
	old := syscall.Umask(0o077)
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(logCalls(log)))
	register(g)
	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	bgCtx, stopBG := context.WithCancel(ctx)
	defer stopBG()
	go background(bgCtx)
	select {
	case <-ctx.Done():
		g.GracefulStop()
	case err := <-errc:
		return err
	}
	onStop()
	return nil
}

// logCalls logs every call without its secrets.
func logCalls(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		if err != nil {
			log.Warn("CSI call failed", "method", info.FullMethod, "error", err, "duration", time.Since(start))
		} else {
			log.Debug("CSI call", "method", info.FullMethod, "duration", time.Since(start))
		}
		return resp, err
	}
}
