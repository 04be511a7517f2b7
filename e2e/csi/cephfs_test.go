package csi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// sharedCap is a CephFS volume as many pods on many nodes write it.
var sharedCap = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}

// create creates a volume (retrying while a clone is copied) and deletes
// it when the test ends; it returns the volume and how many times
// CreateVolume answered Aborted.
func (d *fsDriver) create(t *testing.T, name string, size int64, src *csi.VolumeContentSource) (*csi.Volume, int) {
	t.Helper()
	req := &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{sharedCap}, Parameters: d.params, Secrets: d.secrets, VolumeContentSource: src}
	aborted := 0
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, err := d.CreateVolume(context.Background(), req)
		if status.Code(err) == codes.Aborted && time.Now().Before(deadline) {
			aborted++
			time.Sleep(time.Second)
			continue
		}
		if err != nil {
			t.Fatalf("CreateVolume %s: %v", name, err)
		}
		vol := resp.GetVolume()
		t.Cleanup(func() { d.deleteVolume(t, vol.GetVolumeId()) })
		return vol, aborted
	}
}

func (d *fsDriver) deleteVolume(t *testing.T, id string) {
	t.Helper()
	if _, err := d.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id, Secrets: d.secrets}); err != nil {
		t.Errorf("DeleteVolume %s: %v", id, err)
	}
}

// stage stages vol once and unstages it when the test ends.
func (d *fsDriver) stage(t *testing.T, vol *csi.Volume) string {
	t.Helper()
	staging := filepath.Join(d.dir, "stage", vol.GetVolumeId())
	if _, err := d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: sharedCap, VolumeContext: vol.GetVolumeContext(), Secrets: d.secrets}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	t.Cleanup(func() {
		if _, err := d.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging}); err != nil {
			t.Errorf("NodeUnstageVolume: %v", err)
		}
	})
	return staging
}

// publish publishes a staged volume at a target named tag and
// unpublishes it when the test ends.
func (d *fsDriver) publish(t *testing.T, vol *csi.Volume, staging, tag string) string {
	t.Helper()
	target := filepath.Join(d.dir, "pods", tag)
	if err := d.publishAt(vol, staging, target); err != nil {
		t.Fatalf("NodePublishVolume %s: %v", tag, err)
	}
	t.Cleanup(func() {
		if _, err := d.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: target}); err != nil {
			t.Errorf("NodeUnpublishVolume: %v", err)
		}
	})
	return target
}

func (d *fsDriver) publishAt(vol *csi.Volume, staging, target string) error {
	_, err := d.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		TargetPath: target, VolumeCapability: sharedCap, VolumeContext: vol.GetVolumeContext()})
	return err
}

func (d *fsDriver) stats(t *testing.T, vol, path string) (*csi.NodeGetVolumeStatsResponse, bool, string) {
	t.Helper()
	resp, err := d.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: vol, VolumePath: path})
	if err != nil {
		t.Fatalf("NodeGetVolumeStats %s: %v", path, err)
	}
	abnormal, msg := volumeCondition(t, resp)
	return resp, abnormal, msg
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fillUntilError writes 1 MiB blocks (fsynced) into path until a write
// fails or max bytes are written.
func fillUntilError(path string, max int64) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for n < max {
		if _, err := f.Write(buf); err != nil {
			return n, err
		}
		if err := f.Sync(); err != nil {
			return n, err
		}
		n += int64(len(buf))
	}
	return n, nil
}

func statfsTotal(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * int64(st.Bsize)
}

// One CephFS volume, two publish targets: each sees the other's writes;
// the quota stops a write (EDQUOT); online expansion raises the quota
// statfs shows, with no node step; stats count bytes against the quota.
func TestCephFSSharedVolumeQuotaAndExpansion(t *testing.T) {
	d := startFSDriver(t)
	const quota = 8 << 20
	vol, _ := d.create(t, uniqueName("shared"), quota, nil)
	if vol.GetCapacityBytes() != quota {
		t.Fatalf("capacity %d, want %d", vol.GetCapacityBytes(), quota)
	}
	staging := d.stage(t, vol)
	a := d.publish(t, vol, staging, "a")
	b := d.publish(t, vol, staging, "b")
	writeSynced(t, filepath.Join(a, "from-a"), "written by a")
	writeSynced(t, filepath.Join(b, "from-b"), "written by b")
	if got := mustRead(t, filepath.Join(b, "from-a")); got != "written by a" {
		t.Fatalf("b reads %q", got)
	}
	if got := mustRead(t, filepath.Join(a, "from-b")); got != "written by b" {
		t.Fatalf("a reads %q", got)
	}
	if total := statfsTotal(t, a); total != quota {
		t.Fatalf("statfs total %d, want the quota %d", total, quota)
	}
	n, err := fillUntilError(filepath.Join(a, "fill"), 4*quota)
	if !errors.Is(err, unix.EDQUOT) {
		t.Fatalf("writing past the quota: wrote %d bytes, error %v; want EDQUOT", n, err)
	}
	t.Logf("the quota stopped a write after %d MiB: %v", n>>20, err)
	resp, abnormal, msg := d.stats(t, vol.GetVolumeId(), b)
	if abnormal {
		t.Fatalf("healthy volume reported abnormal: %s", msg)
	}
	var bytesUsage, inodes *csi.VolumeUsage
	for _, u := range resp.GetUsage() {
		switch u.GetUnit() {
		case csi.VolumeUsage_BYTES:
			bytesUsage = u
		case csi.VolumeUsage_INODES:
			inodes = u
		}
	}
	if bytesUsage.GetTotal() != quota || bytesUsage.GetUsed() < quota/2 || inodes.GetUsed() < 3 {
		t.Fatalf("stats: bytes %v, inodes %v; want total = quota, used >= half, 3+ inodes", bytesUsage, inodes)
	}
	if err := os.Remove(filepath.Join(a, "fill")); err != nil {
		t.Fatal(err)
	}
	exp, err := d.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * quota}, Secrets: d.secrets, VolumeCapability: sharedCap})
	if err != nil {
		t.Fatalf("ControllerExpandVolume: %v", err)
	}
	if exp.GetCapacityBytes() != 2*quota || exp.GetNodeExpansionRequired() {
		t.Fatalf("expand answered %v", exp)
	}
	deadline := time.Now().Add(60 * time.Second)
	for statfsTotal(t, b) != 2*quota {
		if time.Now().After(deadline) {
			t.Fatalf("statfs total %d after expansion, want %d", statfsTotal(t, b), 2*quota)
		}
		time.Sleep(500 * time.Millisecond)
	}
	out, err := execOut("df", "-B1", "--output=size", a)
	if err != nil || !strings.Contains(out, fmt.Sprint(2*quota)) {
		t.Fatalf("df after expansion: %v: %s", err, out)
	}
}

// use stages and publishes vol, runs fn on the target, and unpublishes
// and unstages it again.
func (d *fsDriver) use(t *testing.T, vol *csi.Volume, fn func(path string)) {
	t.Helper()
	staging := filepath.Join(d.dir, "stage", vol.GetVolumeId())
	target := filepath.Join(d.dir, "pods", vol.GetVolumeId())
	if _, err := d.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging,
		VolumeCapability: sharedCap, VolumeContext: vol.GetVolumeContext(), Secrets: d.secrets}); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
	defer func() {
		if _, err := d.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: staging}); err != nil {
			t.Errorf("NodeUnstageVolume: %v", err)
		}
	}()
	if err := d.publishAt(vol, staging, target); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
	defer func() {
		if _, err := d.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: target}); err != nil {
			t.Errorf("NodeUnpublishVolume: %v", err)
		}
	}()
	fn(target)
}

func snapshotSource(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

// Snapshot → restore carries the data; a snapshot with a clone pending
// cannot be deleted (FailedPrecondition); a volume deleted with a snapshot
// keeps the snapshot (retain_snapshots), and a volume restored from it
// afterwards still has the data; deleting the snapshot then removes the
// rest.
func TestCephFSSnapshotRestoreAndRetain(t *testing.T) {
	d := startFSDriver(t, "--clone-wait=0")
	src, _ := d.create(t, uniqueName("src"), 16<<20, nil)
	d.use(t, src, func(p string) { writeSynced(t, filepath.Join(p, "data"), "snapshot me") })
	snap, err := d.CreateSnapshot(context.Background(), &csi.CreateSnapshotRequest{Name: uniqueName("snap"), SourceVolumeId: src.GetVolumeId(), Secrets: d.secrets})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	snapID := snap.GetSnapshot().GetSnapshotId()
	if !snap.GetSnapshot().GetReadyToUse() || snap.GetSnapshot().GetSizeBytes() != 16<<20 {
		t.Fatalf("snapshot %v", snap.GetSnapshot())
	}
	// Start a restore; while Ceph copies it, the snapshot cannot go.
	name := uniqueName("restore")
	_, err = d.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{sharedCap}, Parameters: d.params, Secrets: d.secrets, VolumeContentSource: snapshotSource(snapID)})
	if status.Code(err) != codes.Aborted {
		t.Fatalf("CreateVolume from a snapshot with --clone-wait=0: %v, want Aborted while the clone runs", err)
	}
	_, err = d.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: snapID, Secrets: d.secrets})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("DeleteSnapshot with a clone pending: %v, want FailedPrecondition", err)
	}
	restored, aborted := d.create(t, name, 16<<20, snapshotSource(snapID))
	t.Logf("restore from the snapshot: Aborted %d more times before it completed", aborted)
	d.use(t, restored, func(p string) {
		if got := mustRead(t, filepath.Join(p, "data")); got != "snapshot me" {
			t.Fatalf("restored volume reads %q", got)
		}
	})
	// Delete the source with its snapshot: the snapshot stays.
	d.deleteVolume(t, src.GetVolumeId())
	subvol := src.GetVolumeContext()["subvolumeName"]
	out, err := cephCmd(d.cl, "fs", "subvolume", "info", "cephfs", subvol, "--group_name", d.group)
	if err != nil || !strings.Contains(out, "snapshot-retained") {
		t.Fatalf("subvolume of the deleted volume: %v: %s; want state snapshot-retained", err, out)
	}
	again, aborted := d.create(t, uniqueName("from-retained"), 0, snapshotSource(snapID))
	t.Logf("restore from the retained snapshot: Aborted %d times", aborted)
	if again.GetCapacityBytes() != 16<<20 {
		t.Fatalf("restore without a size: %d bytes, want the snapshot's 16 MiB", again.GetCapacityBytes())
	}
	d.use(t, again, func(p string) {
		if got := mustRead(t, filepath.Join(p, "data")); got != "snapshot me" {
			t.Fatalf("volume restored from the retained snapshot reads %q", got)
		}
	})
	if _, err := d.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: snapID, Secrets: d.secrets}); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := cephCmd(d.cl, "fs", "subvolume", "ls", "cephfs", "--group_name", d.group)
		if err == nil && !strings.Contains(out, subvol) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the retained subvolume is still there after its last snapshot went: %s", out)
		}
		time.Sleep(time.Second)
	}
}

// A clone from a volume carries its data, and CreateVolume answers
// Aborted while Ceph copies it.
func TestCephFSCloneFromVolume(t *testing.T) {
	d := startFSDriver(t, "--clone-wait=0")
	src, _ := d.create(t, uniqueName("src"), 16<<20, nil)
	d.use(t, src, func(p string) {
		writeSynced(t, filepath.Join(p, "data"), "clone me")
		if err := os.MkdirAll(filepath.Join(p, "dir", "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		writeSynced(t, filepath.Join(p, "dir", "sub", "deep"), "deep file")
	})
	volSrc := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.GetVolumeId()}}}
	clone, aborted := d.create(t, uniqueName("clone"), 0, volSrc)
	if aborted == 0 {
		t.Fatal("CreateVolume of a clone never answered Aborted while the clone ran")
	}
	t.Logf("clone from a volume: CreateVolume answered Aborted %d times", aborted)
	if clone.GetCapacityBytes() != 16<<20 {
		t.Fatalf("clone without a size: %d bytes, want the source's 16 MiB", clone.GetCapacityBytes())
	}
	d.use(t, clone, func(p string) {
		if got := mustRead(t, filepath.Join(p, "data")); got != "clone me" {
			t.Fatalf("clone reads %q", got)
		}
		if got := mustRead(t, filepath.Join(p, "dir", "sub", "deep")); got != "deep file" {
			t.Fatalf("clone reads %q", got)
		}
	})
	// The temporary snapshot the clone was made from is gone.
	out, err := cephCmd(d.cl, "fs", "subvolume", "snapshot", "ls", "cephfs", src.GetVolumeContext()["subvolumeName"], "--group_name", d.group)
	if err != nil || strings.Contains(out, "csi-tmp-") {
		t.Fatalf("snapshots of the source after the clone: %v: %s", err, out)
	}
}

// kill -9 of the ceph-fuse of a staged volume: stats say abnormal, a
// publish heals the staging (and binds its target again), no data is
// lost; unstage and stage work after it too.
func TestCephFSDeadFuseHealed(t *testing.T) {
	d := startFSDriver(t)
	vol, _ := d.create(t, uniqueName("heal"), 8<<20, nil)
	staging := d.stage(t, vol)
	target := d.publish(t, vol, staging, "pod")
	writeSynced(t, filepath.Join(target, "kept"), "synced before the crash")
	pids := d.mappers.pids()
	if len(pids) != 1 {
		t.Fatalf("want one ceph-fuse in the daemons' cgroup, found %v", pids)
	}
	if err := unix.Kill(pids[0], unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(d.mappers.pids()) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("ceph-fuse survived SIGKILL")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The MDS would keep the dead client's session (and its caps, which
	// hold up removing the subvolume) until it times out: evict it, as an
	// operator would.
	evictClient(t, d, pids[0])
	if _, abnormal, msg := d.stats(t, vol.GetVolumeId(), target); !abnormal {
		t.Fatal("stats of a volume whose ceph-fuse died: not abnormal")
	} else {
		t.Logf("abnormal: %s", msg)
	}
	if err := d.publishAt(vol, staging, target); err != nil {
		t.Fatalf("NodePublishVolume after ceph-fuse died: %v", err)
	}
	if got := mustRead(t, filepath.Join(target, "kept")); got != "synced before the crash" {
		t.Fatalf("after healing the target reads %q", got)
	}
	if _, abnormal, msg := d.stats(t, vol.GetVolumeId(), target); abnormal {
		t.Fatalf("stats after healing: abnormal: %s", msg)
	}
	other := d.publish(t, vol, staging, "other")
	if got := mustRead(t, filepath.Join(other, "kept")); got != "synced before the crash" {
		t.Fatalf("a new publish reads %q", got)
	}
}

// evictClient evicts the MDS session of the CephFS client with pid.
func evictClient(t *testing.T, d *fsDriver, pid int) {
	t.Helper()
	out, err := cephCmd(d.cl, "tell", "mds.a", "session", "ls", "--format", "json")
	if err != nil {
		t.Fatalf("session ls: %v: %s", err, out)
	}
	var sessions []struct {
		ID       int64          `json:"id"`
		Metadata map[string]any `json:"client_metadata"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "["):]), &sessions); err != nil {
		t.Fatalf("session ls: %v: %s", err, out)
	}
	for _, s := range sessions {
		if fmt.Sprint(s.Metadata["pid"]) == fmt.Sprint(pid) {
			if out, err := cephCmd(d.cl, "tell", "mds.a", "client", "evict", fmt.Sprintf("id=%d", s.ID)); err != nil {
				t.Fatalf("evict client %d: %v: %s", s.ID, err, out)
			}
			return
		}
	}
	t.Logf("no MDS session of pid %d to evict", pid)
}

// StorageClass parameters and requests the CephFS driver refuses, and the
// data pool a volume's files go to.
func TestCephFSParameters(t *testing.T) {
	d := startFSDriver(t)
	ctx := context.Background()
	req := func(name string, size int64, params map[string]string, c *csi.VolumeCapability) *csi.CreateVolumeRequest {
		return &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
			VolumeCapabilities: []*csi.VolumeCapability{c}, Parameters: params, Secrets: d.secrets}
	}
	with := func(kv ...string) map[string]string {
		p := map[string]string{"clusterID": d.params["clusterID"], "fsName": "cephfs"}
		for i := 0; i < len(kv); i += 2 {
			p[kv[i]] = kv[i+1]
		}
		return p
	}
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}
	for name, r := range map[string]*csi.CreateVolumeRequest{
		"unknown parameter": req(uniqueName("bad"), 1<<20, with("imageFeatures", "layering"), sharedCap),
		"not a data pool":   req(uniqueName("bad"), 1<<20, with("pool", "rbd"), sharedCap),
		"no such fs":        req(uniqueName("bad"), 1<<20, with("fsName", "nope"), sharedCap),
		"bad mounter":       req(uniqueName("bad"), 1<<20, with("mounter", "krbd"), sharedCap),
		"block":             req(uniqueName("bad"), 1<<20, with(), block),
	} {
		if _, err := d.CreateVolume(ctx, r); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	d.params = with("pool", "cephfs.cephfs.data")
	name := uniqueName("pooled")
	vol, _ := d.create(t, name, 1, nil)
	if vol.GetCapacityBytes() != 4<<20 {
		t.Errorf("1 byte asked: quota %d, want 4 MiB (whole 4 MiB)", vol.GetCapacityBytes())
	}
	out, err := cephCmd(d.cl, "fs", "subvolume", "info", "cephfs", vol.GetVolumeContext()["subvolumeName"], "--group_name", d.group)
	if err != nil || !strings.Contains(out, `"data_pool": "cephfs.cephfs.data"`) {
		t.Errorf("subvolume info: %v: %s", err, out)
	}
	if _, err := d.CreateVolume(ctx, req(name, 8<<20, d.params, sharedCap)); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same name, other size: %v, want AlreadyExists", err)
	}
	if _, err := d.CreateVolume(ctx, req(name, 1, with(), sharedCap)); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same name, other pool: %v, want AlreadyExists", err)
	}
}
