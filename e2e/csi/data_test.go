package csi_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
)

func fsCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// hasCapSysResource reports whether this process may grow a mounted ext4
// filesystem (the kernel asks for CAP_SYS_RESOURCE; this VM kind lacks it).
func hasCapSysResource() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			fmt.Sscanf(strings.TrimSpace(v), "%x", &caps)
			return caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

func (d *driver) create(t *testing.T, name string, size int64, src *csi.VolumeContentSource) string {
	t.Helper()
	resp, err := d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{d.fs}, Parameters: d.params, Secrets: d.secrets, VolumeContentSource: src})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	id := resp.GetVolume().GetVolumeId()
	image := resp.GetVolume().GetVolumeContext()["imageName"]
	t.Cleanup(func() { d.delete(t, id, image) })
	return id
}

// mount stages and publishes a volume at fresh paths and returns the
// target and a function that unpublishes and unstages it.
func (d *driver) mount(t *testing.T, id, tag string) (string, func()) {
	t.Helper()
	ctx := context.Background()
	stage := filepath.Join(d.dir, "stage-"+tag)
	target := filepath.Join(d.dir, "target-"+tag)
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: stage, VolumeCapability: d.fs, Secrets: d.secrets}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: stage, TargetPath: target, VolumeCapability: d.fs}); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	done := false
	release := func() {
		if done {
			return
		}
		done = true
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Errorf("NodeUnpublishVolume: %v", err)
		}
		if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: stage}); err != nil {
			t.Errorf("NodeUnstageVolume: %v", err)
		}
	}
	t.Cleanup(release)
	return target, release
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Data written through a published filesystem volume survives unpublish,
// unstage and a new stage at other paths; a snapshot restore and a clone
// carry it, staged beside their source on the same node (xfs refuses a
// second filesystem with a mounted one's UUID unless mounted nouuid);
// an expansion shows inside the filesystem. For ext4 and xfs (volumes of
// 320 MiB: mkfs.xfs refuses under 300 MiB).
func TestVolumeDataLifecycle(t *testing.T) {
	for _, fs := range []string{"ext4", "xfs"} {
		t.Run(fs, func(t *testing.T) { dataLifecycle(t, fs) })
	}
}

func dataLifecycle(t *testing.T, fsType string) {
	d := startDriver(t)
	d.fs = fsCap(fsType)
	ctx := context.Background()
	vol := d.create(t, "data-"+fmt.Sprint(time.Now().UnixNano()), 320<<20, nil)
	target, release := d.mount(t, vol, "a")
	const payload = "rows of a database\n"
	if err := os.WriteFile(filepath.Join(target, "table"), []byte(payload), 0o644); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	release()

	// The source stays staged from here on: its copies are staged beside it.
	source, releaseSource := d.mount(t, vol, "b")
	if got := readFile(t, filepath.Join(source, "table")); got != payload {
		t.Fatalf("after restage: %q", got)
	}
	unix.Sync()

	snap, err := d.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-" + fmt.Sprint(time.Now().UnixNano()), SourceVolumeId: vol, Secrets: d.secrets})
	if err != nil {
		t.Fatal(err)
	}
	sid := snap.GetSnapshot().GetSnapshotId()
	t.Cleanup(func() {
		_, _ = d.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: sid, Secrets: d.secrets})
	})
	restored := d.create(t, "restored-"+fmt.Sprint(time.Now().UnixNano()), 320<<20,
		&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sid}}})
	target, release = d.mount(t, restored, "restored")
	if got := readFile(t, filepath.Join(target, "table")); got != payload {
		t.Fatalf("restored from the snapshot: %q", got)
	}
	// Two filesystems, not one mounted twice: a write to the copy stays there.
	if err := os.WriteFile(filepath.Join(target, "restored-only"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(source, "restored-only")); !os.IsNotExist(err) {
		t.Fatalf("a write to the restored volume shows in its source: %v", err)
	}
	release()

	clone := d.create(t, "clone-"+fmt.Sprint(time.Now().UnixNano()), 320<<20,
		&csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: vol}}})
	target, release = d.mount(t, clone, "clone")
	if got := readFile(t, filepath.Join(target, "table")); got != payload {
		t.Fatalf("cloned: %q", got)
	}
	expand(t, d, clone, target, fsType, payload)
	release()
	if got := readFile(t, filepath.Join(source, "table")); got != payload {
		t.Fatalf("the source after its copies: %q", got)
	}
	releaseSource()

	// Nothing of the node side is left: no mounts, no loop devices.
	if left := leftovers(d.dir); len(left) > 0 {
		t.Errorf("left under %s: %v", d.dir, left)
	}
}

// expand grows a mounted volume online: the controller grows the image,
// the node the filesystem.
func expand(t *testing.T, d *driver, vol, target, fsType, payload string) {
	t.Helper()
	ctx := context.Background()
	if fsType == "ext4" && !hasCapSysResource() {
		t.Log("not growing ext4 online: this host denies CAP_SYS_RESOURCE, which the kernel asks for (xfs covers online growth here)")
		return
	}
	var before unix.Statfs_t
	if err := unix.Statfs(target, &before); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: vol, CapacityRange: &csi.CapacityRange{RequiredBytes: 448 << 20}, Secrets: d.secrets, VolumeCapability: d.fs}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vol, VolumePath: target, CapacityRange: &csi.CapacityRange{RequiredBytes: 448 << 20}, VolumeCapability: d.fs}); err != nil {
		t.Fatal(err)
	}
	var after unix.Statfs_t
	if err := unix.Statfs(target, &after); err != nil {
		t.Fatal(err)
	}
	if b, a := before.Blocks*uint64(before.Bsize), after.Blocks*uint64(after.Bsize); a < b+100<<20 {
		t.Fatalf("filesystem grew from %d to %d bytes, want about 128 MiB more", b, a)
	}
	if got := readFile(t, filepath.Join(target, "table")); got != payload {
		t.Fatalf("after expansion: %q", got)
	}
}

// A read-only publish cannot be written through; unstage releases the map,
// the loop device and rbd-fuse even when the staging mount is already gone.
func TestReadOnlyPublishAndUnstageAfterMountLoss(t *testing.T) {
	d := startDriver(t)
	d.fs = fsCap("ext4")
	ctx := context.Background()
	vol := d.create(t, "ro-"+fmt.Sprint(time.Now().UnixNano()), 64<<20, nil)
	stage, rw, ro := filepath.Join(d.dir, "stage"), filepath.Join(d.dir, "rw"), filepath.Join(d.dir, "ro")
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: stage, VolumeCapability: d.fs, Secrets: d.secrets}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		target   string
		readonly bool
	}{{rw, false}, {ro, true}} {
		if _, err := d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: stage, TargetPath: p.target, VolumeCapability: d.fs, Readonly: p.readonly}); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rw, "f"), []byte("x"), 0o644); err != nil {
		t.Fatalf("write through the read-write target: %v", err)
	}
	if err := os.WriteFile(filepath.Join(ro, "g"), []byte("x"), 0o644); err == nil {
		t.Fatal("wrote through a read-only publish")
	}
	if got := readFile(t, filepath.Join(ro, "f")); got != "x" {
		t.Fatalf("read-only target reads %q", got)
	}
	for _, target := range []string{rw, ro} {
		if _, err := d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
	}
	// Someone unmounted the staging path behind the driver's back.
	if err := unix.Unmount(stage, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: stage}); err != nil {
		t.Fatalf("NodeUnstageVolume after the mount was lost: %v", err)
	}
	if left := leftovers(d.dir); len(left) > 0 {
		t.Errorf("left under %s (rbd-fuse still mounted? loop devices?): %v", d.dir, left)
	}
	if entries, _ := os.ReadDir(filepath.Join(d.dir, "state", "maps")); len(entries) != 0 {
		t.Errorf("map work dirs (with the keyring) left: %v", entries)
	}
	// Unstaging again is a no-op.
	if _, err := d.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol, StagingTargetPath: stage}); err != nil {
		t.Fatalf("second NodeUnstageVolume: %v", err)
	}
}

// A stage that fails halfway (here: the mount, on a bad mount option)
// leaves no map, loop device, FUSE mount or keyring behind, and a retry
// with a good capability stages the volume.
func TestFailedStageLeavesNothing(t *testing.T) {
	d := startDriver(t)
	d.fs = fsCap("ext4")
	ctx := context.Background()
	vol := d.create(t, "halfway-"+fmt.Sprint(time.Now().UnixNano()), 64<<20, nil)
	stage := filepath.Join(d.dir, "stage")
	bad := fsCap("ext4")
	bad.GetMount().MountFlags = []string{"no-such-mount-option"}
	if _, err := d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: stage, VolumeCapability: bad, Secrets: d.secrets}); err == nil {
		t.Fatal("stage with a bad mount option succeeded")
	}
	if left := leftovers(d.dir); len(left) > 0 {
		t.Errorf("left under %s after a failed stage: %v", d.dir, left)
	}
	for _, sub := range []string{"maps", "staged"} {
		if entries, _ := os.ReadDir(filepath.Join(d.dir, "state", sub)); len(entries) != 0 {
			t.Errorf("state/%s left after a failed stage: %v", sub, entries)
		}
	}
	target, release := d.mount(t, vol, "retry")
	if err := os.WriteFile(filepath.Join(target, "ok"), []byte("ok"), 0o644); err != nil {
		t.Fatal(err)
	}
	release()
}
