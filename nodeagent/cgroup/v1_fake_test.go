package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// fakeV1 makes a folder of v1 controller mounts (each with the root's
// cgroup.procs) in a temporary tree, for what this host has and the test
// wants it to lack.
func fakeV1(t *testing.T, controllers ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, c := range controllers {
		if err := os.MkdirAll(filepath.Join(root, c), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(root, c, "cgroup.procs"), "")
	}
	return root
}

func TestV1FakeHostLacks(t *testing.T) {
	root := fakeV1(t, "cpu", "cpuacct", "memory", "pids")
	m, err := NewManager(V1, "/nodeagent", WithMountpoint(root))
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Create("sb", Resources{})
	if err != nil {
		t.Fatal(err)
	}
	quota := filepath.Join(root, "cpu", "nodeagent", "sb", "cpu.cfs_quota_us")
	for _, tc := range []struct {
		r    Resources
		want string
	}{
		{Resources{CPUSetCPUs: ptr("0")}, "cpuset: the cpuset controller is not mounted"},
		{Resources{CPUSetMems: ptr("0")}, "cpuset: the cpuset controller is not mounted"},
		{Resources{SwapBytes: ptr(int64(0))}, "swap 0: the memory controller does not account swap"},
		{Resources{MemoryBytes: ptr(int64(1 << 20)), SwapBytes: ptr(int64(-1))}, "swap -1"},
		{Resources{IOWeight: ptr(uint64(100))}, "blkio controller is not mounted"},
		{Resources{IO: []DeviceIO{{Major: 8, Minor: 0}}}, "blkio controller is not mounted"},
	} {
		// With a CPU limit, checked first and written last: nothing is.
		tc.r.CPUs = ptr(1.0)
		err := g.Update(tc.r)
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want a failed-precondition error about %q", tc.r, err, tc.want)
		}
		if _, err := os.Stat(quota); err == nil {
			t.Fatalf("%+v: the CPU quota was written", tc.r)
		}
	}

	// Memory alone is fine without swap accounting: no memsw file.
	if err := g.Update(Resources{MemoryBytes: ptr(int64(1 << 20))}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "memory", "nodeagent", "sb")
	wantFile(t, filepath.Join(dir, "memory.limit_in_bytes"), "1048576")
	if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
		t.Error("memsw written without swap accounting")
	}
}

func TestV1FakeBlkio(t *testing.T) {
	root := fakeV1(t, "cpu", "cpuacct", "memory", "pids", "blkio")
	m, err := NewManager(V1, "/nodeagent", WithMountpoint(root))
	if err != nil {
		t.Fatal(err)
	}
	b := m.backend.(*v1Backend)
	b.sysBlock = fakeSysBlock(t)
	g, err := m.Create("sb", Resources{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "blkio", "nodeagent", "sb")
	// A kernel whose blkio has neither weight nor throttling.
	if err := g.Update(Resources{IOWeight: ptr(uint64(100))}); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "io weight 100: the blkio controller has no weight here") {
		t.Errorf("IOWeight: %v, want a failed-precondition error", err)
	}
	if err := g.Update(Resources{IO: []DeviceIO{{Major: 8, Minor: 0, ReadBps: 1}}}); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "does not throttle") {
		t.Errorf("IO: %v, want a failed-precondition error", err)
	}

	// One with both schedulers' weights and throttling, as the kernel
	// shows them.
	writeFile(t, filepath.Join(dir, "blkio.weight"), "500\n")
	writeFile(t, filepath.Join(dir, "blkio.bfq.weight"), "100\n")
	for _, f := range []string{"read_bps", "write_bps", "read_iops", "write_iops"} {
		writeFile(t, filepath.Join(dir, "blkio.throttle."+f+"_device"), "")
	}
	writeFile(t, filepath.Join(dir, "blkio.throttle.read_iops_device"), "8:16 300\n")
	var wrote []string
	b.write = recordWrites(&wrote)
	r := Resources{IOWeight: ptr(uint64(10000)), IO: []DeviceIO{{Major: 8, Minor: 0, ReadBps: 1 << 20, WriteIOPS: 50}, {Major: 8, Minor: 16}}}
	if err := g.Update(r); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"blkio.weight=1000", "blkio.bfq.weight=1000",
		"blkio.throttle.read_bps_device=8:0 1048576", "blkio.throttle.write_iops_device=8:0 50",
		// 8:16 had a read IOPS limit only: that goes.
		"blkio.throttle.read_iops_device=8:16 0",
	}
	if strings.Join(wrote, "\n") != strings.Join(want, "\n") {
		t.Errorf("writes:\n%s\nwant:\n%s", strings.Join(wrote, "\n"), strings.Join(want, "\n"))
	}

	// Unknown devices and partitions are refused before any write.
	wrote = nil
	for _, d := range []DeviceIO{{Major: 9, Minor: 9}, {Major: 8, Minor: 1}} {
		err := g.Update(Resources{IOWeight: ptr(uint64(1)), IO: []DeviceIO{d}})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("device %d:%d: %v, want an invalid-argument error", d.Major, d.Minor, err)
		} else {
			t.Logf("refused: %v", err)
		}
	}
	if len(wrote) > 0 {
		t.Errorf("writes for refused updates: %v", wrote)
	}
}

// fakeSysBlock is a /sys/dev/block with disks 8:0 and 8:16 and partition
// 8:1.
func fakeSysBlock(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, dev := range []string{"8:0", "8:16", "8:1"} {
		if err := os.Mkdir(filepath.Join(d, dev), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(d, "8:1", "partition"), "1\n")
	return d
}

// recordWrites writes and records "file=value" for each write.
func recordWrites(wrote *[]string) writeFunc {
	return func(file, value string) error {
		*wrote = append(*wrote, filepath.Base(file)+"="+value)
		return writeKernelFile(file, value)
	}
}
