//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
)

// identitySystem is where SetIdentity lands: the guest's kernel and /etc
// (osIdentity), or a fake in tests.
type identitySystem interface {
	SetHostname(name string) error
	// WriteMachineID replaces /etc/machine-id atomically.
	WriteMachineID(id string) error
	// AddEntropy mixes b into the kernel's pool, credited in full, and
	// reseeds the CRNG at once.
	AddEntropy(b []byte) error
	SetClock(unixNano int64) error
}

// setIdentity applies id: the clock first (it came with the request, so
// it is freshest now), then the entropy, so that anything random from here
// on differs from the template's other clones, then the machine id and the
// hostname. It stops at the first failure, which names the step.
func setIdentity(sys identitySystem, id agentproto.Identity) error {
	if err := id.Validate(); err != nil {
		return coded(agentproto.CodeInvalidArgument, err)
	}
	if id.UnixNano != 0 {
		if err := sys.SetClock(id.UnixNano); err != nil {
			return coded(agentproto.CodeInternal, fmt.Errorf("set clock: %w", err))
		}
	}
	if err := sys.AddEntropy(id.Entropy); err != nil {
		return coded(agentproto.CodeInternal, fmt.Errorf("add entropy: %w", err))
	}
	if err := sys.WriteMachineID(id.MachineID); err != nil {
		return coded(agentproto.CodeInternal, fmt.Errorf("write machine id: %w", err))
	}
	if err := sys.SetHostname(id.Hostname); err != nil {
		return coded(agentproto.CodeInternal, fmt.Errorf("set hostname %q: %w", id.Hostname, err))
	}
	return nil
}

// osIdentity is the real identitySystem.
type osIdentity struct {
	// machineIDPath is /etc/machine-id.
	machineIDPath string
}

func (osIdentity) SetHostname(name string) error { return unix.Sethostname([]byte(name)) }

// WriteMachineID writes id and a newline to the machine id file, mode
// 0444. In place: the guest's root is in memory and nothing reads the file
// while the sandbox starts (and a temporary file and rename cost a
// template's clone, whose every code path is new to TCG, some 20 ms).
func (s osIdentity) WriteMachineID(id string) error {
	if err := os.MkdirAll(filepath.Dir(s.machineIDPath), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(s.machineIDPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o444)
	if err != nil {
		return err
	}
	_, err = f.WriteString(id + "\n")
	if err == nil {
		err = f.Chmod(0o444)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (osIdentity) AddEntropy(b []byte) error {
	fd, err := unix.Open("/dev/urandom", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/urandom: %w", err)
	}
	defer unix.Close(fd)
	info := randPoolInfo(b)
	defer clear(info)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("ioctl RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("ioctl RNDRESEEDCRNG: %w", e)
	}
	return nil
}

// randPoolInfo lays b out as the kernel's struct rand_pool_info, crediting
// every bit: int entropy_count (bits), int buf_size (bytes), then b.
func randPoolInfo(b []byte) []byte {
	info := make([]byte, 8+len(b))
	binary.NativeEndian.PutUint32(info[0:], uint32(len(b)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(b)))
	copy(info[8:], b)
	return info
}

func (osIdentity) SetClock(unixNano int64) error {
	ts := unix.NsecToTimespec(unixNano)
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}
