package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/eni"
	"github.com/nodeinfra/nodeinfra/nodeagent/metrics"
	"github.com/nodeinfra/nodeinfra/nodeagent/probe"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/nodeagent/server"
	"github.com/nodeinfra/nodeinfra/pkg/version"
)

// Run runs the agent with cfg, which Validate has accepted, until ctx
// ends (a clean stop: nil) or a listener fails.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	lock, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	store, err := eni.NewStore(cfg.StateDir)
	if err != nil {
		return err
	}
	inv, err := eni.Open(ctx, store, eni.NetlinkLinks{}, log)
	if err != nil {
		return fmt.Errorf("open ENI inventory: %w", err)
	}
	m := metrics.New(inv)
	prober := probe.New(inv, probe.DefaultLimits()) // the endpoint and the RPC share its limits
	srv := &server.ENIServer{Inv: inv, Prober: prober, Metrics: m, Version: version.Version}
	sandboxes, err := openSandboxes(ctx, cfg, log)
	if err != nil {
		return err
	}

	lis, err := listenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)
	g := server.NewGRPCServer(log, m)
	apiv1.RegisterENIServiceServer(g, srv)
	var svc sandbox.Service // nil: the API answers FailedPrecondition
	if sandboxes != nil {
		svc = sandboxes
		m.WatchSandboxes(sandboxes)
	}
	apiv1.RegisterSandboxServiceServer(g, server.NewSandboxServer(svc))

	errc := make(chan error, 3)
	go func() { errc <- g.Serve(lis) }()
	var https []*http.Server
	if cfg.MetricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
		h, err := listenHTTP(cfg.MetricsAddr, mux, errc)
		if err != nil {
			g.Stop()
			return err
		}
		https = append(https, h)
	}
	if cfg.ProbeAddr != "" {
		h, err := listenHTTP(cfg.ProbeAddr, probe.Handler(prober), errc)
		if err != nil {
			g.Stop()
			return err
		}
		https = append(https, h)
	}
	go func() {
		t := time.NewTicker(cfg.ReconcileInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := inv.Reconcile(ctx); err != nil {
					log.Warn("reconcile failed", "error", err)
				}
			}
		}
	}()
	log.Info("nodeagent serving", "version", version.Version, "socket", cfg.Socket, "stateDir", cfg.StateDir,
		"metricsAddr", cfg.MetricsAddr, "probeAddr", cfg.ProbeAddr, "enis", len(inv.List("")))

	select {
	case <-ctx.Done():
	case err := <-errc:
		g.Stop()
		return err
	}
	log.Info("shutting down")
	for _, h := range https {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = h.Shutdown(sctx)
		cancel()
	}
	if sandboxes != nil {
		sandboxes.Close() // ends event streams; the VMs keep running for the next agent
	}
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		g.Stop()
	}
	return nil
}

// openSandboxes opens the sandbox manager, which re-adopts running VMs. It
// returns nil (sandboxes disabled, with a warning) when the default guest
// files are absent; files named by flags must exist.
func openSandboxes(ctx context.Context, cfg Config, log *slog.Logger) (*sandbox.Manager, error) {
	sb := cfg.Sandbox
	kernel, initrd := sb.Kernel, sb.Initrd
	if kernel == "" {
		kernel = filepath.Join(guestDir(), "vmlinux")
	}
	if initrd == "" {
		initrd = filepath.Join(guestDir(), "initramfs.cpio")
	}
	for flagName, p := range map[string]string{"--guest-kernel": kernel, "--guest-initrd": initrd} {
		if _, err := os.Stat(p); err != nil {
			if sb.Kernel != "" || sb.Initrd != "" {
				return nil, fmt.Errorf("%s: %w", flagName, err)
			}
			log.Warn("sandboxes disabled: guest files not found (run make build, or pass --guest-kernel and --guest-initrd)", "missing", p)
			return nil, nil
		}
	}
	var qm *cgroup.Manager
	if sb.CgroupParent != "" {
		mode, err := cgroup.Detect()
		if err != nil {
			return nil, fmt.Errorf("cgroups: %w", err)
		}
		if qm, err = cgroup.NewManager(mode, sb.CgroupParent); err != nil {
			return nil, fmt.Errorf("cgroups: %w", err)
		}
	}
	first, count, err := sb.uidRange()
	if err != nil {
		return nil, err
	}
	return sandbox.Open(ctx, sandbox.Config{
		Confine: sb.Confine, UIDs: sandbox.UIDRange{First: first, Count: count},
		StateDir: cfg.StateDir, QEMU: sb.QEMU, Kernel: kernel, Initrd: initrd, Accel: sb.Accel, KernelArgs: strings.Fields(sb.KernelArgs),
		Ceph:    sandbox.CephCredentials{Conf: sb.CephConf, User: sb.CephUser, Keyring: sb.CephKeyring},
		Cgroups: qm, BootTimeout: sb.BootTimeout, Log: log,
	})
}
