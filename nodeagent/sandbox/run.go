package sandbox

// A run: one QEMU process of a sandbox and the connections to it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/nodeagent/guest/client"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
)

// run is one QEMU process of a sandbox and what hangs off it.
type run struct {
	box    *box
	cancel context.CancelFunc // ends the boot
	ended  chan struct{}      // closed once QEMU is gone and cleaned up
	// released closes when the manager lets go of a VM it leaves running
	// (detach).
	released chan struct{}

	// connected closes once the run is usable (its boot or re-adoption
	// reached Ready, with QMP and the guest agent connected), or it ended.
	connected     chan struct{}
	connectedOnce sync.Once

	mu       sync.Mutex
	proc     *process
	qmp      *qemu.QMP
	agent    *client.Client
	console  io.Closer // the guest's serial console, copied into its log
	group    cgroup.Group
	stopping bool   // a Stop asked for this exit
	failure  string // why the boot failed, if it did
	detached bool   // the manager let go of it (Close)
	waiters  map[string]chan struct{}
	// reconnects counts the guest agent connections lost (not to a
	// violation) and made again.
	reconnects int

	// disks is the last reading of QEMU's disk counters.
	disks diskStats
}

func newRun(b *box) *run {
	return &run{box: b, ended: make(chan struct{}), released: make(chan struct{}), connected: make(chan struct{}), waiters: map[string]chan struct{}{}}
}

func (r *run) markConnected() { r.connectedOnce.Do(func() { close(r.connected) }) }

// detach closes the agent's connections to a VM it leaves running.
func (r *run) detach() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.detached {
		close(r.released)
	}
	r.detached = true
	if r.cancel != nil {
		r.cancel()
	}
	if r.agent != nil {
		r.agent.Close()
	}
	if r.qmp != nil {
		r.qmp.Close()
	}
	if r.console != nil {
		r.console.Close()
	}
}

func (r *run) setQMP(q *qemu.QMP) {
	r.mu.Lock()
	r.qmp = q
	r.mu.Unlock()
}

// dialQMP connects to QEMU's monitor, waiting for the socket to appear.
func dialQMP(ctx context.Context, path string, proc *process) (*qemu.QMP, error) {
	for {
		q, err := qemu.Dial(ctx, path, 64)
		if err == nil {
			return q, nil
		}
		var ne *net.OpError
		if !errors.As(err, &ne) && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("qmp: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: %w", err)
		case <-proc.done:
			return nil, fmt.Errorf("qmp: qemu exited before its monitor opened")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// pumpEvents hands DEVICE_DELETED events to the unplug waiting for them.
func (r *run) pumpEvents(q *qemu.QMP) {
	for ev := range q.Events() {
		if ev.Name != "DEVICE_DELETED" {
			continue
		}
		var d struct {
			Device string `json:"device"`
		}
		_ = json.Unmarshal(ev.Data, &d)
		r.mu.Lock()
		if ch, ok := r.waiters[d.Device]; ok {
			close(ch)
			delete(r.waiters, d.Device)
		}
		r.mu.Unlock()
	}
}

// watch waits for QEMU to exit, then records why and cleans up.
func (m *Manager) watch(b *box, r *run) {
	<-r.proc.done
	r.mu.Lock()
	detached := r.detached
	r.mu.Unlock()
	if detached {
		return
	}
	m.finish(b, r, r.proc.reason)
}

// maxReconnects is how many times a run's guest agent connection may end
// (other than by a protocol violation) and be made again. The guest agent
// is PID 1 and keeps its session across host connections: a guest that
// keeps dropping it is broken or hostile.
const maxReconnects = 3

// setAgent makes c the run's guest agent connection and watches it.
func (m *Manager) setAgent(b *box, r *run, c *client.Client) {
	r.mu.Lock()
	r.agent = c
	r.mu.Unlock()
	go m.superviseAgent(b, r, c)
}

// superviseAgent waits for the end of a run's guest agent connection. A
// guest that broke the protocol is compromised or broken, and nothing it
// says can be trusted any more: QEMU is killed and the sandbox goes
// Failed with the violation as its reason. A connection that ended
// otherwise while QEMU runs (the guest restarted its session) is made
// again, at most maxReconnects times.
func (m *Manager) superviseAgent(b *box, r *run, c *client.Client) {
	<-c.Done()
	cause := c.Err()
	if errors.Is(cause, client.ErrHostClosed) {
		return // the run is ending, or the agent is
	}
	id := b.rec.Sandbox.Spec.ID
	r.mu.Lock()
	stopping, detached, proc := r.stopping, r.detached, r.proc
	r.mu.Unlock()
	if stopping || detached {
		return // a guest shutting down ends the connection
	}
	if errors.Is(cause, client.ErrProtocol) {
		m.failRun(r, cause.Error())
		return
	}
	// QEMU's exit ends the connection too; watch reports that.
	select {
	case <-proc.done:
		return
	case <-r.ended:
		return
	case <-time.After(time.Second):
	}
	r.mu.Lock()
	r.reconnects++
	n := r.reconnects
	r.mu.Unlock()
	if n > maxReconnects {
		m.failRun(r, fmt.Sprintf("guest agent connection lost %d times, last: %v", n, cause))
		return
	}
	m.log.Warn("guest agent connection lost; reconnecting", "sandbox", id, "error", cause)
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.BootTimeout)
	defer cancel()
	go func() { // the run's end ends the attempt
		select {
		case <-r.ended:
			cancel()
		case <-ctx.Done():
		}
	}()
	nc, err := client.Dial(ctx, filepath.Join(b.dir, qemu.AgentSocket))
	r.mu.Lock()
	gone := r.stopping || r.detached || isClosed(r.ended)
	if !gone && err == nil {
		r.agent = nc // under the lock that finish and detach close it under
	}
	r.mu.Unlock()
	switch {
	case gone && err == nil:
		nc.Close()
	case gone:
	case err != nil:
		m.failRun(r, fmt.Sprintf("guest agent connection lost (%v) and not made again: %v", cause, err))
	default:
		go m.superviseAgent(b, r, nc)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// failRun ends a running sandbox for reason: QEMU is killed, and its exit
// (seen by watch) records the sandbox as Failed with the reason.
func (m *Manager) failRun(r *run, reason string) {
	r.mu.Lock()
	if r.failure == "" {
		r.failure = reason
	}
	proc := r.proc
	r.mu.Unlock()
	m.log.Error("ending sandbox: killing its qemu", "sandbox", r.box.rec.Sandbox.Spec.ID, "reason", reason)
	proc.signal(syscall.SIGKILL)
}
