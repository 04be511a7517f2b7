package cgroup

import (
	"errors"
	"reflect"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestWithAndUndo(t *testing.T) {
	cur := Resources{CPUs: ptr(1.0), MemoryBytes: ptr(int64(256 << 20)), SwapBytes: ptr(int64(64 << 20)), Pids: ptr(int64(10)),
		IO: []DeviceIO{{Major: 8, Minor: 0, ReadBps: 100}}}
	up := Resources{CPUs: ptr(0.5), MemoryBytes: ptr(int64(512 << 20)), IO: []DeviceIO{{Major: 8, Minor: 0}, {Major: 8, Minor: 16, WriteIOPS: 5}}}
	got := cur.With(up)
	want := Resources{CPUs: ptr(0.5), MemoryBytes: ptr(int64(512 << 20)), Pids: ptr(int64(10)), IO: []DeviceIO{{Major: 8, Minor: 16, WriteIOPS: 5}}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("With = %+v, want %+v", got, want)
	}
	undo := cur.Undo(up)
	wantUndo := Resources{CPUs: ptr(1.0), MemoryBytes: ptr(int64(256 << 20)), SwapBytes: ptr(int64(64 << 20)),
		IO: []DeviceIO{{Major: 8, Minor: 0, ReadBps: 100}, {Major: 8, Minor: 16}}}
	if !reflect.DeepEqual(undo, wantUndo) {
		t.Errorf("Undo = %+v, want %+v", undo, wantUndo)
	}
	if got.With(undo).CPUs == nil || *got.With(undo).CPUs != 1.0 {
		t.Errorf("applying the undo does not give back the CPUs")
	}
	if !(Resources{}).IsZero() || up.IsZero() {
		t.Error("IsZero")
	}
	// The copies are deep: changing the result leaves cur alone.
	*got.Pids = 99
	if *cur.Pids != 10 {
		t.Error("With shares pointers with its input")
	}
}

func TestParseDevice(t *testing.T) {
	for _, bad := range []string{"", "vda", "/dev/null", "/nonexistent", "x:y", "1:", "99999:99999"} {
		if _, _, err := ParseDevice(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseDevice(%q): %v, want InvalidArgument", bad, err)
		}
	}
}
