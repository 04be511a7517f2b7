package driver

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
)

func TestMetricsListenAddr(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{":9843", ":9843"},
		{"127.0.0.1:0", "127.0.0.1:0"},
		{"10.0.0.7:9844", "10.0.0.7:9844"},
		{"[fd00::7]:9844", "[fd00::7]:9844"},
		{"fd00::7:9844", "[fd00::7]:9844"}, // "$(NODE_IP):9844" on an IPv6 node
		{"localhost:9843", "localhost:9843"},
		{"9843", ""},
		{"10.0.0.7", ""},
		{"10.0.0.7:http", ""},
		{"10.0.0.7:70000", ""},
		{"$(NODE_IP):9844", "$(NODE_IP):9844"}, // left to net.Listen, which refuses it
	} {
		got, err := metricsListenAddr(c.in)
		if c.want == "" {
			if err == nil {
				t.Errorf("metricsListenAddr(%q) = %q, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("metricsListenAddr(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	cfg := Config{Endpoint: "unix:///csi/csi.sock", Type: TypeRBD, Mode: ModeController, ClusterConfig: "/c.json", MetricsAddr: ":x"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--metrics-addr") {
		t.Errorf("Validate with --metrics-addr :x = %v", err)
	}
	cfg.MetricsAddr = ":9843"
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate with --metrics-addr :9843 = %v", err)
	}
}

type opRecord struct {
	op  string
	ok  bool
	dur time.Duration
}

type fakeObserver struct{ ops []opRecord }

func (f *fakeObserver) Operation(op string, took time.Duration, err error) {
	f.ops = append(f.ops, opRecord{op, err == nil, took})
}

func TestTimeOp(t *testing.T) {
	var f fakeObserver
	done := timeOp(&f, metrics.OpMap)
	time.Sleep(10 * time.Millisecond)
	done(nil)
	timeOp(&f, metrics.OpUnmap)(errors.New("busy"))
	if len(f.ops) != 2 || f.ops[0].op != metrics.OpMap || !f.ops[0].ok || f.ops[0].dur < 10*time.Millisecond ||
		f.ops[1].op != metrics.OpUnmap || f.ops[1].ok {
		t.Fatalf("observed %+v", f.ops)
	}
	timeOp(nil, metrics.OpMount)(nil) // no metrics: nothing to tell, no panic
}

// The volume gauges come from the staging records and the conditions the
// calls last found; records being replaced, unreadable ones and the
// conditions of volumes no longer staged are left out.
func TestStagedVolumes(t *testing.T) {
	n := &node{stateDir: t.TempDir()}
	d := &Driver{node: n, conds: newConditions()}
	ids := make([]string, 4)
	for i, m := range []string{mapper.Fuse, mapper.Fuse, mapper.KRBD, mapper.RBDNBD} {
		ids[i] = VolumeID{ClusterID: "c", PoolID: 1, UUID: fmt.Sprintf("%032x", i+1)}.String()
		if err := n.save(staged{Version: recordVersion, VolumeID: ids[i], Mapping: mapper.Mapping{Mapper: m}}); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(n.stateDir, "staged")
	for name, content := range map[string]string{".x.json.tmp-123": "{", "broken.json": "{", "notes.txt": "hi"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d.conds.set(ids[0], false)
	d.conds.set(ids[1], true)
	d.conds.set("unstaged-meanwhile", true)
	vols, err := d.stagedVolumes()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vols {
		got = append(got, v.Mapper+"/"+v.Condition)
	}
	slices.Sort(got)
	want := []string{"krbd/unknown", "rbd-fuse/abnormal", "rbd-fuse/normal", "rbd-nbd/unknown"}
	if !slices.Equal(got, want) {
		t.Errorf("staged volumes %v, want %v", got, want)
	}
	if _, kept := d.conds.abnormal["unstaged-meanwhile"]; kept {
		t.Error("the condition of a volume that is not staged is kept")
	}
	d.conds.forget(ids[1])
	if _, kept := d.conds.abnormal[ids[1]]; kept {
		t.Error("forget kept the condition")
	}

	// No records yet (no stage since the node started): none.
	empty := &Driver{node: &node{stateDir: t.TempDir()}, conds: newConditions()}
	if vols, err := empty.stagedVolumes(); err != nil || len(vols) != 0 {
		t.Errorf("stagedVolumes without a staged dir = %v, %v", vols, err)
	}

	// CephFS: by mounter.
	fn := &fsNode{stateDir: t.TempDir()}
	fd := &FSDriver{node: fn, conds: newConditions()}
	for i, m := range []string{mapper.CephFSKernel, mapper.CephFSFuse} {
		if err := fn.save(fsStaged{Version: fsRecordVersion, VolumeID: ids[i], Mount: mapper.FSMount{Mounter: m}}); err != nil {
			t.Fatal(err)
		}
	}
	fd.conds.set(ids[1], false)
	vols, err = fd.stagedVolumes()
	if err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for _, v := range vols {
		got = append(got, v.Mapper+"/"+v.Condition)
	}
	slices.Sort(got)
	if want := []string{"ceph-fuse/normal", "kernel/unknown"}; !slices.Equal(got, want) {
		t.Errorf("CephFS staged volumes %v, want %v", got, want)
	}

	// Without metrics there are no conditions to keep.
	var none *conditions
	none.set(ids[0], true)
	none.forget(ids[0])
}
