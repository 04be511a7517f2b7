package sandbox

// A run: one QEMU process of a sandbox and the connections to it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
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

	// connected closes once the run is usable (its boot or re-adoption
	// reached Ready, with QMP and the guest agent connected), or it ended.
	connected     chan struct{}
	connectedOnce sync.Once

	mu       sync.Mutex
	proc     *process
	qmp      *qemu.QMP
	agent    *client.Client
	group    cgroup.Group
	stopping bool   // a Stop asked for this exit
	failure  string // why the boot failed, if it did
	detached bool   // the manager let go of it (Close)
	waiters  map[string]chan struct{}
}

func newRun(b *box) *run {
	return &run{box: b, ended: make(chan struct{}), connected: make(chan struct{}), waiters: map[string]chan struct{}{}}
}

func (r *run) markConnected() { r.connectedOnce.Do(func() { close(r.connected) }) }

// detach closes the agent's connections to a VM it leaves running.
func (r *run) detach() {
	r.mu.Lock()
	defer r.mu.Unlock()
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
