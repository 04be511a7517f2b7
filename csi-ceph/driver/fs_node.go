package driver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
	"github.com/nodeinfra/nodeinfra/pkg/atomicfile"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
)

// The CephFS node stages a volume once per node: the subvolume is mounted
// at the staging path (kernel client or ceph-fuse), and each publish is a
// bind mount of it. Its state dir holds, per staged volume (named by a
// hash of the volume ID):
//
//	cephfs/staged/<hash>.json   the staging record (fsStaged)
//	cephfs/mounts/<hash>/       the mount's work dir (keyring, ceph.conf)
//
// The record is written before the mount, so that a crash in between
// leaves a record that unstage (or the next stage) cleans up by. A
// record from an earlier boot is stale: its mount is gone with the boot.
type fsNode struct {
	fs       mapper.CephFS
	stateDir string
	bootID   string
	log      *slog.Logger
}

const fsRecordVersion = 1

// fsStaged is the record of a staged CephFS volume.
type fsStaged struct {
	Version     int            `json:"version"`
	VolumeID    string         `json:"volumeID"`
	StagingPath string         `json:"stagingPath"`
	ClusterID   string         `json:"clusterID"`
	BootID      string         `json:"bootID"`
	Mount       mapper.FSMount `json:"mount"`
}

func newFSNode(stateDir string, m mapper.CephFS, log *slog.Logger) (*fsNode, error) {
	if err := os.MkdirAll(filepath.Join(stateDir, "cephfs"), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	boot, err := os.ReadFile(bootIDPath)
	if err != nil {
		return nil, fmt.Errorf("read boot ID: %w", err)
	}
	return &fsNode{fs: m, stateDir: stateDir, bootID: string(bytes.TrimSpace(boot)), log: log}, nil
}

func (n *fsNode) recordPath(volumeID string) string {
	return filepath.Join(n.stateDir, "cephfs", "staged", stateName(volumeID)+".json")
}

func (n *fsNode) workDir(volumeID string) string {
	return filepath.Join(n.stateDir, "cephfs", "mounts", stateName(volumeID))
}

func (n *fsNode) load(volumeID string) (s fsStaged, found bool, err error) {
	b, err := os.ReadFile(n.recordPath(volumeID))
	if errors.Is(err, fs.ErrNotExist) {
		return s, false, nil
	}
	if err != nil {
		return s, false, fmt.Errorf("read staging record: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, false, fmt.Errorf("decode staging record: %w", err)
	}
	return s, true, nil
}

func (n *fsNode) save(s fsStaged) error {
	p := n.recordPath(s.VolumeID)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("write staging record: %w", err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode staging record: %w", err)
	}
	if err := atomicfile.Write(p, b, 0o600); err != nil {
		return fmt.Errorf("write staging record: %w", err)
	}
	return nil
}

// release unmounts what a record holds and removes the record.
func (n *fsNode) release(s fsStaged) error {
	if err := n.fs.Unmount(s.Mount); err != nil {
		return err
	}
	if err := os.Remove(n.recordPath(s.VolumeID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove staging record: %w", err)
	}
	return nil
}

// check tells whether a record's mount serves the volume: nil, or why not
// (stale: from an earlier boot; broken: gone or not answering).
func (n *fsNode) check(s fsStaged) (stale bool, err error) {
	if s.Version != fsRecordVersion || s.BootID != n.bootID {
		return true, errors.New("the volume was staged before the node restarted")
	}
	return false, n.fs.Check(s.Mount)
}

// NodeGetInfo implements csi.NodeServer.
func (d *FSDriver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.cfg.NodeID, MaxVolumesPerNode: d.cfg.MaxVolumesPerNode}, nil
}

// NodeGetCapabilities implements csi.NodeServer. There is no node
// expansion: a larger quota shows at once.
func (d *FSDriver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, c := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		nodeCapVolumeCondition,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: c}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeStageVolume implements csi.NodeServer: mount the subvolume at the
// staging path with the mounter the StorageClass asks for, or the best
// this host has.
func (d *FSDriver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	return &csi.NodeStageVolumeResponse{}, toStatus(d.nodeStage(ctx, req))
}

func (d *FSDriver) nodeStage(ctx context.Context, req *csi.NodeStageVolumeRequest) error {
	if err := checkStage(req, checkFSCapabilities); err != nil {
		return err
	}
	id, err := ParseVolumeID(req.GetVolumeId())
	if err != nil {
		return err
	}
	vctx := req.GetVolumeContext()
	params, err := fsNodeParamsOf(vctx[paramMounter], vctx[paramKernelOpts], vctx[paramFuseOpts])
	if err != nil {
		return err
	}
	unlock, err := d.locks.tryLock(req.GetVolumeId())
	if err != nil {
		return err
	}
	defer unlock()
	n := d.node
	path := req.GetStagingTargetPath()
	if old, found, err := n.load(req.GetVolumeId()); err != nil {
		return err
	} else if found {
		stale, cerr := n.check(old)
		switch {
		case !stale && old.StagingPath != path:
			return fmt.Errorf("volume is staged at %s already: %w", old.StagingPath, errdefs.ErrFailedPrecondition)
		case cerr == nil:
			d.conds.set(req.GetVolumeId(), false)
			return nil // staged already
		case !stale && errors.Is(cerr, mapper.ErrBroken):
			if err := n.fs.Heal(ctx, old.Mount); err == nil {
				d.conds.set(req.GetVolumeId(), false)
				logChange(ctx, "staging healed", "was", cerr.Error())
				return nil
			}
		}
		if err := n.release(old); err != nil {
			return err
		}
	}
	creds, err := credsFrom(req.GetSecrets())
	if err != nil {
		return err
	}
	cl, err := d.clusters.Get(id.ClusterID)
	if err != nil {
		return err
	}
	fsName, subPath := vctx[paramFSName], vctx[ctxSubvolumePath]
	if fsName == "" || subPath == "" { // a volume context without them: ask the cluster
		r, err := d.volumeRef(ctx, req.GetVolumeId(), req.GetSecrets())
		if err != nil {
			return err
		}
		fsName = r.fs.Name
		subPath, err = r.c.SubvolumePath(r.fs.Name, r.group, id.subvolume())
		r.release()
		if err != nil {
			return err
		}
	}
	which, err := n.fs.Choose(params.Mounter)
	if err != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrFailedPrecondition)
	}
	opts := params.FuseOpts
	if which == mapper.CephFSKernel {
		opts = params.KernelOpts
	}
	t := mapper.FSTarget{Monitors: cl.Monitors, User: creds.ID, Key: creds.Key, FSName: fsName, Path: subPath, Options: opts}
	s := fsStaged{Version: fsRecordVersion, VolumeID: req.GetVolumeId(), StagingPath: path, ClusterID: id.ClusterID, BootID: n.bootID,
		Mount: mapper.FSMount{Mounter: which, Point: path, Dir: n.workDir(req.GetVolumeId()), FSName: fsName, Path: subPath, User: creds.ID}}
	// The record before the mount: a crash in between leaves a record
	// that the next stage or unstage cleans up by.
	if err := n.save(s); err != nil {
		return err
	}
	done := timeOp(d.obs, metrics.OpMount)
	m, err := n.fs.Mount(ctx, t, which, path, s.Mount.Dir)
	done(err)
	if err != nil {
		if rerr := n.release(s); rerr != nil {
			logging.From(ctx).Error("undo a failed stage", "error", rerr)
		}
		return err
	}
	s.Mount = m
	if err := n.save(s); err != nil {
		return err
	}
	d.conds.set(req.GetVolumeId(), false)
	logChange(ctx, "volume staged", "mounter", which, "path", subPath)
	return nil
}

// NodeUnstageVolume implements csi.NodeServer: unmount the staging path
// (a dead ceph-fuse's mount too) and remove the work dir and record.
func (d *FSDriver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	return &csi.NodeUnstageVolumeResponse{}, toStatus(d.nodeUnstage(ctx, req))
}

func (d *FSDriver) nodeUnstage(ctx context.Context, req *csi.NodeUnstageVolumeRequest) error {
	if req.GetVolumeId() == "" {
		return fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	}
	if req.GetStagingTargetPath() == "" {
		return fmt.Errorf("staging target path is required: %w", errdefs.ErrInvalidArgument)
	}
	unlock, err := d.locks.tryLock(req.GetVolumeId())
	if err != nil {
		return err
	}
	defer unlock()
	s, found, err := d.node.load(req.GetVolumeId())
	if err != nil {
		return err
	}
	// The unmount, and for a ceph-fuse mount the daemon's exit
	// (release), are the operation "unmount".
	done := timeOp(d.obs, metrics.OpUnmount)
	err = mounts.Unmount(req.GetStagingTargetPath())
	if err != nil {
		err = fmt.Errorf("unmount staging path: %w", err)
	} else if found {
		err = d.node.release(s)
	}
	done(err)
	if err != nil {
		return err
	}
	if err := mounts.Cleanup(req.GetStagingTargetPath()); err != nil {
		return err
	}
	d.conds.forget(req.GetVolumeId())
	if found {
		logChange(ctx, "volume unstaged")
	}
	return nil
}

// NodePublishVolume implements csi.NodeServer: bind the staged mount at
// the target (read-only when asked), after healing a broken staging; a
// target bound to an earlier mount of the volume is bound again.
func (d *FSDriver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	return &csi.NodePublishVolumeResponse{}, toStatus(d.nodePublish(ctx, req))
}

func (d *FSDriver) nodePublish(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
	if err := checkPublish(req, checkFSCapabilities); err != nil {
		return err
	}
	unlock, err := d.locks.tryLock(req.GetVolumeId())
	if err != nil {
		return err
	}
	defer unlock()
	n := d.node
	s, ok, err := n.load(req.GetVolumeId())
	if err != nil {
		return err
	}
	if !ok {
		if _, err := ParseVolumeID(req.GetVolumeId()); err != nil {
			return err
		}
		return fmt.Errorf("volume is not staged on this node: %w", errdefs.ErrNotFound)
	}
	if s.StagingPath != req.GetStagingTargetPath() {
		return fmt.Errorf("volume is staged at %s, not %s: %w", s.StagingPath, req.GetStagingTargetPath(), errdefs.ErrFailedPrecondition)
	}
	if stale, err := n.check(s); stale {
		d.conds.set(req.GetVolumeId(), true)
		return fmt.Errorf("the volume's staging record is stale (%v): stage it again: %w", err, errdefs.ErrFailedPrecondition)
	} else if errors.Is(err, mapper.ErrBroken) {
		if herr := n.fs.Heal(ctx, s.Mount); herr != nil {
			d.conds.set(req.GetVolumeId(), true)
			return fmt.Errorf("the volume's staging is broken (%v) and healing it failed: %v: %w", err, herr, errdefs.ErrUnavailable)
		}
		logChange(ctx, "staging healed", "was", err.Error())
	} else if err != nil {
		return err
	}
	d.conds.set(req.GetVolumeId(), false)
	target := req.GetTargetPath()
	if req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		if other, err := otherBind(s.StagingPath, target); err != nil {
			return err
		} else if other != "" {
			return fmt.Errorf("a single-writer volume is published at %s already: %w", other, errdefs.ErrFailedPrecondition)
		}
	}
	if mt, mounted, err := mounts.At(target); err != nil {
		return err
	} else if mounted {
		if st, _, err := mounts.At(s.StagingPath); err == nil && st.Dev() == mt.Dev() && mounts.Probe(target, 0) == nil {
			return nil // published already
		}
		// A bind of an earlier mount (a dead ceph-fuse's, healed since):
		// bind the current one.
		if err := mounts.Unmount(target); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("create target dir: %w", err)
	}
	if err := unix.Mount(s.StagingPath, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s at %s: %w", s.StagingPath, target, err)
	}
	ro := req.GetReadonly() || readOnlyMode(req.GetVolumeCapability())
	if ro {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return fmt.Errorf("make %s read-only: %w", target, err)
		}
	}
	logChange(ctx, "volume published", "target", target, "readOnly", ro)
	return nil
}

// NodeUnpublishVolume implements csi.NodeServer.
func (d *FSDriver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if err := unpublish(ctx, req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats implements csi.NodeServer: bytes against the quota
// (the clients report the quota as the size of the volume), inodes in
// use, and the volume's condition: abnormal when its mount does not
// answer (a dead ceph-fuse), or the path shows an earlier mount of it.
func (d *FSDriver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	resp, err := d.nodeVolumeStats(req)
	return resp, toStatus(err)
}

func (d *FSDriver) nodeVolumeStats(req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" || req.GetVolumePath() == "" {
		return nil, fmt.Errorf("volume ID and volume path are required: %w", errdefs.ErrInvalidArgument)
	}
	path := req.GetVolumePath()
	probe := mounts.Probe(path, 0)
	if errors.Is(probe, os.ErrNotExist) {
		return nil, fmt.Errorf("volume path %s: %w", path, errdefs.ErrNotFound)
	}
	if probe != nil && !mounts.IsBroken(probe) {
		return nil, probe
	}
	resp := &csi.NodeGetVolumeStatsResponse{}
	abnormal, msg := d.node.condition(req.GetVolumeId(), path)
	if probe != nil {
		abnormal, msg = true, fmt.Sprintf("the volume path does not answer: %v", probe)
	} else {
		var sfs unix.Statfs_t
		if err := unix.Statfs(path, &sfs); err != nil {
			return nil, fmt.Errorf("statfs %s: %w", path, err)
		}
		bs := int64(sfs.Bsize)
		resp.Usage = []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: int64(sfs.Blocks) * bs, Available: int64(sfs.Bavail) * bs, Used: int64(sfs.Blocks-sfs.Bfree) * bs},
			// CephFS counts the files under the directory (rentries) and
			// has no inode limit unless a file quota is set.
			{Unit: csi.VolumeUsage_INODES, Used: int64(sfs.Files)},
		}
	}
	d.conds.set(req.GetVolumeId(), abnormal)
	setVolumeCondition(resp, abnormal, msg)
	return resp, nil
}

// condition tells whether the volume's staging is broken, or path shows
// an earlier mount of it.
func (n *fsNode) condition(volumeID, path string) (bool, string) {
	s, found, err := n.load(volumeID)
	if err != nil {
		return true, err.Error()
	}
	if !found {
		return false, ""
	}
	if _, err := n.check(s); err != nil {
		return true, fmt.Sprintf("the volume's staging is not healthy: %v", err)
	}
	if path != s.StagingPath {
		st, ok1, _ := mounts.At(s.StagingPath)
		pt, ok2, _ := mounts.At(path)
		if ok1 && ok2 && st.Dev() != pt.Dev() {
			return true, fmt.Sprintf("%s shows an earlier mount of the volume: publish it again or restart the pod", path)
		}
	}
	return false, ""
}

// otherBind finds a mount of the staged file system other than the
// staging path and target: another publish of the volume.
func otherBind(staging, target string) (string, error) {
	st, ok, err := mounts.At(staging)
	if err != nil || !ok {
		return "", err
	}
	all, err := mounts.List()
	if err != nil {
		return "", err
	}
	for _, m := range all {
		if m.Dev() == st.Dev() && m.Point != filepath.Clean(staging) && m.Point != filepath.Clean(target) {
			return m.Point, nil
		}
	}
	return "", nil
}
