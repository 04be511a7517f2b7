package vmtemplate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/client"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
)

// Config configures a Factory.
type Config struct {
	// QEMU, Kernel, Initrd and KernelArgs are what sandboxes boot with.
	QEMU, Kernel, Initrd string
	KernelArgs           []string
	// Accel is the accelerator the sandboxes run with (kvm or tcg).
	Accel string
	// Dir holds the builds' sockets while they run.
	Dir string
	// Classes are the sizes to keep a template of.
	Classes []Class
	// BootTimeout bounds one template's boot and save.
	BootTimeout time.Duration
	// Settle is how long the template's guest is left idle after its
	// agent answered, before it is saved (the agent goes back to waiting
	// for a host).
	Settle time.Duration
	Log    *slog.Logger
}

// maxState bounds a template's saved device state (about 130 KB here).
const maxState = 64 << 20

// States of a class's template.
const (
	StateBuilding = "building"
	StateReady    = "ready"
	StateFailed   = "failed"
)

// Info describes one class's template.
type Info struct {
	Class        Class
	State        string
	Key          string
	BuiltAt      time.Time
	BuildSeconds float64
	StateBytes   int
	// Clones started from it (from any of its builds).
	Clones uint64
	// Error is the last build's failure.
	Error string
}

// Errors of Get: why a sandbox boots cold.
var (
	ErrNoClass  = errors.New("no template for this size class")
	ErrBuilding = errors.New("template still building")
	ErrFailed   = errors.New("template build failed")
)

// Factory keeps one template per class ready.
type Factory struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	slots map[Class]*slot
	// builds run one at a time: a build is a whole boot.
	buildq chan Class
}

type slot struct {
	tmpl     *Template
	building bool
	err      error
	clones   uint64
}

// New returns a factory; Start begins building.
func New(cfg Config) *Factory {
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = time.Minute
	}
	if cfg.Settle == 0 {
		cfg.Settle = 200 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Factory{cfg: cfg, ctx: ctx, cancel: cancel, slots: map[Class]*slot{}, buildq: make(chan Class, len(cfg.Classes)+1)}
	for _, c := range cfg.Classes {
		f.slots[c] = &slot{}
	}
	return f
}

// Start builds, for accel, every class's template in the background, one after the
// other, and rebuilds the ones that go stale.
func (f *Factory) Start(accel string) {
	f.cfg.Accel = accel
	os.RemoveAll(f.cfg.Dir) // builds of an agent that died
	f.wg.Add(1)
	go f.builder()
	for _, c := range f.cfg.Classes {
		f.schedule(c)
	}
}

// schedule queues a build of c unless one is queued or running.
func (f *Factory) schedule(c Class) {
	f.mu.Lock()
	s := f.slots[c]
	if s == nil || s.building {
		f.mu.Unlock()
		return
	}
	s.building = true
	f.mu.Unlock()
	select {
	case f.buildq <- c:
	case <-f.ctx.Done():
	}
}

func (f *Factory) builder() {
	defer f.wg.Done()
	for {
		select {
		case <-f.ctx.Done():
			return
		case c := <-f.buildq:
			t, err := f.build(c)
			f.mu.Lock()
			s := f.slots[c]
			s.building = false
			if err != nil {
				s.err = err
				f.mu.Unlock()
				if f.ctx.Err() == nil {
					f.cfg.Log.Error("vm template build failed; sandboxes of this size boot cold", "class", c.String(), "error", err)
				}
				continue
			}
			old := s.tmpl
			s.tmpl, s.err = t, nil
			f.mu.Unlock()
			if old != nil {
				old.retire()
			}
			f.cfg.Log.Info("vm template ready", "class", c.String(), "key", t.Key,
				"buildSeconds", t.BuildTime.Seconds(), "stateBytes", len(t.state))
		}
	}
}

// Get returns c's template for one clone (Release it once QEMU holds its
// memory), or why there is none. A template whose files changed is
// dropped and rebuilt; meanwhile sandboxes boot cold.
func (f *Factory) Get(c Class) (*Template, error) {
	f.mu.Lock()
	s := f.slots[c]
	if s == nil {
		f.mu.Unlock()
		return nil, fmt.Errorf("%w %s", ErrNoClass, c)
	}
	t := s.tmpl
	if t == nil {
		building, err := s.building, s.err
		f.mu.Unlock()
		if building {
			return nil, fmt.Errorf("%w (%s)", ErrBuilding, c)
		}
		if err != nil {
			return nil, fmt.Errorf("%w (%s): %v", ErrFailed, c, err)
		}
		return nil, fmt.Errorf("%w (%s)", ErrBuilding, c)
	}
	key, err := f.key(c)
	if err != nil || key != t.Key {
		s.tmpl = nil
		f.mu.Unlock()
		t.retire()
		f.cfg.Log.Info("vm template is stale (guest kernel, initramfs or qemu changed); rebuilding", "class", c.String(), "key", t.Key)
		go f.schedule(c)
		return nil, fmt.Errorf("%w (%s): the guest files changed", ErrBuilding, c)
	}
	s.clones++
	t.acquire()
	f.mu.Unlock()
	return t, nil
}

// Info describes the templates, by class.
func (f *Factory) Info() []Info {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Info, 0, len(f.slots))
	for c, s := range f.slots {
		i := Info{Class: c, Clones: s.clones}
		switch {
		case s.tmpl != nil:
			i.State, i.Key, i.BuiltAt = StateReady, s.tmpl.Key, s.tmpl.BuiltAt
			i.BuildSeconds, i.StateBytes = s.tmpl.BuildTime.Seconds(), len(s.tmpl.state)
		case s.building:
			i.State = StateBuilding
		case s.err != nil:
			i.State = StateFailed
		default:
			i.State = StateBuilding
		}
		if s.err != nil {
			i.Error = s.err.Error()
		}
		out = append(out, i)
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Class.MemoryMiB != out[b].Class.MemoryMiB {
			return out[a].Class.MemoryMiB < out[b].Class.MemoryMiB
		}
		return out[a].Class.VCPUs < out[b].Class.VCPUs
	})
	return out
}

// Close stops building, kills a build in progress, drops the templates
// (running clones keep their memory) and removes the build directory.
func (f *Factory) Close() {
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	for _, s := range f.slots {
		if s.tmpl != nil {
			s.tmpl.retire()
			s.tmpl = nil
		}
	}
	f.mu.Unlock()
	os.RemoveAll(f.cfg.Dir)
}

func (f *Factory) key(c Class) (string, error) {
	return fingerprint(c, f.cfg.Accel, f.cfg.KernelArgs, qemuPath(f.cfg.QEMU), f.cfg.Kernel, f.cfg.Initrd)
}

// build boots c's template guest, waits for its agent, saves it and seals
// its memory.
func (f *Factory) build(c Class) (*Template, error) {
	start := time.Now()
	key, err := f.key(c)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(f.ctx, f.cfg.BootTimeout)
	defer cancel()
	dir := filepath.Join(f.cfg.Dir, c.String())
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	ram, err := newMemory(c)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			ram.Close()
		}
	}()
	m := qemu.Machine{Name: c.String(), Dir: dir, Accel: f.cfg.Accel, VCPUs: c.VCPUs, MemoryMiB: c.MemoryMiB,
		Kernel: f.cfg.Kernel, Initrd: f.cfg.Initrd, KernelArgs: f.cfg.KernelArgs, Template: true,
		Memory: &qemu.MemoryFile{FD: 3, Share: true},
		// Clones keep the card; the guest agent gives it the pod's MAC.
		NIC: &qemu.NIC{MAC: qemu.PlaceholderMAC, Dummy: true}}
	args, err := m.Args()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, qemu.LogFile))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(f.cfg.QEMU, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{ram}
	// It dies with the agent: a template is never adopted.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	fail := func(err error) (*Template, error) {
		if b, rerr := os.ReadFile(filepath.Join(dir, qemu.LogFile)); rerr == nil && len(b) > 0 {
			err = fmt.Errorf("%w (qemu: %s)", err, lastLine(b))
		}
		return nil, err
	}
	q, err := dialQMP(ctx, filepath.Join(dir, qemu.QMPSocket), exited)
	if err != nil {
		return fail(err)
	}
	defer q.Close()
	agent, err := client.Dial(ctx, filepath.Join(dir, qemu.AgentSocket))
	if err != nil {
		return fail(fmt.Errorf("guest agent: %w", err))
	}
	if _, err := agent.Ping(ctx); err != nil {
		agent.Close()
		return fail(fmt.Errorf("guest agent: %w", err))
	}
	agent.Close()
	select {
	case <-time.After(f.cfg.Settle):
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	read := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, maxState+1))
		r.Close()
		read <- b
	}()
	err = q.SaveState(ctx, w)
	w.Close()
	if err != nil {
		return fail(fmt.Errorf("save: %w", err))
	}
	_ = q.Execute(ctx, "quit", nil, nil)
	var state []byte
	select {
	case state = <-read:
	case <-ctx.Done():
		return fail(fmt.Errorf("save: %w", ctx.Err()))
	}
	if len(state) == 0 || len(state) > maxState {
		return fail(fmt.Errorf("save: device state of %d bytes", len(state)))
	}
	select {
	case <-exited:
		exited <- nil // for the deferred wait
	case <-ctx.Done():
		return fail(fmt.Errorf("qemu did not quit: %w", ctx.Err()))
	}
	if err := seal(ram); err != nil {
		return nil, err
	}
	ok = true
	return &Template{Class: c, Key: key, BuiltAt: time.Now().UTC(), BuildTime: time.Since(start), ram: ram, state: state}, nil
}

// dialQMP connects to the QMP socket once QEMU has made it.
func dialQMP(ctx context.Context, path string, exited <-chan error) (*qemu.QMP, error) {
	for {
		q, err := qemu.Dial(ctx, path, 16)
		if err == nil {
			return q, nil
		}
		var ne *net.OpError
		if !errors.As(err, &ne) && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("qemu exited: %v", err)
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func lastLine(b []byte) string {
	s := strings.TrimRight(string(b), "\r\n")
	s = s[strings.LastIndexByte(s, '\n')+1:]
	if len(s) > 300 {
		s = s[:300]
	}
	return s
}
