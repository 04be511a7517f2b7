package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// helperEnv makes the test binary act as a helper process (see TestMain).
const helperEnv = "QUOTA_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "":
		os.Exit(m.Run())
	case "alloc":
		allocHelper()
	case "hold":
		holdHelper()
	default:
		fmt.Fprintf(os.Stderr, "unknown %s %q\n", helperEnv, os.Getenv(helperEnv))
		os.Exit(2)
	}
}

// allocHelper says "ready", waits for a line on stdin (the test moves it
// into a group meanwhile), then touches 512 MiB of fresh memory and says
// "survived" if it is still alive.
func allocHelper() {
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		os.Exit(3)
	}
	var keep [][]byte
	for range 512 {
		b := make([]byte, 1<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
	}
	fmt.Println("survived", len(keep))
	os.Exit(0)
}

// holdHelper says "ready", waits for a line, touches 16 MiB of fresh
// memory, says "holding" and keeps it until stdin closes.
func holdHelper() {
	fmt.Println("ready")
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		os.Exit(3)
	}
	b := make([]byte, 16<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	fmt.Println("holding")
	_, _ = in.ReadString('\n')
	b[0] = 2
	os.Exit(0)
}

func ptr[T any](v T) *T { return &v }

func TestValidName(t *testing.T) {
	for _, name := range []string{"a", "sandbox-1", "pod_x.y", "0123456789abcdef", strings.Repeat("x", 128)} {
		if err := ValidName(name); err != nil {
			t.Errorf("ValidName(%q): %v", name, err)
		}
	}
	for _, name := range []string{"", ".", "..", ".hidden", "a/b", "../x", "/abs", "a b", "a\x00b", "é", "a\nb", strings.Repeat("x", 129)} {
		err := ValidName(name)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ValidName(%q) = %v, want an invalid-argument error", name, err)
		}
	}
}

func TestResourcesValidate(t *testing.T) {
	good := []Resources{
		{},
		{CPUs: ptr(0.01)},
		{CPUs: ptr(2.5), MemoryBytes: ptr(int64(1)), Pids: ptr(int64(1))},
		{CPUs: ptr(8192.0)},
		{CPUWeight: ptr(uint64(1)), IOWeight: ptr(uint64(10000))},
		{CPUSetCPUs: ptr("0"), CPUSetMems: ptr("0")},
		{CPUSetCPUs: ptr("0-3,7,9-10"), CPUSetMems: ptr("0-1")},
		{CPUSetCPUs: ptr("0-7:2/4"), CPUSetMems: ptr("1023")},
		{CPUSetCPUs: ptr("8191,3,0-1")},
		{MemoryLowBytes: ptr(int64(0)), SwapBytes: ptr(int64(-1))},
		{MemoryBytes: ptr(int64(1 << 30)), SwapBytes: ptr(int64(0))},
		{MemoryBytes: ptr(int64(math.MaxInt64 - 10)), SwapBytes: ptr(int64(10))},
		{IO: []DeviceIO{{Major: 8, Minor: 0, ReadBps: 1}, {Major: 8, Minor: 16}, {Major: 4095, Minor: 1<<20 - 1, ReadIOPS: math.MaxUint32 - 1}}},
	}
	for _, r := range good {
		if err := r.Validate(); err != nil {
			t.Errorf("%+v: %v", r, err)
		}
	}
	bad := []struct {
		r    Resources
		want string
	}{
		{Resources{CPUs: ptr(0.0)}, "cpus"},
		{Resources{CPUs: ptr(0.004)}, "cpus"}, // a 400 µs quota: under the kernel's 1 ms
		{Resources{CPUs: ptr(-1.0)}, "cpus"},
		{Resources{CPUs: ptr(math.NaN())}, "cpus"},
		{Resources{CPUs: ptr(math.Inf(1))}, "cpus"},
		{Resources{CPUs: ptr(1e9)}, "cpus"},
		{Resources{CPUWeight: ptr(uint64(0))}, "cpu weight 0"},
		{Resources{CPUWeight: ptr(uint64(10001))}, "cpu weight 10001"},
		{Resources{CPUSetCPUs: ptr("")}, `cpuset cpus ""`},
		{Resources{CPUSetCPUs: ptr("0-")}, `cpuset cpus "0-"`},
		{Resources{CPUSetCPUs: ptr("3-1")}, `cpuset cpus "3-1"`},
		{Resources{CPUSetCPUs: ptr("0,,1")}, `cpuset cpus "0,,1"`},
		{Resources{CPUSetCPUs: ptr("-1")}, `cpuset cpus "-1"`},
		{Resources{CPUSetCPUs: ptr("+1")}, `cpuset cpus "+1"`},
		{Resources{CPUSetCPUs: ptr("0 1")}, `cpuset cpus "0 1"`},
		{Resources{CPUSetCPUs: ptr("8192")}, `cpuset cpus "8192"`},
		{Resources{CPUSetCPUs: ptr("0-7:5/4")}, `cpuset cpus "0-7:5/4"`},
		{Resources{CPUSetCPUs: ptr("3:1/2")}, `cpuset cpus "3:1/2"`},
		{Resources{CPUSetCPUs: ptr("all")}, `cpuset cpus "all"`},
		{Resources{CPUSetMems: ptr("1024")}, `cpuset mems "1024"`},
		{Resources{MemoryBytes: ptr(int64(0))}, "memory"},
		{Resources{MemoryBytes: ptr(int64(-1))}, "memory"},
		{Resources{MemoryLowBytes: ptr(int64(-1))}, "memory low -1"},
		{Resources{SwapBytes: ptr(int64(-2))}, "swap -2"},
		{Resources{MemoryBytes: ptr(int64(math.MaxInt64 - 10)), SwapBytes: ptr(int64(11))}, "memory 9223372036854775797 + swap 11: overflows"},
		{Resources{Pids: ptr(int64(0))}, "pids"},
		{Resources{IOWeight: ptr(uint64(0))}, "io weight 0"},
		{Resources{IOWeight: ptr(uint64(10001))}, "io weight 10001"},
		{Resources{IO: []DeviceIO{{Major: -1, Minor: 0}}}, "io device -1:0"},
		{Resources{IO: []DeviceIO{{Major: 8, Minor: -3}}}, "io device 8:-3"},
		{Resources{IO: []DeviceIO{{Major: 4096, Minor: 0}}}, "io device 4096:0"},
		{Resources{IO: []DeviceIO{{Major: 8, Minor: 0, ReadBps: 1}, {Major: 8, Minor: 0}}}, "io device 8:0: listed twice"},
		{Resources{IO: []DeviceIO{{Major: 8, Minor: 0, WriteIOPS: math.MaxUint32}}}, "io device 8:0 write iops 4294967295: at most 4294967294"},
		{Resources{MemoryBytes: ptr(int64(-1)), Pids: ptr(int64(-1))}, "memory -1: want a positive number of bytes; pids -1"},
	}
	for _, tc := range bad {
		err := tc.r.Validate()
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want an invalid-argument error about %q", tc.r, err, tc.want)
		}
	}
}

func TestWeightConversions(t *testing.T) {
	for _, tc := range []struct{ w, shares, bfq, cfq uint64 }{
		{1, 10, 1, 10},
		{50, 512, 50, 250},
		{100, 1024, 100, 500}, // every default is the others'
		{200, 2048, 109, 1000},
		{10000, 102400, 1000, 1000},
	} {
		if got := cpuShares(tc.w); got != tc.shares {
			t.Errorf("cpuShares(%d) = %d, want %d", tc.w, got, tc.shares)
		}
		if got := bfqWeight(tc.w); got != tc.bfq {
			t.Errorf("bfqWeight(%d) = %d, want %d", tc.w, got, tc.bfq)
		}
		if got := cfqWeight(tc.w); got != tc.cfq {
			t.Errorf("cfqWeight(%d) = %d, want %d", tc.w, got, tc.cfq)
		}
	}
}

func FuzzValidList(f *testing.F) {
	for _, s := range []string{"0", "0-3,7", "0-7:2/4", "", "3-1", "a", "1,,2", "0-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !validList(s, maxCPUs) {
			return
		}
		// What passes is numbers, '-', ',', ':' and '/' only, and no
		// empty element.
		for _, c := range s {
			if !strings.ContainsRune("0123456789-,:/", c) {
				t.Fatalf("validList(%q): accepted %q", s, c)
			}
		}
		if strings.Contains(s, ",,") || strings.HasPrefix(s, ",") || strings.HasSuffix(s, ",") {
			t.Fatalf("validList(%q): accepted an empty element", s)
		}
	})
}

func TestNewManagerRejects(t *testing.T) {
	mount := fakeV2(t, "/nodeagent")
	for _, parent := range []string{"", "/", "nodeagent", "/a/../..", "/a b", "/.x", "/a//.."} {
		if _, err := NewManager(V2, parent, WithMountpoint(mount)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("parent %q: %v, want an invalid-argument error", parent, err)
		}
	}
	if _, err := NewManager(Mode(7), "/nodeagent", WithMountpoint(mount)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unknown mode: %v, want an invalid-argument error", err)
	}
	// A v1 manager on a tree without controller mounts.
	if _, err := NewManager(V1, "/nodeagent", WithMountpoint(t.TempDir())); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("v1 without controllers: %v, want a failed-precondition error", err)
	}
}

func TestModeString(t *testing.T) {
	if V1.String() != "v1" || V2.String() != "v2" || Mode(0).String() != "Mode(0)" {
		t.Errorf("String: %v %v %v", V1, V2, Mode(0))
	}
}

func TestDetect(t *testing.T) {
	m, err := Detect()
	if err != nil {
		t.Skipf("no cgroups here: %v", err)
	}
	t.Logf("this host runs cgroup %v", m)
}
