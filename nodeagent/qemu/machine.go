package qemu

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Files in a sandbox's working directory.
const (
	QMPSocket   = "qmp.sock"
	AgentSocket = "agent.sock"
	// ConsoleFIFO carries the guest's serial console (ttyS0) from QEMU to
	// the node agent, which keeps it in ConsoleLog, rotated (see Console).
	ConsoleFIFO = "console.fifo"
	ConsoleLog  = "console.log"
	// LogFile is where QEMU's own stdout and stderr go.
	LogFile = "qemu.log"
	PIDFile = "qemu.pid"
)

// AgentPortName is the virtio-serial port the guest agent listens on.
const AgentPortName = "agent.0"

// Machine describes one sandbox VM. Args turns it into QEMU's command line.
type Machine struct {
	// Name is the sandbox ID; it is on the command line as
	// "-name sandbox-<ID>" (ProcessName) so that admins find the VM with ps
	// and re-adoption can check it.
	Name string
	// Dir is the VM's working directory (sockets, pid file).
	Dir string
	// Accel is AccelKVM or AccelTCG.
	Accel     string
	VCPUs     uint32
	MemoryMiB uint32
	Kernel    string
	Initrd    string
	// KernelArgs are appended to the default guest command line.
	KernelArgs []string
	// NIC, when set, is a virtio-net device on the tap whose file the
	// launcher passes (fd 3: exec.Cmd.ExtraFiles[0], unless NIC.FD says).
	NIC *NIC
	// Disks are attached at boot as virtio-blk devices.
	Disks []BlockDevice
	// Console, when set, takes the guest's serial console; nil discards
	// it.
	Console *Console
	// Paused starts the VM stopped (-S): the caller puts QEMU in its
	// cgroup, then sends "cont".
	Paused bool
	// TBSizeMiB is TCG's translation cache (0: DefaultTBSizeMiB). Code
	// the guest runs is translated into it once; when it is full, all of
	// it is dropped and translated again as it runs.
	TBSizeMiB int
	// Memory, when set, backs guest RAM with a file QEMU gets as a
	// descriptor (a template's memfd) instead of a memfd of its own.
	Memory *MemoryFile
	// Incoming starts QEMU waiting for a saved state (-incoming defer),
	// which QMP.RestoreState then loads.
	Incoming bool
	// Template: a VM that becomes the template of others. Its name is
	// "nodeinfra-template-<Name>", and its kernel command line carries no
	// sandbox ID (clones get their identity from the guest agent).
	Template bool
	// Confine, when set, locks QEMU down once it has opened what it needs
	// at start (kernel, initrd, sockets, boot disks, the tap): a seccomp
	// filter, the credentials of an unprivileged user and a chroot into
	// Dir. Later disks reach it as file descriptors (QMP add-fd).
	Confine *Confinement
}

// Confinement is the unprivileged identity a confined QEMU runs as; each
// sandbox gets its own, so that one tenant's QEMU cannot signal or trace
// another's.
type Confinement struct {
	UID, GID int
}

// args: QEMU's seccomp filter (no obsolete system calls, no fork or exec,
// no scheduler or resource changes), then a chroot into dir and a drop to
// uid:gid "just before starting the VM". elevateprivileges stays allowed
// because QEMU installs the filter before it drops to uid:gid with
// setgid/setuid (with it denied, that drop kills QEMU); once dropped the
// process holds no capability and cannot exec a setuid program.
func (c Confinement) args(dir string) []string {
	return []string{
		"-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
		"-runas", strconv.Itoa(c.UID) + ":" + strconv.Itoa(c.GID),
		"-chroot", dir,
	}
}

// Console is where the guest's serial console goes: the write end of a
// FIFO (ConsoleFIFO), which the launcher passes as descriptor FD. QEMU
// makes it non-blocking and writes a byte at a time: while the FIFO is
// full the serial port waits, as a real UART would (QEMU's main loop
// never does); while nobody reads it (the agent is down) writes fail
// with EPIPE, which QEMU ignores, and the output is dropped. A pipe, not
// a socket: a pipe gathers one-byte writes into pages, so the reader
// pays per read, where a socket costs it per byte.
type Console struct {
	FD int
}

// consoleFDSet is the fd set holding the console's descriptor (QEMU opens
// /dev/fdset/N; sets added later over QMP take other numbers).
const consoleFDSet = 1

func (c *Console) args() []string {
	return []string{
		"-add-fd", fmt.Sprintf("fd=%d,set=%d,opaque=console", c.FD, consoleFDSet),
		"-chardev", fmt.Sprintf("file,id=console,path=/dev/fdset/%d,append=on", consoleFDSet),
		"-serial", "chardev:console",
	}
}

// MemoryFile is guest RAM in a file passed as descriptor FD (QEMU opens
// /proc/self/fd/FD). Share maps it shared (a template writing its RAM
// into the file); otherwise privately, copy-on-write (a clone reading
// the template's pages, writing its own).
type MemoryFile struct {
	FD    int
	Share bool
}

func (f MemoryFile) object(size string) string {
	share := "off"
	if f.Share {
		share = "on"
	}
	return fmt.Sprintf("memory-backend-file,id=mem,size=%s,mem-path=/proc/self/fd/%d,share=%s", size, f.FD, share)
}

// NIC is the VM's network card: on a tap, descriptor FD (3 when 0), or
// on nothing (Dummy: a hub port that leads nowhere, for a template's card
// and for its clones without a pod network).
type NIC struct {
	MAC   string
	FD    int
	Dummy bool
}

// PlaceholderMAC is the MAC of a card made before its pod is known (a VM
// template's, which its clones keep, and a pool VM's) until the guest
// agent gives it the pod's (Interface.FromMAC).
const PlaceholderMAC = "02:00:5e:10:00:01"

func (n NIC) args() []string {
	backend := "hubport,id=net0,hubid=0"
	if !n.Dummy {
		fd := n.FD
		if fd == 0 {
			fd = 3
		}
		// With fd=, QEMU reads the vnet header setting off the tap itself.
		backend = fmt.Sprintf("tap,id=net0,fd=%d,vhost=off", fd)
	}
	// No option ROM: PXE has nothing to boot here.
	return []string{"-netdev", backend, "-device", "virtio-net-pci,netdev=net0,romfile=,mac=" + n.MAC}
}

// DefaultTBSizeMiB is the translation cache of a sandbox under TCG: it
// meets the boot time and memory targets (README: 16 MiB gave 0.56-0.60 s
// and 64 MiB unique, 8 MiB 0.64 s and 55 MiB).
const DefaultTBSizeMiB = 12

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// BlockDevice is a virtio-blk disk: a host file or block device, or an RBD
// image opened by QEMU's rbd driver.
type BlockDevice struct {
	// ID names the disk; the guest sees it as the device's serial.
	ID       string
	Path     string
	RBD      *RBD
	ReadOnly bool
	// Driver is QEMU's block driver for Path: "file" or "host_device";
	// empty means by what Path is.
	Driver string
}

// RBD is an image of a Ceph pool, with the cephx user whose base64 key is
// in KeyFile (QEMU reads it through a secret object).
type RBD struct {
	Pool, Image string
	Conf        string // ceph.conf with the monitors
	User        string
	KeyFile     string
	// Key, when set, is the key itself, for a hot-plug over QMP.
	Key string
}

// ProcessName is a sandbox's name outside the agent: QEMU's -name (on its
// command line, where re-adoption checks it, and in ps) and its cgroup.
func ProcessName(id string) string { return "sandbox-" + id }

// NodeName is the block node of disk id; DeviceID its virtio-blk device;
// SecretID the secret object holding its cephx key.
func NodeName(id string) string { return "disk-" + id }
func DeviceID(id string) string { return "blk-" + id }
func SecretID(id string) string { return "sec-" + id }

// Blockdev returns the blockdev-add arguments of d (also used on the
// command line as JSON, which needs no comma escaping).
func (d BlockDevice) Blockdev() map[string]any {
	var file map[string]any
	switch {
	case d.RBD != nil:
		file = map[string]any{"driver": "rbd", "pool": d.RBD.Pool, "image": d.RBD.Image,
			"conf": d.RBD.Conf, "user": d.RBD.User, "key-secret": SecretID(d.ID)}
	default:
		driver := d.Driver
		if driver == "" {
			driver = "file"
			if fi, err := os.Stat(d.Path); err == nil && fi.Mode()&os.ModeDevice != 0 {
				driver = "host_device"
			}
		}
		file = map[string]any{"driver": driver, "filename": d.Path}
	}
	return map[string]any{"driver": "raw", "node-name": NodeName(d.ID), "read-only": d.ReadOnly,
		"file": file, "discard": "unmap"}
}

// Secret returns the object-add arguments of the disk's cephx key, or nil:
// read from KeyFile, or given as Key over QMP for a hot-plug into a
// confined QEMU, which can no longer open the file (never on a command
// line).
func (d BlockDevice) Secret() map[string]any {
	if d.RBD == nil {
		return nil
	}
	if d.RBD.Key != "" {
		return map[string]any{"qom-type": "secret", "id": SecretID(d.ID), "data": d.RBD.Key, "format": "base64"}
	}
	return map[string]any{"qom-type": "secret", "id": SecretID(d.ID), "file": d.RBD.KeyFile, "format": "base64"}
}

// Device returns the device_add arguments of d's virtio-blk device.
func (d BlockDevice) Device() map[string]any {
	return map[string]any{"driver": "virtio-blk-pci", "id": DeviceID(d.ID), "drive": NodeName(d.ID), "serial": d.ID}
}

// DefaultKernelArgs boot the tailored guest kernel fast (Kata's choices):
// no timer checks or calibration, expedited RCU, no PCI scan past bus 0.
// The PS/2 controller has nothing to offer a sandbox and its probe costs
// about 30 ms under TCG. pci=noacpi routes legacy PCI interrupts without
// running ACPI's interrupt-link methods (150 ms under TCG for the first
// device); virtio uses MSI-X anyway, and ACPI hot-plug still works.
var DefaultKernelArgs = []string{"console=ttyS0", "tsc=reliable", "no_timer_check", "rcupdate.rcu_expedited=1",
	"noreplace-smp", "cryptomgr.notests", "reboot=k", "pci=lastbus=0,noacpi", "panic=-1", "quiet",
	"i8042.noaux", "i8042.nokbd", "i8042.nopnp"}

// Args returns QEMU's arguments (without the binary).
func (m Machine) Args() ([]string, error) {
	if m.Name == "" || m.Dir == "" || m.Kernel == "" || m.Initrd == "" {
		return nil, fmt.Errorf("machine: name, dir, kernel and initrd are required")
	}
	if m.VCPUs == 0 || m.MemoryMiB == 0 {
		return nil, fmt.Errorf("machine %s: vcpus and memory must be positive", m.Name)
	}
	kargs := append([]string{}, DefaultKernelArgs...)
	if m.VCPUs == 1 {
		kargs = append(kargs, "noapictimer")
	}
	if khz := TSCkHz(); khz > 0 {
		kargs = append(kargs, "tsc_early_khz="+strconv.Itoa(khz))
	}
	name := ProcessName(m.Name)
	if m.Template {
		name = "nodeinfra-template-" + m.Name
	} else {
		kargs = append(kargs, "nodeinfra.id="+m.Name)
	}
	kargs = append(kargs, m.KernelArgs...)
	tb := m.TBSizeMiB
	if tb == 0 {
		tb = DefaultTBSizeMiB
	}
	accel, cpu := "tcg,tb-size="+strconv.Itoa(tb), "max"
	if m.Accel == AccelKVM {
		accel, cpu = "kvm", "host"
	}
	mem := strconv.FormatUint(uint64(m.MemoryMiB), 10) + "M"
	memObject := "memory-backend-memfd,id=mem,size=" + mem + ",share=on"
	if m.Memory != nil {
		memObject = m.Memory.object(mem)
	}
	a := []string{
		"-name", name,
		"-M", "pc,memory-backend=mem", "-accel", accel, "-cpu", cpu,
		// ACPI hot-plug on the root bus only: less AML for the guest to
		// run at boot (about 30 ms under TCG).
		"-global", "PIIX4_PM.acpi-pci-hotplug-with-bridge-support=off",
		"-smp", strconv.FormatUint(uint64(m.VCPUs), 10), "-m", mem,
		"-object", memObject,
		"-bios", "/usr/share/qemu/qboot.rom",
		"-kernel", m.Kernel, "-initrd", m.Initrd, "-append", strings.Join(kargs, " "),
		"-nographic", "-nodefaults", "-no-user-config", "-no-reboot",
		"-chardev", "socket,id=qmp,path=" + filepath.Join(m.Dir, QMPSocket) + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=agent,path=" + filepath.Join(m.Dir, AgentSocket) + ",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=agent,name=" + AgentPortName,
		"-pidfile", filepath.Join(m.Dir, PIDFile),
	}
	if strings.ContainsAny(m.Dir, ",") {
		return nil, fmt.Errorf("machine %s: dir %q must not contain a comma", m.Name, m.Dir)
	}
	if m.Console != nil {
		a = append(a, m.Console.args()...)
	} else {
		a = append(a, "-serial", "null")
	}
	if m.NIC != nil {
		a = append(a, m.NIC.args()...)
	}
	for _, d := range m.Disks {
		if s := d.Secret(); s != nil {
			b, _ := json.Marshal(s)
			a = append(a, "-object", string(b))
		}
		b, _ := json.Marshal(d.Blockdev())
		dev := d.Device()
		a = append(a, "-blockdev", string(b), "-device",
			fmt.Sprintf("virtio-blk-pci,id=%s,drive=%s,serial=%s", dev["id"], dev["drive"], dev["serial"]))
	}
	if m.Confine != nil {
		if m.Confine.UID <= 0 || m.Confine.GID <= 0 {
			return nil, fmt.Errorf("machine %s: a confined qemu needs a non-root uid and gid", m.Name)
		}
		a = append(a, m.Confine.args(m.Dir)...)
	}
	if m.Paused {
		a = append(a, "-S")
	}
	if m.Incoming {
		a = append(a, "-incoming", "defer")
	}
	return a, nil
}

// TSCkHz is the host TSC frequency, passed to the guest so that it skips
// calibration (slow and flaky under TCG); 0 when unknown.
func TSCkHz() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	return 0
}
