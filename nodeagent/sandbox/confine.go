package sandbox

// Confining QEMU: its own uid, a chroot into its sandbox dir, and what
// its rbd driver needs there.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// confinement picks the sandbox's own unprivileged uid (recorded first)
// and prepares its dir as QEMU's chroot: traversable by that uid, and
// with what QEMU's rbd driver needs for disks hot-plugged once QEMU is
// chrooted (see rbdInChroot). Everything else in the dir stays root's
// (0600 files, root-owned sockets). It returns environment for QEMU.
func (m *Manager) confinement(b *box) (*qemu.Confinement, []string, error) {
	m.mu.Lock()
	uid := b.rec.UID
	if uid == 0 {
		used := map[int]bool{}
		for _, o := range m.boxes {
			used[o.rec.UID] = true
		}
		for u := m.cfg.UIDs.First; u < m.cfg.UIDs.First+m.cfg.UIDs.Count; u++ {
			if !used[u] {
				uid = u
				break
			}
		}
		if uid == 0 {
			m.mu.Unlock()
			return nil, nil, fmt.Errorf("no free uid for qemu in %d-%d: %w", m.cfg.UIDs.First, m.cfg.UIDs.First+m.cfg.UIDs.Count-1, errdefs.ErrResourceExhausted)
		}
		b.rec.UID = uid
		m.persistLocked(b)
	}
	m.mu.Unlock()
	if err := os.Chmod(b.dir, 0o711); err != nil {
		return nil, nil, err
	}
	var env []string
	if m.cfg.Ceph.Conf != "" {
		e, err := rbdInChroot(b.dir, m.cfg.Ceph.Conf)
		if err != nil {
			return nil, nil, err
		}
		env = e
	}
	return &qemu.Confinement{UID: uid, GID: uid}, env, nil
}

// chrootCephConf is ceph.conf's name in a confined QEMU's chroot (its
// sandbox dir), for the rbd driver of hot-plugged disks.
const chrootCephConf = "ceph.conf"

// rbdModuleDirs are where distributions install QEMU's block-rbd.so.
var rbdModuleDirs = []string{"/usr/lib/x86_64-linux-gnu/qemu", "/usr/lib64/qemu", "/usr/lib/qemu"}

// rbdInChroot lets a chrooted QEMU open RBD images hot-plugged later.
// QEMU loads its rbd driver (block-rbd.so) on first use, which in a
// chroot finds neither the module nor librbd: the module is copied into
// dir/modules (QEMU_MODULE_DIR, as QEMU sees it), librbd and librados are
// loaded at exec (LD_PRELOAD by soname), so that loading the module needs
// no other file. librados gets a ceph.conf with only the monitors: the
// node's may name keyrings, logs and sockets that are not in the chroot
// (the key comes over QMP).
func rbdInChroot(dir, conf string) ([]string, error) {
	mon, err := monHost(conf)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, chrootCephConf), []byte("[global]\nmon host = "+mon+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("ceph conf: %w", err)
	}
	for _, d := range rbdModuleDirs {
		mod, err := os.ReadFile(filepath.Join(d, "block-rbd.so"))
		if err != nil {
			continue
		}
		mods := filepath.Join(dir, "modules")
		if err := os.MkdirAll(mods, 0o711); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(mods, "block-rbd.so"), mod, 0o644); err != nil {
			return nil, err
		}
		return []string{"QEMU_MODULE_DIR=/modules", "LD_PRELOAD=librbd.so.1 librados.so.2"}, nil
	}
	return nil, nil // no rbd driver: RBD disks fail as they would unconfined
}

// monHost reads the monitors ("mon host" or "mon_host") from a ceph.conf.
func monHost(conf string) (string, error) {
	b, err := os.ReadFile(conf)
	if err != nil {
		return "", fmt.Errorf("ceph conf: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k = strings.Join(strings.FieldsFunc(strings.TrimSpace(k), func(r rune) bool { return r == ' ' || r == '_' }), " ")
		if k == "mon host" {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("ceph conf %s names no mon host", conf)
}
