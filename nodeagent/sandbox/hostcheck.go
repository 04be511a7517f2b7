package sandbox

// Checks of a spec against this node, beyond its syntax (spec.go): a
// sandbox may not take the agent's or the host's network namespace, may
// not be given the agent's own files as disks, and one pod netns holds
// one sandbox.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// fileID is a file's identity: its device and inode.
type fileID struct{ dev, ino uint64 }

func statID(path string) (fileID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, nil
}

// checkNetNS refuses the namespace of the agent itself and of the host
// (PID 1): a sandbox there would take the node's own interfaces.
func checkNetNS(id, netns string) (fileID, error) {
	ns, err := statID(netns)
	if err != nil {
		return fileID{}, fmt.Errorf("sandbox %q: netns %s: %v: %w", id, netns, err, errdefs.ErrInvalidArgument)
	}
	for _, own := range []string{"/proc/self/ns/net", "/proc/1/ns/net"} {
		if o, err := statID(own); err == nil && o == ns {
			return fileID{}, fmt.Errorf("sandbox %q: netns %s is the node's own network namespace: %w", id, netns, errdefs.ErrInvalidArgument)
		}
	}
	return ns, nil
}

// checkDiskPath refuses a disk that lies in the agent's state dir (its
// records, sockets and keys), following symlinks.
func checkDiskPath(stateDir string, d Disk) error {
	if d.Path == "" {
		return nil
	}
	real, err := filepath.EvalSymlinks(d.Path)
	if err != nil {
		return fmt.Errorf("disk %s: %v: %w", d.ID, err, errdefs.ErrInvalidArgument)
	}
	state, err := filepath.EvalSymlinks(stateDir)
	if err != nil {
		state = filepath.Clean(stateDir)
	}
	if real == state || strings.HasPrefix(real, state+string(os.PathSeparator)) {
		return fmt.Errorf("disk %s: %s lies in the agent's state dir: %w", d.ID, d.Path, errdefs.ErrInvalidArgument)
	}
	return nil
}

// checkHost checks spec against the node; m.mu is held. netnsOf gives the
// identity of a live sandbox's netns.
func (m *Manager) checkHostLocked(spec Spec) error {
	for _, d := range spec.Disks {
		if err := checkDiskPath(m.cfg.StateDir, d); err != nil {
			return fmt.Errorf("sandbox %q: %w", spec.ID, err)
		}
	}
	if spec.NetNS == "" {
		return nil
	}
	ns, err := checkNetNS(spec.ID, spec.NetNS)
	if err != nil {
		return err
	}
	for id, b := range m.boxes {
		if id == spec.ID || b.rec.Sandbox.Spec.NetNS == "" {
			continue
		}
		switch b.rec.Sandbox.State {
		case StateStopped, StateFailed:
			continue
		}
		if o, err := statID(b.rec.Sandbox.Spec.NetNS); err == nil && o == ns {
			return fmt.Errorf("sandbox %q: netns %s already holds sandbox %q: %w", spec.ID, spec.NetNS, id, errdefs.ErrFailedPrecondition)
		}
	}
	return nil
}
