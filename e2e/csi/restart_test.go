package csi_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

// writeSynced writes a file and fsyncs it: through the loop device and
// rbd-fuse into Ceph.
func writeSynced(t *testing.T, path, data string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
}

func (d *driver) stats(t *testing.T, vol, path string) (abnormal bool, msg string) {
	t.Helper()
	resp, err := d.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: path})
	if err != nil {
		t.Fatalf("NodeGetVolumeStats %s: %v", path, err)
	}
	return volumeCondition(t, resp)
}

// killFuse kills the rbd-fuse daemons of the driver's volumes and waits
// until they are gone.
func killFuse(t *testing.T, d *driver) {
	t.Helper()
	pids := fuseDaemons(d.dir)
	if len(pids) == 0 {
		t.Fatal("no rbd-fuse daemon to kill")
	}
	for _, p := range pids {
		_ = unix.Kill(p, unix.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(fuseDaemons(d.dir)) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("rbd-fuse survived SIGKILL")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Reboot simulation with rbd-fuse and real loop devices: volumes A and B
// staged and published; the "reboot" takes A's pod, mounts, loop device
// and FUSE mount, A's record says an earlier boot and names B's loop
// device. Restaging and publishing A: A's pod sees A's data, B is
// untouched (its loop device still reads B, its pod still sees B), and
// nothing leaks.
func TestFuseRebootSimulation(t *testing.T) {
	d := startDriver(t)
	d.fs = fsCap("ext4")
	a := d.create(t, "reboot-a-"+fmt.Sprint(time.Now().UnixNano()), 64<<20, nil)
	b := d.create(t, "reboot-b-"+fmt.Sprint(time.Now().UnixNano()), 64<<20, nil)
	ta, releaseA := d.mount(t, a, "a")
	tb, releaseB := d.mount(t, b, "b")
	writeSynced(t, filepath.Join(ta, "table"), "A's rows\n")
	writeSynced(t, filepath.Join(tb, "table"), "B's rows\n")

	recA, r := d.record(t, a)
	_, rb := d.record(t, b)
	mA, mB := r["mapping"].(map[string]any), rb["mapping"].(map[string]any)
	devA, devB := mA["device"].(string), mB["device"].(string)
	// The reboot: A's mounts, loop device and rbd-fuse are gone.
	for _, p := range []string{ta, filepath.Join(d.dir, "stage-a")} {
		if err := unix.Unmount(p, 0); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := execOut("losetup", "--detach", devA); err != nil {
		t.Fatalf("detach %s: %v %s", devA, err, out)
	}
	fuseA := filepath.Join(mA["dir"].(string), "fuse")
	for i := 0; ; i++ {
		if err := unix.Unmount(fuseA, 0); err == nil {
			break
		} else if i == 50 {
			t.Fatalf("unmount %s: %v", fuseA, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A's record survives on the host's disk, from an earlier boot, and
	// its device name now belongs to B.
	r["bootID"] = "00000000-0000-0000-0000-000000000000"
	mA["device"] = devB
	writeJSON(t, recA, r)

	ctx := context.Background()
	stage := filepath.Join(d.dir, "stage-a")
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: a, StagingTargetPath: stage, TargetPath: ta, VolumeCapability: d.fs}); err == nil {
		t.Fatal("published from a record of an earlier boot")
	}
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: a, StagingTargetPath: stage, VolumeCapability: d.fs, Secrets: d.secrets}); err != nil {
		t.Fatalf("restage A: %v", err)
	}
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: a, StagingTargetPath: stage, TargetPath: ta, VolumeCapability: d.fs}); err != nil {
		t.Fatalf("publish A: %v", err)
	}
	if got := readFile(t, filepath.Join(ta, "table")); got != "A's rows\n" {
		t.Fatalf("A's pod sees %q", got)
	}
	if got := readFile(t, filepath.Join(tb, "table")); got != "B's rows\n" {
		t.Fatalf("B's pod sees %q", got)
	}
	if bf, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(devB), "loop/backing_file")); err != nil || !strings.HasSuffix(strings.TrimSpace(string(bf)), mB["image"].(string)) {
		t.Fatalf("B's loop device %s now reads %q (%v)", devB, bf, err)
	}
	if _, r2 := d.record(t, a); r2["mapping"].(map[string]any)["device"] == devB {
		t.Fatal("A's new record names B's device")
	}
	if abnormal, msg := d.stats(t, b, tb); abnormal {
		t.Fatalf("B is abnormal: %s", msg)
	}
	releaseA()
	releaseB()
	if left := leftovers(d.dir); len(left) > 0 {
		t.Errorf("left under %s: %v", d.dir, left)
	}
}

// Plugin restart. The driver runs in a cgroup of its own, as in a
// container; its rbd-fuse daemons move to the mapper cgroup. Killing every
// process in the driver's cgroup (what a container runtime does to a
// hostPID container) leaves the volume readable and writable; the driver
// started again unstages and stages it with the data intact. Then the
// driver and its daemons die together: the volume is abnormal, and
// unstage and stage bring it back.
func TestPluginRestartKeepsVolumes(t *testing.T) {
	d := startDriver(t)
	plugin := newCgroup(t, "plugin", false)
	d.kill()
	d.start(t, plugin)
	d.fs = fsCap("ext4")
	vol := d.create(t, "restart-"+fmt.Sprint(time.Now().UnixNano()), 64<<20, nil)
	target, release := d.mount(t, vol, "p")
	writeSynced(t, filepath.Join(target, "before"), "written before the restart\n")

	daemons := fuseDaemons(d.dir)
	if len(daemons) != 1 {
		t.Fatalf("rbd-fuse daemons: %v", daemons)
	}
	if !slices.Contains(d.mappers.pids(), daemons[0]) || slices.Contains(plugin.pids(), daemons[0]) {
		t.Fatalf("rbd-fuse %d is not in the mapper cgroup %s (it has %v; the plugin's %v)", daemons[0], d.mappers.path, d.mappers.pids(), plugin.pids())
	}
	// The runtime stops the plugin's container.
	if killed := plugin.killAll(); len(killed) == 0 {
		t.Fatal("nothing in the plugin's cgroup")
	}
	d.kill()
	if got := fuseDaemons(d.dir); !slices.Equal(got, daemons) {
		t.Fatalf("rbd-fuse died with the plugin: %v", got)
	}
	if got := readFile(t, filepath.Join(target, "before")); got != "written before the restart\n" {
		t.Fatalf("read while the plugin is down: %q", got)
	}
	writeSynced(t, filepath.Join(target, "during"), "written while the plugin was down\n")

	d.start(t, plugin)
	if abnormal, msg := d.stats(t, vol, target); abnormal {
		t.Fatalf("abnormal after a plugin restart: %s", msg)
	}
	release()
	target, release = d.mount(t, vol, "q")
	for f, want := range map[string]string{"before": "written before the restart\n", "during": "written while the plugin was down\n"} {
		if got := readFile(t, filepath.Join(target, f)); got != want {
			t.Fatalf("%s after restage: %q", f, got)
		}
	}

	// The driver and its mapper daemons die.
	plugin.killAll()
	d.kill()
	d.mappers.killAll()
	d.start(t, plugin)
	if abnormal, msg := d.stats(t, vol, target); !abnormal || msg == "" {
		t.Fatalf("condition with rbd-fuse dead: abnormal %v, %q", abnormal, msg)
	} else {
		t.Logf("reported: %s", msg)
	}
	release() // unpublish and unstage a broken volume (errors fail the test)
	target, release = d.mount(t, vol, "r")
	if got := readFile(t, filepath.Join(target, "during")); got != "written while the plugin was down\n" {
		t.Fatalf("after the daemons died and the volume was staged again: %q", got)
	}
	release()
	if left := leftovers(d.dir); len(left) > 0 {
		t.Errorf("left under %s: %v", d.dir, left)
	}
}

// A volume whose rbd-fuse was killed: NodeGetVolumeStats says abnormal,
// NodeGetVolumeHealth says inaccessible, a publish heals the staging (new
// daemon, new loop device, filesystem mounted again while the broken
// instance lingers in the old pod's mount) and unstage then stage heal it
// too. For ext4 and xfs.
func TestBrokenFuseHealed(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) { brokenFuseHealed(t, fs) })
	}
}

func brokenFuseHealed(t *testing.T, fsType string) {
	d := startDriver(t)
	d.fs = fsCap(fsType)
	ctx := context.Background()
	vol := d.create(t, "broken-"+fmt.Sprint(time.Now().UnixNano()), 320<<20, nil)
	t1, release1 := d.mount(t, vol, "x")
	const data = "survives its daemon\n"
	writeSynced(t, filepath.Join(t1, "table"), data)
	if abnormal, msg := d.stats(t, vol, t1); abnormal {
		t.Fatalf("abnormal before anything broke: %s", msg)
	}
	caps, err := d.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var advertised []int32
	for _, c := range caps.GetCapabilities() {
		advertised = append(advertised, int32(c.GetRpc().GetType()))
	}
	if !slices.Contains(advertised, 4) || !slices.Contains(advertised, int32(csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH)) {
		t.Fatalf("capabilities %v: want VOLUME_CONDITION (4) and GET_VOLUME_HEALTH", advertised)
	}

	killFuse(t, d)
	start := time.Now()
	abnormal, msg := d.stats(t, vol, t1)
	if !abnormal || !strings.Contains(msg, "rbd-fuse") {
		t.Fatalf("condition with rbd-fuse killed: %v %q", abnormal, msg)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("NodeGetVolumeStats took %v", took)
	}
	h, err := d.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: vol})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) == 0 ||
		h.GetVolumeHealth().GetHealthStatuses()[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE {
		t.Fatalf("NodeGetVolumeHealth = %v, %v", h, err)
	}

	// A publish heals the staging before it binds.
	t2 := filepath.Join(d.dir, "target-x2")
	stage := filepath.Join(d.dir, "stage-x")
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: stage, TargetPath: t2, VolumeCapability: d.fs}); err != nil {
		t.Fatalf("publish on a broken staging: %v", err)
	}
	if got := readFile(t, filepath.Join(t2, "table")); got != data {
		t.Fatalf("healed volume reads %q", got)
	}
	writeSynced(t, filepath.Join(t2, "after-heal"), "x")
	if abnormal, msg := d.stats(t, vol, t2); abnormal {
		t.Fatalf("healed target abnormal: %s", msg)
	}
	// The first pod's mount still shows the dead mapping: it must restart.
	if abnormal, msg := d.stats(t, vol, t1); !abnormal {
		t.Fatal("the old target is reported normal")
	} else {
		t.Logf("old target: %s", msg)
	}
	if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: t2}); err != nil {
		t.Fatal(err)
	}
	release1()

	// Unstage and stage heal it too: killed again, unstaged while broken,
	// staged again.
	_, release3 := d.mount(t, vol, "y")
	killFuse(t, d)
	release3()
	t4, release4 := d.mount(t, vol, "z")
	if got := readFile(t, filepath.Join(t4, "table")); got != data {
		t.Fatalf("after unstage and stage: %q", got)
	}
	if got := readFile(t, filepath.Join(t4, "after-heal")); got != "x" {
		t.Fatalf("write after the heal lost: %q", got)
	}
	release4()
	if left := leftovers(d.dir); len(left) > 0 {
		t.Errorf("left under %s: %v", d.dir, left)
	}
}
