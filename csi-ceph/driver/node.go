package driver

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
)

// bootIDPath holds an ID the kernel picks at every boot.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// node is the node service's state: how it maps and mounts, where it
// records what it staged, and which boot this is.
type node struct {
	host     mapper.Host
	mappers  map[string]mapper.Mapper
	mounter  *mount.SafeFormatAndMount
	stateDir string
	bootID   string
	log      *slog.Logger
}

// newNode sets up the node service: the state dir (its real path: the
// kernel names loop devices' backing files by it), the mapper daemons'
// cgroup (mapperCgroup, "" for none) and the boot ID.
func newNode(stateDir, mapperCgroup string, log *slog.Logger) (*node, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	real, err := filepath.EvalSymlinks(stateDir)
	if err != nil {
		return nil, fmt.Errorf("resolve state dir: %w", err)
	}
	boot, err := os.ReadFile(bootIDPath)
	if err != nil {
		return nil, fmt.Errorf("read boot ID: %w", err)
	}
	daemons, err := mapper.NewDaemons(mapperCgroup)
	if err != nil {
		return nil, err
	}
	return &node{
		host: mapper.Host{SysRoot: "/sys", DevRoot: "/dev", LookPath: exec.LookPath},
		mappers: map[string]mapper.Mapper{
			mapper.KRBD:   mapper.Krbd{SysRoot: "/sys", DevRoot: "/dev"},
			mapper.RBDNBD: mapper.NBD{Bin: "rbd-nbd", Daemons: daemons},
			mapper.Fuse:   mapper.FuseLoop{Bin: "rbd-fuse", Losetup: "losetup", Daemons: daemons},
		},
		mounter:  mount.NewSafeFormatAndMount(mount.New(""), utilexec.New()),
		stateDir: real,
		bootID:   string(bytes.TrimSpace(boot)),
		log:      log,
	}, nil
}

// NodeGetInfo implements csi.NodeServer.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.cfg.NodeID, MaxVolumesPerNode: d.cfg.MaxVolumesPerNode}, nil
}

// NodeGetCapabilities implements csi.NodeServer. Volume health is
// advertised both ways: GET_VOLUME_HEALTH (NodeGetVolumeHealth, CSI 1.13)
// and VOLUME_CONDITION (a condition in NodeGetVolumeStats, what kubelets
// built on CSI 1.12 and earlier read; health.go).
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, c := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		nodeCapVolumeCondition,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: c}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func readOnlyMode(c *csi.VolumeCapability) bool {
	m := c.GetAccessMode().GetMode()
	return m == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY || m == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
}

// NodeStageVolume implements csi.NodeServer: map the image and, for a
// filesystem volume, make the filesystem on first use and mount it at the
// staging path.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	return &csi.NodeStageVolumeResponse{}, toStatus(d.nodeStage(ctx, req))
}

func (d *Driver) nodeStage(ctx context.Context, req *csi.NodeStageVolumeRequest) error {
	if err := checkStage(req, checkCapabilities); err != nil {
		return err
	}
	id, err := ParseVolumeID(req.GetVolumeId())
	if err != nil {
		return err
	}
	params, err := stageParams(req.GetVolumeContext())
	if err != nil {
		return err
	}
	unlock, err := d.locks.tryLock(req.GetVolumeId())
	if err != nil {
		return err
	}
	defer unlock()
	n := d.node
	if old, found, err := n.load(req.GetVolumeId()); err != nil {
		return err
	} else if found {
		if done, err := n.restage(ctx, old, req.GetStagingTargetPath()); err != nil || done {
			if done {
				d.conds.set(req.GetVolumeId(), false)
			}
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
	c, release, err := d.conn(ctx, id.ClusterID, creds)
	if err != nil {
		return err
	}
	defer release()
	pool, err := c.PoolName(id.PoolID)
	if err != nil {
		return err
	}
	// The image's ID names it for good (a name can come back after a
	// delete): the record keeps it, and krbd's sysfs shows it.
	imageID, err := c.ImageID(ctx, pool, id.image())
	if err != nil {
		return err
	}
	which, err := n.host.Choose(params.Mounter)
	if err != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrFailedPrecondition)
	}
	vc := req.GetVolumeCapability()
	block := vc.GetBlock() != nil
	ro := readOnlyMode(vc)
	fsType := vc.GetMount().GetFsType()
	if fsType == "" {
		fsType = params.FsType
	}
	if fsType == "" && !block {
		fsType = "ext4"
	}
	t := mapper.Target{Monitors: cl.Monitors, User: creds.ID, Key: creds.Key, Pool: pool, PoolID: id.PoolID,
		Image: id.image(), ImageID: imageID, ReadOnly: ro, Options: params.Map.For(which), UnmapOptions: params.Unmap.For(which)}
	work := n.workDir(req.GetVolumeId())
	if which == mapper.KRBD {
		t.MonAddrs = monAddrs(ctx, c)
		work = "" // the kernel needs no work dir
	}
	s := staged{Version: recordVersion, VolumeID: req.GetVolumeId(), StagingPath: req.GetStagingTargetPath(), Block: block,
		ClusterID: id.ClusterID, BootID: n.bootID, FsType: fsType, MountFlags: vc.GetMount().GetMountFlags(), ReadOnly: ro,
		Mapping: mapper.Mapping{Mapper: which, Dir: work, Pool: pool, PoolID: id.PoolID, Image: t.Image, ImageID: imageID, User: creds.ID}}
	// The record before the map: a crash in between leaves a record that
	// names the image, whose mapping the next stage or unstage finds.
	if err := n.save(s); err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok { // a failed stage leaves no map, loop device or FUSE process behind
			if err := n.release(context.Background(), s); err != nil {
				logging.From(ctx).Error("undo a failed stage", "error", err)
			}
		}
	}()
	done := timeOp(d.obs, metrics.OpMap)
	m, err := n.mappers[which].Map(ctx, t, work)
	done(err)
	if err != nil {
		return err
	}
	s.Mapping = m
	if err := n.save(s); err != nil {
		return err
	}
	if !block {
		done := timeOp(d.obs, metrics.OpMount)
		err := n.mountStaging(s, params.Mkfs)
		done(err)
		if err != nil {
			return err
		}
	}
	ok = true
	d.conds.set(req.GetVolumeId(), false)
	logChange(ctx, "volume staged", "device", m.Device, "mapper", which, "fsType", fsType)
	return nil
}

// monAddrs returns the monitors' addresses from the cluster's monitor map
// for the kernel client; when the map cannot be read, none (krbd then
// reads the cluster config's monitors).
func monAddrs(ctx context.Context, c *rbd.Conn) []mapper.MonAddr {
	mons, err := c.MonitorAddrs(ctx)
	if err != nil {
		logging.From(ctx).Warn("read the monitor map (krbd falls back to the configured monitors)", "error", err)
		return nil
	}
	out := make([]mapper.MonAddr, len(mons))
	for i, m := range mons {
		out[i] = mapper.MonAddr{V2: m.V2, V1: m.V1}
	}
	return out
}

// mountStaging makes the filesystem of s on first use and mounts it at
// its staging path.
func (n *node) mountStaging(s staged, mkfs []string) error {
	if err := os.MkdirAll(s.StagingPath, 0o750); err != nil {
		return fmt.Errorf("create staging path: %w", err)
	}
	opts := mountOptions(s.FsType, s.MountFlags, s.ReadOnly)
	if err := n.formatAndMount(s.Mapping.Device, s.StagingPath, s.FsType, opts, s.ReadOnly, mkfs); err != nil {
		return fmt.Errorf("mount %s at %s: %w", s.Mapping.Device, s.StagingPath, err)
	}
	return nil
}

// restage handles a stage of a volume that has a record already. done
// means the volume is staged (healthy, or healed); otherwise what the
// record held is released and the caller maps again.
func (n *node) restage(ctx context.Context, s staged, path string) (done bool, err error) {
	h, err := n.inspect(ctx, s)
	if err != nil {
		return false, err
	}
	if h.state != stale && s.StagingPath != path {
		return false, fmt.Errorf("volume is staged at %s already: %w", s.StagingPath, errdefs.ErrFailedPrecondition)
	}
	switch h.state {
	case healthy:
		return true, nil
	case broken:
		_, err := n.heal(ctx, s, h)
		if err == nil {
			return true, nil
		}
		logging.From(ctx).Warn("heal a broken staging failed: mapping again", "broken", h.reason, "error", err)
	case stale:
		// The record's device is not the volume's: release only what is
		// found to be the volume's, and map again.
		logging.From(ctx).Warn("stale staging record: mapping again", "device", s.Mapping.Device, "reason", h.reason)
	}
	if err := n.release(ctx, s); err != nil {
		return false, err
	}
	return false, nil
}

// release unmounts the staging path, unmaps what the mapper finds to be
// the volume's (the recorded device only when it still is), removes the
// map's work dir (with the keyring) and the record.
func (n *node) release(ctx context.Context, s staged) error {
	if s.StagingPath != "" {
		if err := mounts.Unmount(s.StagingPath); err != nil {
			return fmt.Errorf("unmount staging path: %w", err)
		}
	}
	mp, found := n.mappers[s.Mapping.Mapper]
	if !found {
		return fmt.Errorf("staging record names unknown mapper %q", s.Mapping.Mapper)
	}
	if err := mp.Unmap(ctx, s.Mapping); err != nil {
		return err
	}
	return n.remove(s.VolumeID)
}

// NodeUnstageVolume implements csi.NodeServer: unmount the staging path
// and release the mapping (loop device, FUSE process, map, keyring), also
// when the mount is already gone or broken, or the record stale.
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	return &csi.NodeUnstageVolumeResponse{}, toStatus(d.nodeUnstage(ctx, req))
}

func (d *Driver) nodeUnstage(ctx context.Context, req *csi.NodeUnstageVolumeRequest) error {
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
	n := d.node
	s, found, err := n.load(req.GetVolumeId())
	if err != nil {
		return err
	}
	if found {
		if h, err := n.inspect(ctx, s); err == nil && h.state != healthy {
			logging.From(ctx).Info("unstaging a volume that is not healthy", "state", h.state.String(), "reason", h.reason)
		}
	}
	done := timeOp(d.obs, metrics.OpUnmount)
	err = mounts.Unmount(req.GetStagingTargetPath())
	done(err)
	if err != nil {
		return fmt.Errorf("unmount staging path: %w", err)
	}
	if found {
		// release unmaps (its own unmount finds nothing mounted now).
		done := timeOp(d.obs, metrics.OpUnmap)
		err := n.release(ctx, s)
		done(err)
		if err != nil {
			return err
		}
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
