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
	"github.com/nodeinfra/nodeinfra/nodeagent/eni"
	"github.com/nodeinfra/nodeinfra/nodeagent/groups"
	"github.com/nodeinfra/nodeinfra/nodeagent/metrics"
	"github.com/nodeinfra/nodeinfra/nodeagent/probe"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/nodeagent/server"
	"github.com/nodeinfra/nodeinfra/nodeagent/vmtemplate"
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
	var sandboxes *sandbox.Manager
	m := metrics.New(inv, func() string {
		if sandboxes == nil {
			return ""
		}
		return sandboxes.Accel()
	})
	prober := probe.New(inv, probe.DefaultLimits()) // the endpoint and the RPC share its limits
	prober.Observe = m.ObserveProbe
	srv := &server.ENIServer{Inv: inv, Prober: prober, Metrics: m, Version: version.Version}
	started := time.Now()
	sandboxes, host, err := openSandboxes(ctx, cfg, log)
	if err != nil {
		return err
	}
	srv.Node = func() server.NodeInfo {
		info := server.NodeInfo{Started: started, SandboxProblems: host.problems}
		if host.cgroups != nil {
			info.CgroupMode = host.cgroups.Mode().String()
		}
		if sandboxes != nil {
			info.Accel = sandboxes.Accel()
			info.FastStart, info.Templates, info.Pool = sandboxes.FastStart(), sandboxes.Templates(), sandboxes.Pool()
			info.Sandboxes = map[string]uint32{}
			for _, s := range sandboxes.List() {
				info.Sandboxes[string(s.State)]++
			}
		}
		return info
	}

	var onOOM func(string)
	if sandboxes != nil {
		onOOM = sandboxes.PublishGroupOOM
	}
	grps, err := groups.Open(cfg.StateDir, host.cgroups, onOOM, log)
	if err != nil {
		return err
	}
	defer grps.Close()
	if sandboxes != nil {
		// Only with the sandboxes' records at hand: without them their
		// cgroups would look orphaned.
		if removed, err := grps.RemoveOrphans(sandboxes.OwnedCgroups()); err != nil {
			log.Warn("cannot remove every orphan cgroup", "removed", removed, "error", err)
		}
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
		m.WatchSandboxes(ctx, sandboxes)
	}
	ss := server.NewSandboxServer(svc)
	ss.Unavailable = host.problems
	apiv1.RegisterSandboxServiceServer(g, ss)
	apiv1.RegisterGroupServiceServer(g, server.NewGroupServer(grps))
	m.GRPC.InitializeMetrics(g)

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
				changes, err := inv.Reconcile(ctx)
				m.ObserveReconcile(len(changes), err)
				if err != nil {
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

// openSandboxes opens the sandbox manager, which re-adopts running VMs.
// On a node that lacks something sandboxes need it returns no manager and
// what is missing (the agent still serves ENIs and probes); the sandbox
// API then answers FailedPrecondition naming it.
func openSandboxes(ctx context.Context, cfg Config, log *slog.Logger) (*sandbox.Manager, sandboxHost, error) {
	sb := cfg.Sandbox
	kernel, initrd := sb.Kernel, sb.Initrd
	if kernel == "" {
		kernel = filepath.Join(guestDir(), "vmlinux")
	}
	if initrd == "" {
		initrd = filepath.Join(guestDir(), "initramfs.cpio")
	}
	host := checkSandboxHost(sb, kernel, initrd)
	if len(host.problems) > 0 {
		log.Warn("sandboxes unavailable on this node; serving ENIs and probes", "missing", host.problems)
		return nil, host, nil
	}
	first, count, err := sb.uidRange()
	if err != nil {
		return nil, host, err
	}
	classes, err := vmtemplate.ParseClasses(sb.FastStartClasses)
	if err != nil {
		return nil, host, err
	}
	m, err := sandbox.Open(ctx, sandbox.Config{
		Confine: sb.Confine, UIDs: sandbox.UIDRange{First: first, Count: count},
		StateDir: cfg.StateDir, QEMU: sb.QEMU, Kernel: kernel, Initrd: initrd, Accel: sb.Accel, KernelArgs: strings.Fields(sb.KernelArgs),
		Ceph:    sandbox.CephCredentials{Conf: sb.CephConf, User: sb.CephUser, Keyring: sb.CephKeyring},
		Cgroups: host.cgroups, OverheadMiB: sb.MemoryOverheadMiB, BootTimeout: sb.BootTimeout, Log: log,
		FastStart: sb.FastStart, TemplateClasses: classes, PoolSize: sb.FastStartPoolSize,
	})
	return m, host, err
}
