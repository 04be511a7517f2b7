package sandbox

// Fast start: a sandbox restored from its size class's VM template
// (nodeagent/vmtemplate) instead of a cold boot. QEMU starts with the
// template's RAM mapped privately and waits for its device state; the
// sandbox's disks are hot-plugged before the guest runs on; its network
// card is the template's, on the pod's tap, and the guest agent gives it
// the pod's MAC and addresses, and the guest its own identity (hostname,
// machine ID, fresh entropy, the host's clock).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/nodeagent/vmtemplate"
)

// Ways a sandbox starts (Config.FastStart, Sandbox.Start).
const (
	FastStartOff      = "off"
	FastStartTemplate = "template"
	StartCold         = "cold"
	StartTemplate     = "template"
)

// Templates describes the VM templates (none unless fast start is
// "template").
func (m *Manager) Templates() []vmtemplate.Info {
	if m.tmpls == nil {
		return nil
	}
	return m.tmpls.Info()
}

// FastStart is the configured way of starting sandboxes.
func (m *Manager) FastStart() string { return m.cfg.FastStart }

// chooseStart picks the template for bt's sandbox, or none (a cold
// boot, logged with why).
func (m *Manager) chooseStart(bt *booting) {
	start := StartCold
	if m.record(bt.b).Pool {
		return
	}
	if m.tmpls != nil {
		t, err := m.tmpls.Get(vmtemplate.Class{VCPUs: bt.spec.VCPUs, MemoryMiB: bt.spec.MemoryMiB})
		if err != nil {
			m.log.Info("sandbox boots cold", "sandbox", bt.spec.ID, "why", err.Error())
		} else {
			bt.tmpl, start = t, StartTemplate
		}
	}
	// Persisted with the boot's next record write (the cgroup step's or
	// QEMU's pid), before QEMU starts: no write of its own.
	m.mu.Lock()
	bt.b.rec.Sandbox.Start = start
	if bt.tmpl != nil {
		bt.b.rec.GuestMAC = qemu.PlaceholderMAC
	}
	m.mu.Unlock()
}

// restore loads the template's device state into the paused clone, then
// plugs in the sandbox's disks; the guest sees them as hot-plugged devices
// when it runs on.
func (m *Manager) restore(ctx context.Context, bt *booting, q *qemu.QMP) error {
	state, err := bt.tmpl.State()
	if err != nil {
		return err
	}
	err = q.RestoreState(ctx, state)
	state.Close()
	if err != nil {
		return fmt.Errorf("restore from template %s: %w", bt.tmpl.Class, err)
	}
	return m.plugBootDisks(ctx, bt)
}

// stepIdentity gives the guest its own hostname, machine ID, entropy and
// clock: a clone of a template has its template's until then. A cold
// boot gets it too (fresh entropy from the host, the host's clock); a
// guest agent too old for it only costs a cold boot its machine ID.
func (m *Manager) stepIdentity(ctx context.Context, bt *booting) error {
	bt.r.mu.Lock()
	agent := bt.r.agent
	bt.r.mu.Unlock()
	id := agentproto.Identity{Hostname: hostname(bt.spec.ID), MachineID: randomHex(16), Entropy: make([]byte, 64)}
	if _, err := rand.Read(id.Entropy); err != nil {
		return err
	}
	id.UnixNano = time.Now().UnixNano()
	err := agent.SetIdentity(ctx, id)
	if err != nil && !bt.fast {
		m.log.Warn("guest agent took no identity", "sandbox", bt.spec.ID, "error", err)
		return nil
	}
	return err
}

// waitGuestDevices waits until a clone's guest has found its hot-plugged
// disks, so that Ready means what it means after a cold boot.
func (m *Manager) waitGuestDevices(ctx context.Context, bt *booting) error {
	if !bt.fast || len(bt.spec.Disks) == 0 {
		return nil
	}
	bt.r.mu.Lock()
	agent := bt.r.agent
	bt.r.mu.Unlock()
	for {
		devs, err := agent.BlockDevices(ctx)
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, d := range devs {
			seen[d.Serial] = true
		}
		missing := ""
		for _, d := range bt.spec.Disks {
			if !seen[serial(d.ID)] {
				missing = d.ID
			}
		}
		if missing == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the guest never found disk %s: %w", missing, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// serial is what the guest reads as a disk's serial (virtio-blk keeps 20
// bytes).
func serial(id string) string {
	if len(id) > 20 {
		return id[:20]
	}
	return id
}

// configureNetwork applies the pod's network; a clone's card still has
// its template's MAC, which the guest agent changes to the pod's.
func (m *Manager) configureNetwork(ctx context.Context, bt *booting, cfg agentproto.NetConfig) error {
	bt.r.mu.Lock()
	agent := bt.r.agent
	bt.r.mu.Unlock()
	if from := m.record(bt.b).GuestMAC; from != "" {
		for i := range cfg.Interfaces {
			cfg.Interfaces[i].FromMAC = from
		}
	}
	return agent.ConfigureNetwork(ctx, cfg)
}

// hostname is the guest's hostname for sandbox id: the ID cut to what a
// hostname may hold.
func hostname(id string) string {
	h := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			return r
		}
		return '-'
	}, id)
	if len(h) > 64 {
		h = h[:64]
	}
	h = strings.Trim(h, "-.")
	if h == "" {
		h = "sandbox"
	}
	return h
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
