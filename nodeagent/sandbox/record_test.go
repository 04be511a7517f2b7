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
