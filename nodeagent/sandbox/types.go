// Package sandbox runs pod sandboxes as QEMU virtual machines with a guest
// agent (Kata-style): it boots them, wires the pod's network namespace and
// volumes into them, runs processes in them, stops and deletes them, and
// re-adopts the ones still running when the agent restarts. It knows nothing
// of gRPC; nodeagent/server adapts it.
package sandbox

import (
	"context"
	"io"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
)

// State is where a sandbox is in its life.
type State string

// States. Creating → Ready → Stopping → Stopped; any of them → Failed when
// QEMU dies on its own or the boot fails.
const (
	StateCreating State = "Creating"
	StateReady    State = "Ready"
	StateStopping State = "Stopping"
	StateStopped  State = "Stopped"
	StateFailed   State = "Failed"
)

// Spec is what the control plane asks for. Two creates with the same ID
// must carry equal specs.
type Spec struct {
	// ID names the sandbox: 1-63 characters of [a-z0-9-_.], no path
	// characters; it appears on QEMU's command line and names its dir.
	ID string `json:"id"`
	// VCPUs is the number of virtual CPUs (1-64; 0 means 1).
	VCPUs uint32 `json:"vcpus"`
	// MemoryMiB is the guest's memory (64-65536; 0 means 128).
	MemoryMiB uint32 `json:"memoryMiB"`
	// NetNS is the absolute path of the pod's network namespace, where
	// cni-eni put the ENI as eth0; empty means no network.
	NetNS string `json:"netns,omitempty"`
	// Disks are attached at boot, in order.
	Disks []Disk `json:"disks,omitempty"`
	// Resources override the default cgroup limits (CPUs = vCPUs, memory
	// = guest memory + the agent's overhead, 1024 pids) field by field.
	Resources cgroup.Resources `json:"resources"`
	// CgroupParent is the cgroup the sandbox's cgroup goes under (a pod's,
	// so that the kubelet accounts for the VM); empty: the agent's parent.
	CgroupParent string `json:"cgroupParent,omitempty"`
}

// Disk is a volume given to the guest as a virtio-blk device whose serial
// is the disk's ID (the guest finds it in /sys/block/vd*/serial).
type Disk struct {
	// ID names the disk within its sandbox (1-20 characters of
	// [a-z0-9-_]); empty means "disk<index>" at create.
	ID string `json:"id"`
	// Path is an absolute host block device or regular file.
	Path string `json:"path,omitempty"`
	// RBD is a Ceph RBD image, opened by QEMU's own rbd driver.
	RBD *RBDImage `json:"rbd,omitempty"`
	// ReadOnly attaches the disk read-only.
	ReadOnly bool `json:"readOnly,omitempty"`
	// QoS throttles the disk inside QEMU. It is a setting, not part of
	// the disk's identity (Equal ignores it); UpdateResources changes it.
	QoS DiskQoS `json:"qos"`
}

// DiskQoS limits a disk inside QEMU (its block layer's throttling, so RBD
// disks too); 0 means no limit.
type DiskQoS struct {
	ReadBps   uint64 `json:"readBps,omitempty"`
	WriteBps  uint64 `json:"writeBps,omitempty"`
	ReadIOPS  uint64 `json:"readIOPS,omitempty"`
	WriteIOPS uint64 `json:"writeIOPS,omitempty"`
}

// RBDImage names an image; the cephx user and key come from the agent's
// configuration.
type RBDImage struct {
	Pool  string `json:"pool"`
	Image string `json:"image"`
	// User is the cephx user QEMU opens the image as (without "client.");
	// empty means the agent's --ceph-user. Give each tenant a
	// least-privilege user (README: profile rbd on its pool).
	User string `json:"user,omitempty"`
	// Key is User's base64 key; empty means the agent's --ceph-keyring.
	// It is never stored or shown: only QEMU gets it.
	Key string `json:"-"`
}

// Sandbox is the observed state of one sandbox.
type Sandbox struct {
	Spec  Spec  `json:"spec"`
	State State `json:"state"`
	// Reason says why the sandbox is Failed or Stopped (an exit status, a
	// boot error), empty otherwise.
	Reason string `json:"reason,omitempty"`
	// PID is QEMU's process ID while it runs.
	PID int `json:"pid,omitempty"`
	// Accel is "kvm" or "tcg".
	Accel string `json:"accel,omitempty"`
	// Addresses are the pod addresses the guest took over ("10.1.0.11/24").
	Addresses []string `json:"addresses,omitempty"`
	// Disks are the disks attached now (boot disks and hot-plugged ones).
	Disks     []Disk    `json:"disks,omitempty"`
	WorkDir   string    `json:"workDir"`
	CreatedAt time.Time `json:"createdAt"`
	// ReadyAt is when the guest agent first answered.
	ReadyAt time.Time `json:"readyAt,omitempty"`
	// Resources are the cgroup limits in force: the defaults with the
	// spec's over them, then each update's.
	Resources cgroup.Resources `json:"resources"`
	// Cgroup is the sandbox's cgroup path while it has one.
	Cgroup string `json:"cgroup,omitempty"`
	// Start is how it started: StartCold or StartTemplate.
	Start string `json:"start,omitempty"`
}

// EventType says what happened.
type EventType string

// Event types.
const (
	EventState        EventType = "State"        // the sandbox entered Sandbox.State
	EventDiskAttached EventType = "DiskAttached" // Disk was hot-plugged
	EventDiskDetached EventType = "DiskDetached" // Disk was unplugged
	EventDeleted      EventType = "Deleted"      // the sandbox is gone
	EventOOMKill      EventType = "OOMKill"      // the OOM killer killed in the sandbox's cgroup
)

// Event is one change, as WatchEvents streams it.
type Event struct {
	Time    time.Time `json:"time"`
	Type    EventType `json:"type"`
	Sandbox Sandbox   `json:"sandbox"`
	Disk    *Disk     `json:"disk,omitempty"`
	// Group names the host process group of an OOMKill there (then
	// Sandbox is empty).
	Group string `json:"group,omitempty"`
}

// ExecRequest runs a process in the guest. Stdin may be nil (the process
// reads EOF); Stdout and Stderr may be nil (output is dropped).
type ExecRequest struct {
	Argv   []string
	Env    []string // KEY=VALUE; PATH is set when absent
	Dir    string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// ExitStatus is how a guest process ended.
type ExitStatus struct {
	Code   int    // exit code, or 128+signal
	Signal string // set when killed by a signal
}

// Service is what the gRPC adapter needs from the sandbox manager.
type Service interface {
	// Create boots a sandbox and, when wait is true, returns once it is
	// Ready (or failed). Idempotent by ID: the same spec returns the
	// existing sandbox; another spec is ErrAlreadyExists.
	Create(ctx context.Context, spec Spec, wait bool) (Sandbox, error)
	// Stop shuts the guest down (guest agent, then QMP quit, then kill
	// after timeout; 0 means the default). Idempotent.
	Stop(ctx context.Context, id string, timeout time.Duration) (Sandbox, error)
	// Delete stops the sandbox if needed and removes everything it had.
	// Idempotent: an unknown ID is not an error.
	Delete(ctx context.Context, id string) error
	Get(id string) (Sandbox, error)
	List() []Sandbox
	// Watch streams events until ctx ends. When includeCurrent is set the
	// stream starts with one State event per existing sandbox.
	Watch(ctx context.Context, includeCurrent bool) <-chan Event
	// Exec runs a process in a Ready sandbox and waits for it.
	Exec(ctx context.Context, id string, req ExecRequest) (ExitStatus, error)
	// AttachDisk hot-plugs a disk into a Ready sandbox; DetachDisk unplugs
	// it. Both are idempotent by disk ID.
	AttachDisk(ctx context.Context, id string, d Disk) (Sandbox, error)
	DetachDisk(ctx context.Context, id, diskID string) (Sandbox, error)
	// Logs writes a sandbox's console or QEMU log to w (logs.go).
	Logs(ctx context.Context, id string, req LogRequest, w io.Writer) error
	// UpdateResources changes a Ready sandbox's cgroup limits (the fields
	// r sets) and its disks' QoS live, all or none (resources.go).
	UpdateResources(ctx context.Context, id string, r cgroup.Resources, qos map[string]DiskQoS) (Sandbox, error)
	// Stats reads the sandbox's cgroup accounting and QEMU's disk counters.
	Stats(ctx context.Context, id string) (Stats, error)
}
