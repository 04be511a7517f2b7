package sandbox

import (
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
)

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	in := record{Sandbox: Sandbox{Spec: Spec{ID: "a", VCPUs: 1, MemoryMiB: 128, NetNS: "/run/netns/x",
		Disks: []Disk{{ID: "d", RBD: &RBDImage{Pool: "p", Image: "i"}}}}, State: StateReady, PID: 42,
		CreatedAt: time.Now().UTC().Truncate(time.Second)},
		Net: &podnet.Config{Interface: "eth0", MAC: "02:00:00:00:00:01", MTU: 1400, Addresses: []string{"10.0.0.2/24"}, Tap: "tap0"}, Cgroup: "sandbox-a"}
	if err := writeRecord(dir, in, true); err != nil {
		t.Fatal(err)
	}
	out, err := readRecord(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip:\n%+v\n%+v", in, out)
	}
	if fi, _ := os.Stat(filepath.Join(dir, recordFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode %v", fi.Mode())
	}
	os.WriteFile(filepath.Join(dir, recordFile), []byte("{"), 0o600)
	if _, err := readRecord(dir); err == nil {
		t.Error("a torn record was accepted")
	}
}

// A volatile write in the background never puts back an older record
// over a newer one written meanwhile.
func TestUpdateVolatileNeverGoesBack(t *testing.T) {
	dir := t.TempDir()
	m := &Manager{log: slog.Default()}
	b := &box{dir: dir, rec: record{Sandbox: Sandbox{Spec: Spec{ID: "a"}, PID: 1}}}
	for i := 2; i < 50; i++ {
		pid := i
		if i%3 == 0 {
			m.update(b, func(r *record) { r.Sandbox.PID = pid })
		} else {
			m.updateVolatile(b, func(r *record) { r.Sandbox.PID = pid })
		}
	}
	m.update(b, func(r *record) { r.Sandbox.PID = 50 })
	deadline := time.Now().Add(200 * time.Millisecond)
	for time.Now().Before(deadline) {
		rec, err := readRecord(dir)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Sandbox.PID != 50 {
			t.Fatalf("the record went back to pid %d after the last write (50)", rec.Sandbox.PID)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Volatile edits wait volatileDelay and are written together; the
// agent's shutdown writes what still waits; a deleted sandbox's wait is
// dropped.
func TestUpdateVolatileBatchesAndFlushes(t *testing.T) {
	defer func(d time.Duration) { volatileDelay = d }(volatileDelay)
	volatileDelay = time.Hour
	dir := t.TempDir()
	b := &box{dir: dir, rec: record{Sandbox: Sandbox{Spec: Spec{ID: "a"}, PID: 1}}}
	m := &Manager{log: slog.Default(), boxes: map[string]*box{"a": b}}
	m.update(b, func(r *record) {})
	for i := 2; i <= 100; i++ {
		pid := i
		m.updateVolatile(b, func(r *record) { r.Sandbox.PID = pid })
	}
	if rec, err := readRecord(dir); err != nil || rec.Sandbox.PID != 1 {
		t.Fatalf("record before the delay: pid %d, %v; want 1 (not written yet)", rec.Sandbox.PID, err)
	}
	m.flushVolatileAll()
	if rec, err := readRecord(dir); err != nil || rec.Sandbox.PID != 100 {
		t.Fatalf("record after the shutdown's flush: pid %d, %v; want 100", rec.Sandbox.PID, err)
	}

	volatileDelay = 20 * time.Millisecond
	dir = t.TempDir()
	b = &box{dir: dir, rec: record{Sandbox: Sandbox{Spec: Spec{ID: "b"}, PID: 1}}}
	m.boxes["b"] = b
	m.updateVolatile(b, func(r *record) { r.Sandbox.PID = 101 })
	deadline := time.Now().Add(5 * time.Second)
	for {
		if rec, _ := readRecord(dir); rec.Sandbox.PID == 101 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the volatile edit was never written")
		}
		time.Sleep(5 * time.Millisecond)
	}
	m.updateVolatile(b, func(r *record) { r.Sandbox.PID = 102 })
	m.mu.Lock()
	if err := m.removeDirLocked(b); err != nil {
		t.Fatal(err)
	}
	m.mu.Unlock()
	time.Sleep(60 * time.Millisecond)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("a deleted sandbox's directory came back with its record: %v", err)
	}
	m.flushVolatileAll()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the shutdown's flush wrote a deleted sandbox's record: %v", err)
	}
}
