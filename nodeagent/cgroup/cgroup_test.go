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
		{Resources{MemoryBytes: ptr(int64(0))}, "memory"},
		{Resources{MemoryBytes: ptr(int64(-1))}, "memory"},
		{Resources{Pids: ptr(int64(0))}, "pids"},
		{Resources{MemoryBytes: ptr(int64(-1)), Pids: ptr(int64(-1))}, "memory -1: want a positive number of bytes; pids -1"},
	}
	for _, tc := range bad {
		err := tc.r.Validate()
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: error %v, want an invalid-argument error about %q", tc.r, err, tc.want)
		}
	}
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
