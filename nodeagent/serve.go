package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/eni"
	"github.com/nodeinfra/nodeinfra/nodeagent/metrics"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/nodeagent/server"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
	"github.com/nodeinfra/nodeinfra/pkg/version"
)

// Config is the daemon's configuration.
type Config struct {
	Socket            string
	StateDir          string
	MetricsAddr       string
	ProbeAddr         string
	ReconcileInterval time.Duration
	LogLevel          string
	Sandbox           SandboxConfig
}

// SandboxConfig configures the pod sandboxes (QEMU VMs).
type SandboxConfig struct {
	// Kernel and Initrd boot the guests; defaults are the files `make
	// build` puts in nodeagent-guest/ beside the agent's binary. When the
	// defaults are absent the sandbox API answers FailedPrecondition.
	Kernel, Initrd string
	QEMU           string
	Accel          string // auto, kvm or tcg
	KernelArgs     string // appended to the guest kernel command line
	// CgroupParent is the cgroup (under each v1 controller, or under the
	// v2 root) that holds one cgroup per sandbox; "" disables quotas.
	CgroupParent string
	BootTimeout  time.Duration
	CephConf     string
	CephUser     string
	CephKeyring  string
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if !filepath.IsAbs(c.Socket) {
		return fmt.Errorf("--socket %q must be an absolute path", c.Socket)
	}
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("--state-dir %q must be an absolute path", c.StateDir)
	}
	for name, a := range map[string]string{"--metrics-addr": c.MetricsAddr, "--probe-addr": c.ProbeAddr} {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("%s %q: want HOST:PORT (empty disables): %v", name, a, err)
		}
	}
	if c.ReconcileInterval < time.Second {
		return fmt.Errorf("--reconcile-interval %v: at least 1s", c.ReconcileInterval)
	}
	if _, err := logging.ParseLevel(c.LogLevel); err != nil {
		return err
	}
	sb := c.Sandbox
	switch sb.Accel {
	case "auto", "kvm", "tcg":
	default:
		return fmt.Errorf("--accel %q: want auto, kvm or tcg", sb.Accel)
	}
	for name, p := range map[string]string{"--guest-kernel": sb.Kernel, "--guest-initrd": sb.Initrd,
		"--ceph-conf": sb.CephConf, "--ceph-keyring": sb.CephKeyring} {
		if p != "" && !filepath.IsAbs(p) {
			return fmt.Errorf("%s %q must be an absolute path", name, p)
		}
	}
	if sb.CgroupParent != "" && (strings.Contains(sb.CgroupParent, "..") || !strings.HasPrefix(sb.CgroupParent, "/") || sb.CgroupParent == "/") {
		return fmt.Errorf("--cgroup-parent %q: want a cgroup path such as /nodeagent", sb.CgroupParent)
	}
	if sb.BootTimeout < time.Second {
		return fmt.Errorf("--boot-timeout %v: at least 1s", sb.BootTimeout)
	}
	return nil
}

// guestDir is where `make build` puts the guest kernel and initramfs,
// beside the agent's binary.
func guestDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "/usr/local/lib/nodeagent-guest"
	}
	return filepath.Join(filepath.Dir(exe), "nodeagent-guest")
}

func serve(args []string) int {
	cfg := Config{}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.StringVar(&cfg.Socket, "socket", agentclient.DefaultSocket, "unix socket of the gRPC API (created with mode 0600)")
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/nodeagent", "directory of the agent's state")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "127.0.0.1:9808", "address of the Prometheus /metrics endpoint (empty disables)")
	fs.StringVar(&cfg.ProbeAddr, "probe-addr", "127.0.0.1:9807", "address of the pod probe endpoint for the kubelet (empty disables)")
	fs.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", 30*time.Second, "how often ENI state is reconciled with the node's links")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "debug, info, warn or error")
	sb := &cfg.Sandbox
	fs.StringVar(&sb.Kernel, "guest-kernel", "", "guest kernel (vmlinux) of the sandboxes (default nodeagent-guest/vmlinux beside this binary)")
	fs.StringVar(&sb.Initrd, "guest-initrd", "", "guest initramfs with the guest agent (default nodeagent-guest/initramfs.cpio beside this binary)")
	fs.StringVar(&sb.QEMU, "qemu", "qemu-system-x86_64", "QEMU binary")
	fs.StringVar(&sb.KernelArgs, "guest-kernel-args", "", "appended to the guests' kernel command line (e.g. \"loglevel=7\" to debug a boot)")
	fs.StringVar(&sb.Accel, "accel", "auto", "sandbox accelerator: auto (probe KVM, fall back to TCG), kvm or tcg")
	fs.StringVar(&sb.CgroupParent, "cgroup-parent", "/nodeagent", "cgroup holding one cgroup per sandbox (empty disables quotas)")
	fs.DurationVar(&sb.BootTimeout, "boot-timeout", 60*time.Second, "time a sandbox has from QEMU start to the guest agent's first answer")
	fs.StringVar(&sb.CephConf, "ceph-conf", "", "ceph.conf for RBD disks of sandboxes")
	fs.StringVar(&sb.CephUser, "ceph-user", "admin", "cephx user for RBD disks (without client.)")
	fs.StringVar(&sb.CephKeyring, "ceph-keyring", "", "keyring (or key file) of --ceph-user")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "nodeagent serve: %v\n", err)
		return 2
	}
	level, _ := logging.ParseLevel(cfg.LogLevel)
	log := logging.NewJSON(os.Stderr, level)
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := runDaemon(ctx, cfg, log); err != nil {
		log.Error("nodeagent stopped", "error", err)
		return 1
	}
	return 0
}

func runDaemon(ctx context.Context, cfg Config, log *slog.Logger) error {
	store, err := eni.NewStore(cfg.StateDir)
	if err != nil {
		return err
	}
	inv, err := eni.Open(ctx, store, eni.NetlinkLinks{}, log)
	if err != nil {
		return fmt.Errorf("open ENI inventory: %w", err)
	}
	m := metrics.New(inv)
	srv := &server.ENIServer{Inv: inv, Metrics: m, Version: version.Version}
	sandboxes, err := openSandboxes(ctx, cfg, log)
	if err != nil {
		return err
	}

	lis, err := listenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(server.UnaryInterceptor(log, m)),
		grpc.ChainStreamInterceptor(server.StreamInterceptor(log, m)))
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
		h, err := listenHTTP(cfg.ProbeAddr, srv.ProbeHandler(), errc)
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
	return sandbox.Open(ctx, sandbox.Config{
		StateDir: cfg.StateDir, QEMU: sb.QEMU, Kernel: kernel, Initrd: initrd, Accel: sb.Accel, KernelArgs: strings.Fields(sb.KernelArgs),
		Ceph:    sandbox.CephCredentials{Conf: sb.CephConf, User: sb.CephUser, Keyring: sb.CephKeyring},
		Cgroups: qm, BootTimeout: sb.BootTimeout, Log: log,
	})
}

// listenUnix listens on path with mode 0600. A stale socket is replaced;
// a live one (another agent) is an error.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another agent is serving on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	old := syscall.Umask(0o177)
	lis, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return lis, nil
}

func listenHTTP(addr string, h http.Handler, errc chan<- error) (*http.Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()
	return s, nil
}
