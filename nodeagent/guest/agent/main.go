//go:build linux

// Command agent is the sandbox guest's /init and guest agent. As PID 1 it
// mounts the pseudo file systems, brings lo up, sets the hostname from the
// kernel command line (nodeinfra.id=<ID>), reaps orphans, and serves the
// agentproto protocol on the virtio-serial port named agent.0, through
// any number of host disconnections. Build it static (CGO_ENABLED=0).
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/pkg/version"
)

// Config is the agent's configuration; the guest has no flags to give,
// so it is fixed.
type Config struct {
	// PortName is the virtio-serial port to serve on.
	PortName string
	// HostnameParam is the kernel command line parameter holding the
	// sandbox ID, which becomes the hostname.
	HostnameParam string
}

func defaultConfig() Config {
	return Config{PortName: "agent.0", HostnameParam: "nodeinfra.id"}
}

func main() {
	cfg := defaultConfig()
	log := newLogger(os.Stderr)
	pid1 := os.Getpid() == 1
	if pid1 {
		for _, err := range setupSystem(cfg) {
			log.Error("system setup", "error", err)
		}
	}
	a := newAgent(log, version.Version)
	if pid1 {
		a.powerOff = powerOff
		go handlePowerSignals(log)
	}
	a.reaper.start()
	p, err := openPort(log, cfg.PortName)
	if err != nil {
		// Unreachable in practice: openPort waits for the port.
		fatal(log, fmt.Errorf("open port %s: %w", cfg.PortName, err))
	}
	fmt.Fprintf(os.Stderr, "nodeinfra-agent: ready (port %s, version %s, protocol %d, uptime %.2fs)\n",
		p.path, version.Version, agentproto.Version, uptime().Seconds())
	a.servePort(p)
}

// servePort serves one session per host connection, forever.
func (a *agent) servePort(p *port) {
	for {
		p.waitHost()
		s := a.newSession(p, &p.wmu)
		err := s.run()
		switch {
		case errors.Is(err, io.EOF):
			a.log.Info("host disconnected")
		case errors.Is(err, errHostGone):
			a.log.Info("host disconnected while the agent was writing")
		case isFramingError(err):
			// The stream is out of step and cannot be resynchronised
			// from this side: drop what the host sends until it
			// disconnects.
			a.log.Error("protocol error; ignoring the host until it reconnects", "error", err)
			_, _ = io.Copy(io.Discard, p)
		default:
			a.log.Error("port read failed", "error", err)
			time.Sleep(time.Second)
		}
	}
}

func isFramingError(err error) bool {
	for _, e := range []error{agentproto.ErrBadMagic, agentproto.ErrUnsupportedVersion, agentproto.ErrUnknownFrameType,
		agentproto.ErrFrameTooLarge, io.ErrUnexpectedEOF} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// newLogger writes text records, each line starting with
// "nodeinfra-agent:", without times (the guest clock means little).
func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(prefixWriter{w}, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
}

type prefixWriter struct{ w io.Writer }

// Write gets one whole record from slog's handler.
func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := p.w.Write(append([]byte("nodeinfra-agent: "), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// fatal logs err and powers the VM off: PID 1 must not exit (the kernel
// would panic).
func fatal(log *slog.Logger, err error) {
	log.Error("fatal", "error", err)
	if os.Getpid() == 1 {
		powerOff()
	}
	os.Exit(1)
}

// mount is one file system set up at boot.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

var bootMounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

// setupSystem prepares the guest as its init; it goes on past failures
// and returns them all.
func setupSystem(cfg Config) []error {
	var errs []error
	for _, m := range bootMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err))
		}
	}
	if lo, err := netlink.LinkByName("lo"); err != nil {
		errs = append(errs, fmt.Errorf("find lo: %w", err))
	} else if err := netlink.LinkSetUp(lo); err != nil {
		errs = append(errs, fmt.Errorf("set lo up: %w", err))
	}
	if cmdline, err := os.ReadFile("/proc/cmdline"); err != nil {
		errs = append(errs, err)
	} else if name := hostnameFromCmdline(string(cmdline), cfg.HostnameParam); name != "" {
		if err := unix.Sethostname([]byte(name)); err != nil {
			errs = append(errs, fmt.Errorf("set hostname %q: %w", name, err))
		}
	}
	return errs
}

// hostnameFromCmdline returns param's value on the kernel command line,
// cut down to what a hostname may hold.
func hostnameFromCmdline(cmdline, param string) string {
	for _, f := range strings.Fields(cmdline) {
		v, ok := strings.CutPrefix(f, param+"=")
		if !ok {
			continue
		}
		v = strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
				return r
			}
			return '-'
		}, v)
		v = strings.Trim(v, "-.")
		if len(v) > 64 {
			v = strings.TrimRight(v[:64], "-.")
		}
		return v
	}
	return ""
}

// powerOff syncs the file systems and powers the VM off.
func powerOff() {
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {} // the VM is gone
}

// handlePowerSignals does what busybox's poweroff, halt and reboot ask of
// PID 1: SIGUSR2 and SIGUSR1 power off, SIGTERM reboots (with QEMU's
// -no-reboot, the VM ends either way).
func handlePowerSignals(log *slog.Logger) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGUSR1, unix.SIGUSR2, unix.SIGTERM)
	sig := <-ch
	log.Info("power signal", "signal", sig)
	unix.Sync()
	if sig == unix.SIGTERM {
		_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
