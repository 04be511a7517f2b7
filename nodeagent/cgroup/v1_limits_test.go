package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// v1File is one of a group's files in a real v1 hierarchy.
func v1File(controller, p, name string) string { return filepath.Join(v1Dir(controller, p), name) }

// testDisk is a whole block device of this host: the one under the test's
// temporary directory where it has one, else the first listed in sysfs.
func testDisk(t *testing.T) (major, minor int64) {
	t.Helper()
	whole := func(maj, min int64) bool {
		dir := fmt.Sprintf("/sys/dev/block/%d:%d", maj, min)
		_, err := os.Stat(dir)
		_, perr := os.Stat(filepath.Join(dir, "partition"))
		return err == nil && perr != nil
	}
	var st syscall.Stat_t
	if err := syscall.Stat(t.TempDir(), &st); err == nil {
		maj, min := int64(unix.Major(st.Dev)), int64(unix.Minor(st.Dev))
		if whole(maj, min) {
			return maj, min
		}
	}
	ents, _ := os.ReadDir("/sys/dev/block")
	for _, e := range ents {
		var maj, min int64
		if _, err := fmt.Sscanf(e.Name(), "%d:%d", &maj, &min); err == nil && whole(maj, min) {
			return maj, min
		}
	}
	t.Skip("no whole block device on this host")
	return 0, 0
}

// snapshot reads files, to check later that nothing changed.
func snapshot(t *testing.T, files ...string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, f := range files {
		m[f] = readFile(t, f)
	}
	return m
}

func unchanged(t *testing.T, before map[string]string) {
	t.Helper()
	for f, v := range before {
		wantFile(t, f, v)
	}
}

func TestV1NewLimits(t *testing.T) {
	m := newV1Manager(t)
	b := m.backend.(*v1Backend)
	if !b.cpuset || !b.blkio {
		t.Skip("needs the cpuset and blkio hierarchies")
	}
	maj, min := testDisk(t)
	dev := fmt.Sprintf("%d:%d", maj, min)
	r := Resources{
		CPUWeight:      ptr(uint64(200)),
		CPUSetCPUs:     ptr("0"),
		CPUSetMems:     ptr("0"),
		MemoryBytes:    ptr(int64(64 << 20)),
		MemoryLowBytes: ptr(int64(16 << 20)),
		Pids:           ptr(int64(10)),
		IO:             []DeviceIO{{Major: maj, Minor: min, ReadBps: 1 << 20, WriteIOPS: 100}},
	}
	if b.swap {
		r.SwapBytes = ptr(int64(32 << 20))
	}
	g := createV1(t, m, "new", r)
	p := g.Path()
	wantFile(t, v1File("cpu", p, "cpu.shares"), "2048")
	wantFile(t, v1File("cpuset", p, "cpuset.cpus"), "0")
	wantFile(t, v1File("cpuset", p, "cpuset.mems"), "0")
	wantFile(t, v1File("memory", p, "memory.limit_in_bytes"), strconv.Itoa(64<<20))
	wantFile(t, v1File("memory", p, "memory.soft_limit_in_bytes"), strconv.Itoa(16<<20))
	wantFile(t, v1File("pids", p, "pids.max"), "10")
	wantFile(t, v1File("blkio", p, "blkio.throttle.read_bps_device"), dev+" 1048576")
	wantFile(t, v1File("blkio", p, "blkio.throttle.write_iops_device"), dev+" 100")
	wantFile(t, v1File("blkio", p, "blkio.throttle.write_bps_device"), "")
	wantFile(t, v1File("blkio", p, "blkio.throttle.read_iops_device"), "")
	memsw := v1File("memory", p, "memory.memsw.limit_in_bytes")
	if b.swap {
		wantFile(t, memsw, strconv.Itoa(96<<20))
	}

	// One device's throttles replaced: the 0 rates remove theirs.
	if err := g.Update(Resources{IO: []DeviceIO{{Major: maj, Minor: min, WriteBps: 2 << 20}}}); err != nil {
		t.Fatal(err)
	}
	wantFile(t, v1File("blkio", p, "blkio.throttle.read_bps_device"), "")
	wantFile(t, v1File("blkio", p, "blkio.throttle.write_iops_device"), "")
	wantFile(t, v1File("blkio", p, "blkio.throttle.write_bps_device"), dev+" 2097152")
	if err := g.Update(Resources{IO: []DeviceIO{{Major: maj, Minor: min}}}); err != nil {
		t.Fatal(err)
	}
	wantFile(t, v1File("blkio", p, "blkio.throttle.write_bps_device"), "")

	// Weight and cpuset again; what r leaves out stays.
	if err := g.Update(Resources{CPUWeight: ptr(uint64(1)), CPUSetCPUs: ptr("0-1")}); err != nil {
		t.Fatal(err)
	}
	wantFile(t, v1File("cpu", p, "cpu.shares"), "10")
	wantFile(t, v1File("cpuset", p, "cpuset.cpus"), "0-1")
	wantFile(t, v1File("pids", p, "pids.max"), "10")

	if !b.swap {
		if err := g.Update(Resources{SwapBytes: ptr(int64(0))}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("swap without swap accounting: %v, want a failed-precondition error", err)
		}
		return
	}
	// Swap alone: on top of the memory limit in force.
	for _, tc := range []struct {
		r          Resources
		mem, memsw string
	}{
		{Resources{SwapBytes: ptr(int64(0))}, "67108864", "67108864"},
		{Resources{SwapBytes: ptr(int64(-1))}, "67108864", "9223372036854771712"},
		// Memory alone: no swap past it.
		{Resources{MemoryBytes: ptr(int64(128 << 20))}, "134217728", "134217728"},
		{Resources{MemoryBytes: ptr(int64(32 << 20)), SwapBytes: ptr(int64(8 << 20))}, "33554432", "41943040"},
		{Resources{MemoryBytes: ptr(int64(256 << 20)), SwapBytes: ptr(int64(1 << 20))}, "268435456", "269484032"},
		{Resources{MemoryBytes: ptr(int64(48 << 20)), SwapBytes: ptr(int64(-1))}, "50331648", "9223372036854771712"},
		{Resources{MemoryBytes: ptr(int64(40 << 20))}, "41943040", "41943040"},
	} {
		if err := g.Update(tc.r); err != nil {
			t.Fatalf("%+v: %v", tc.r, err)
		}
		wantFile(t, v1File("memory", p, "memory.limit_in_bytes"), tc.mem)
		wantFile(t, memsw, tc.memsw)
	}
}

func TestV1IOWeight(t *testing.T) {
	m := newV1Manager(t)
	b := m.backend.(*v1Backend)
	g := createV1(t, m, "ioweight", Resources{})
	var weights []string
	for _, f := range []string{"blkio.weight", "blkio.bfq.weight"} {
		if b.blkio && exists(v1File("blkio", g.Path(), f)) {
			weights = append(weights, f)
		}
	}
	err := g.Update(Resources{IOWeight: ptr(uint64(500))})
	if len(weights) == 0 {
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "io weight 500") {
			t.Fatalf("IOWeight on a blkio without weight: %v, want a failed-precondition error", err)
		}
		t.Logf("refused as expected: %v", err)
		return
	}
	// This kernel has BFQ's weight (a group's file; the root has none).
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("weight files here: %v", weights)
	for _, w := range []uint64{500, 100, 1, 10000} {
		if err := g.Update(Resources{IOWeight: ptr(w)}); err != nil {
			t.Fatalf("IOWeight %d: %v", w, err)
		}
		for _, f := range weights {
			want := bfqWeight(w)
			if f == "blkio.weight" {
				want = cfqWeight(w)
			}
			wantFile(t, v1File("blkio", g.Path(), f), strconv.FormatUint(want, 10))
		}
	}
}

func TestV1Refusals(t *testing.T) {
	m := newV1Manager(t)
	b := m.backend.(*v1Backend)
	g := createV1(t, m, "refuse", Resources{CPUs: ptr(1.0), MemoryBytes: ptr(int64(256 << 20))})
	p := g.Path()
	files := []string{
		v1File("cpu", p, "cpu.cfs_quota_us"), v1File("cpu", p, "cpu.shares"),
		v1File("memory", p, "memory.limit_in_bytes"), v1File("pids", p, "pids.max"),
	}
	if b.cpuset {
		files = append(files, v1File("cpuset", p, "cpuset.cpus"))
	}
	before := snapshot(t, files...)

	// A device the host does not have.
	err := g.Update(Resources{CPUs: ptr(0.5), IO: []DeviceIO{{Major: 4095, Minor: 1048575, ReadBps: 1}}})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "io device 4095:1048575: unknown device") {
		t.Errorf("a device the host lacks: %v, want an invalid-argument error about an unknown device", err)
	}
	unchanged(t, before)

	// A memory limit under what the group uses: refused before anything
	// is written, the CPU quota included.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=hold")
	c := start(t, cmd)
	if got := c.line(t); got != "ready" {
		t.Fatalf("helper said %q", got)
	}
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	c.send(t)
	if got := c.line(t); got != "holding" {
		t.Fatalf("helper said %q", got)
	}
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	err = g.Update(Resources{CPUs: ptr(0.5), MemoryBytes: ptr(int64(1 << 20))})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "memory 1048576: under the") {
		t.Errorf("memory under usage (%d bytes): %v, want an invalid-argument error naming both", st.MemoryBytes, err)
	} else {
		t.Logf("refused: %v", err)
	}
	unchanged(t, before)

	// The kernel's own refusal (a CPU this host lacks: ERANGE, or
	// EINVAL), after the quota was written: the quota goes back.
	if b.cpuset {
		err := g.Update(Resources{CPUs: ptr(0.5), CPUWeight: ptr(uint64(300)), CPUSetCPUs: ptr("4095")})
		var errno syscall.Errno
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !errors.As(err, &errno) || !strings.Contains(err.Error(), `"4095"`) || !strings.Contains(err.Error(), "cpuset.cpus") {
			t.Errorf("cpuset of a missing CPU: %v, want the kernel's refusal naming the file and value", err)
		} else {
			t.Logf("refused: %v", err)
		}
		unchanged(t, before)
	}

	// What the host lacks, named.
	if !b.swap {
		if err := g.Update(Resources{CPUs: ptr(0.5), SwapBytes: ptr(int64(1 << 20))}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("swap without swap accounting: %v", err)
		}
	}
	unchanged(t, before)
}

// failWrite fails the writes to the files named name.
func failWrite(name string, wrote *[]string) writeFunc {
	return func(file, value string) error {
		*wrote = append(*wrote, filepath.Base(file)+"="+value)
		if filepath.Base(file) == name {
			return &os.PathError{Op: "write", Path: file, Err: syscall.EBUSY}
		}
		return writeKernelFile(file, value)
	}
}

func TestV1UpdateRollsBack(t *testing.T) {
	m := newV1Manager(t)
	b := m.backend.(*v1Backend)
	g := createV1(t, m, "rollback", Resources{CPUs: ptr(1.0), MemoryBytes: ptr(int64(64 << 20)), Pids: ptr(int64(50))})
	p := g.Path()
	files := []string{
		v1File("cpu", p, "cpu.cfs_quota_us"), v1File("cpu", p, "cpu.shares"),
		v1File("memory", p, "memory.limit_in_bytes"), v1File("memory", p, "memory.soft_limit_in_bytes"),
		v1File("pids", p, "pids.max"),
	}
	if b.swap {
		files = append(files, v1File("memory", p, "memory.memsw.limit_in_bytes"))
	}
	before := snapshot(t, files...)

	// The last write fails (pids.max, after the memory pair).
	var wrote []string
	b.write = failWrite("pids.max", &wrote)
	t.Cleanup(func() { b.write = writeKernelFile })
	for _, mem := range []int64{512 << 20, 16 << 20} { // raised, then lowered
		wrote = nil
		err := g.Update(Resources{CPUs: ptr(2.0), CPUWeight: ptr(uint64(50)), MemoryBytes: ptr(mem), MemoryLowBytes: ptr(int64(1 << 20)), Pids: ptr(int64(7))})
		if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "pids.max") {
			t.Fatalf("Update: %v, want the injected EBUSY on pids.max", err)
		}
		t.Logf("writes: %v", wrote)
		unchanged(t, before)
	}
	// The same with Create of the existing group.
	wrote = nil
	if _, err := m.Create("rollback", Resources{CPUs: ptr(3.0), Pids: ptr(int64(3))}); err == nil {
		t.Fatal("Create succeeded")
	}
	unchanged(t, before)
	// A new group that fails is removed.
	if _, err := m.Create("rollback-new", Resources{Pids: ptr(int64(3))}); err == nil {
		t.Fatal("Create succeeded")
	}
	for _, d := range v1Dirs(m, m.Parent()+"/rollback-new") {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", d, err)
		}
	}
}

func TestV1Stats(t *testing.T) {
	m := newV1Manager(t)
	b := m.backend.(*v1Backend)
	g := createV1(t, m, "stats", Resources{MemoryBytes: ptr(int64(64 << 20)), Pids: ptr(int64(20))})
	st, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.MemoryLimitBytes != 64<<20 || st.PidsLimit != 20 {
		t.Errorf("limits: %+v, want memory 64 MiB and pids 20", st)
	}

	// A process that holds 16 MiB, then writes and reads 4 MiB with
	// direct IO (the page cache would hide the reads).
	dir := t.TempDir()
	file := filepath.Join(dir, "io")
	script := fmt.Sprintf("echo ready; read a; dd if=/dev/zero of=%s bs=1M count=4 oflag=direct 2>/dev/null && dd if=%s of=/dev/null bs=1M iflag=direct 2>/dev/null && echo done", file, file)
	c := start(t, exec.Command("/bin/sh", "-c", script))
	if got := c.line(t); got != "ready" {
		t.Fatalf("shell said %q", got)
	}
	if err := g.Add(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	c.send(t)
	if got := c.line(t); got != "done" {
		t.Fatalf("shell said %q (stderr %q)", got, c.stderr.String())
	}
	if st, err = g.Stats(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %+v", st)
	if st.MemoryMaxBytes == 0 || st.MemoryMaxBytes < st.MemoryBytes {
		t.Errorf("MemoryMaxBytes %d, usage %d", st.MemoryMaxBytes, st.MemoryBytes)
	}
	if !b.blkio {
		return
	}
	maj, min := testDisk(t)
	var sd syscall.Stat_t
	if err := syscall.Stat(dir, &sd); err != nil || int64(unix.Major(sd.Dev)) != maj || int64(unix.Minor(sd.Dev)) != min {
		t.Skipf("the temporary directory is not on block device %d:%d", maj, min)
	}
	i := slices.IndexFunc(st.IO, func(d DeviceIOStats) bool { return d.Major == maj && d.Minor == min })
	if i < 0 {
		t.Fatalf("no IO on %d:%d in %+v", maj, min, st.IO)
	}
	if d := st.IO[i]; d.WriteBytes < 4<<20 || d.ReadBytes < 4<<20 || d.WriteOps == 0 || d.ReadOps == 0 {
		t.Errorf("IO on %d:%d: %+v, want at least 4 MiB each way", maj, min, d)
	}
}
