package sandbox

import (
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
