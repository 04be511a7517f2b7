package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// node is the node service's state: how it maps and mounts, and where it
// records what it staged.
type node struct {
	host     mapper.Host
	mappers  map[string]mapper.Mapper
	mounter  *mount.SafeFormatAndMount
	stateDir string
}

func newNode(stateDir string) *node {
	return &node{
		host: mapper.Host{SysRoot: "/sys", DevRoot: "/dev", LookPath: exec.LookPath},
		mappers: map[string]mapper.Mapper{
			mapper.KRBD:   mapper.Krbd{SysRoot: "/sys", DevRoot: "/dev"},
			mapper.RBDNBD: mapper.NBD{Bin: "rbd-nbd"},
			mapper.Fuse:   mapper.FuseLoop{Bin: "rbd-fuse", Losetup: "losetup"},
		},
		mounter:  mount.NewSafeFormatAndMount(mount.New(""), utilexec.New()),
		stateDir: stateDir,
	}
}

// release unmounts the staging path if it is mounted, unmaps the image
// (loop device, FUSE process, map, keyring) and removes the record.
func (n *node) release(ctx context.Context, s staged) error {
	if !s.Block {
		if err := mount.CleanupMountPoint(s.StagingPath, n.mounter, true); err != nil {
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

// NodeGetInfo implements csi.NodeServer.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.cfg.NodeID, MaxVolumesPerNode: d.cfg.MaxVolumesPerNode}, nil
}

// NodeGetCapabilities implements csi.NodeServer.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, c := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
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
	switch {
	case req.GetVolumeId() == "":
		return fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	case req.GetStagingTargetPath() == "" || !filepath.IsAbs(req.GetStagingTargetPath()):
		return fmt.Errorf("an absolute staging target path is required: %w", errdefs.ErrInvalidArgument)
	case req.GetVolumeCapability() == nil:
		return fmt.Errorf("volume capability is required: %w", errdefs.ErrInvalidArgument)
	}
	if err := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
		return err
	}
	id, err := ParseVolumeID(req.GetVolumeId())
	if err != nil {
		return err
	}
	unlock, err := d.locks.tryLock(req.GetVolumeId())
	if err != nil {
		return err
	}
	defer unlock()
	n := d.node
	block := req.GetVolumeCapability().GetBlock() != nil
	if s, ok, err := n.load(req.GetVolumeId()); err != nil {
		return err
	} else if ok {
		if s.StagingPath != req.GetStagingTargetPath() {
			return fmt.Errorf("volume is staged at %s already: %w", s.StagingPath, errdefs.ErrFailedPrecondition)
		}
		if block {
			return nil
		}
		if notMnt, err := n.mounter.IsLikelyNotMountPoint(s.StagingPath); err == nil && !notMnt {
			return nil
		}
		// The record is there but the mount is not (an earlier stage
		// failed halfway, or the mount was lost): release what the record
		// holds, so that mapping again below cannot leave a second map.
		if err := n.release(ctx, s); err != nil {
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
	c, err := d.conn(ctx, id.ClusterID, creds)
	if err != nil {
		return err
	}
	pool, err := c.PoolName(id.PoolID)
	if err != nil {
		return err
	}
	// No image lookup first: mapping a missing image fails by itself, and
	// an image open costs header reads and a watch.
	vol := struct{ Pool, Image string }{pool, id.image()}
	which, err := n.host.Choose(req.GetVolumeContext()["mounter"])
	if err != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrFailedPrecondition)
	}
	ro := readOnlyMode(req.GetVolumeCapability())
	m, err := n.mappers[which].Map(ctx, mapper.Target{Monitors: cl.Monitors, User: creds.ID, Key: creds.Key,
		Pool: vol.Pool, Image: vol.Image, ReadOnly: ro}, n.workDir(req.GetVolumeId()))
	if err != nil {
		return err
	}
	s := staged{VolumeID: req.GetVolumeId(), StagingPath: req.GetStagingTargetPath(), Block: block, Mapping: m}
	if err := n.save(s); err != nil {
		_ = n.mappers[which].Unmap(context.Background(), m)
		return err
	}
	ok := false
	defer func() {
		if !ok { // a failed stage leaves no map, loop device or FUSE process behind
			if err := n.release(context.Background(), s); err != nil {
				d.log.Error("undo a failed stage", "id", req.GetVolumeId(), "error", err)
			}
		}
	}()
	if block {
		ok = true
		d.log.Info("volume staged", "id", req.GetVolumeId(), "device", m.Device, "mapper", which)
		return nil
	}
	if err := os.MkdirAll(req.GetStagingTargetPath(), 0o750); err != nil {
		return fmt.Errorf("create staging path: %w", err)
	}
	mnt := req.GetVolumeCapability().GetMount()
	fsType := mnt.GetFsType()
	if fsType == "" {
		fsType = "ext4"
	}
	opts := append([]string{}, mnt.GetMountFlags()...)
	if ro {
		opts = append(opts, "ro")
	}
	if err := n.formatAndMount(m.Device, req.GetStagingTargetPath(), fsType, opts, ro); err != nil {
		return fmt.Errorf("mount %s at %s: %w", m.Device, req.GetStagingTargetPath(), err)
	}
	ok = true
	d.log.Info("volume staged", "id", req.GetVolumeId(), "device", m.Device, "mapper", which, "fsType", fsType)
	return nil
}

// NodeUnstageVolume implements csi.NodeServer: unmount the staging path
// and release the mapping (loop device, FUSE process, map, keyring), also
// when the mount is already gone.
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
	if err := mount.CleanupMountPoint(req.GetStagingTargetPath(), n.mounter, true); err != nil {
		return fmt.Errorf("unmount staging path: %w", err)
	}
	s, ok, err := n.load(req.GetVolumeId())
	if err != nil || !ok {
		return err
	}
	if err := n.release(ctx, s); err != nil {
		return err
	}
	d.log.Info("volume unstaged", "id", req.GetVolumeId())
	return nil
}

// NodePublishVolume implements csi.NodeServer: bind-mount the staged
// filesystem, or the mapped device for a block volume, at the target.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	return &csi.NodePublishVolumeResponse{}, toStatus(d.nodePublish(ctx, req))
}

func (d *Driver) nodePublish(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
	switch {
	case req.GetVolumeId() == "":
		return fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	case req.GetStagingTargetPath() == "":
		return fmt.Errorf("staging target path is required: %w", errdefs.ErrInvalidArgument)
	case req.GetTargetPath() == "" || !filepath.IsAbs(req.GetTargetPath()):
		return fmt.Errorf("an absolute target path is required: %w", errdefs.ErrInvalidArgument)
	case req.GetVolumeCapability() == nil:
		return fmt.Errorf("volume capability is required: %w", errdefs.ErrInvalidArgument)
	}
	if err := checkCapabilities([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
		return err
	}
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
	block := req.GetVolumeCapability().GetBlock() != nil
	target := req.GetTargetPath()
	source := s.StagingPath
	if block {
		source = s.Mapping.Device
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return fmt.Errorf("create target dir: %w", err)
		}
		f, err := os.OpenFile(target, os.O_CREATE, 0o640)
		if err != nil {
			return fmt.Errorf("create target file: %w", err)
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return fmt.Errorf("create target dir: %w", err)
	}
	if notMnt, err := n.mounter.IsLikelyNotMountPoint(target); err == nil && !notMnt {
		return nil // published already
	}
	// A bind mount by syscall: no mount(8) process per publish.
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s at %s: %w", source, target, err)
	}
	if req.GetReadonly() {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return fmt.Errorf("make %s read-only: %w", target, err)
		}
	}
	return nil
}

// NodeUnpublishVolume implements csi.NodeServer.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	return &csi.NodeUnpublishVolumeResponse{}, toStatus(d.nodeUnpublish(req))
}

func (d *Driver) nodeUnpublish(req *csi.NodeUnpublishVolumeRequest) error {
	if req.GetVolumeId() == "" || req.GetTargetPath() == "" {
		return fmt.Errorf("volume ID and target path are required: %w", errdefs.ErrInvalidArgument)
	}
	if err := mount.CleanupMountPoint(req.GetTargetPath(), d.node.mounter, true); err != nil {
		return fmt.Errorf("unmount %s: %w", req.GetTargetPath(), err)
	}
	return nil
}

// NodeGetVolumeStats implements csi.NodeServer.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	resp, err := nodeVolumeStats(req)
	return resp, toStatus(err)
}

func nodeVolumeStats(req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" || req.GetVolumePath() == "" {
		return nil, fmt.Errorf("volume ID and volume path are required: %w", errdefs.ErrInvalidArgument)
	}
	st, err := os.Stat(req.GetVolumePath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("volume path %s: %w", req.GetVolumePath(), errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		f, err := os.Open(req.GetVolumePath())
		if err != nil {
			return nil, err
		}
		defer f.Close()
		size, err := f.Seek(0, io.SeekEnd) // a block device's size
		if err != nil {
			return nil, fmt.Errorf("size of %s: %w", req.GetVolumePath(), err)
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(req.GetVolumePath(), &sfs); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", req.GetVolumePath(), err)
	}
	bs := int64(sfs.Bsize)
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(sfs.Blocks) * bs, Available: int64(sfs.Bavail) * bs, Used: int64(sfs.Blocks-sfs.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(sfs.Files), Available: int64(sfs.Ffree), Used: int64(sfs.Files - sfs.Ffree)},
	}}, nil
}

// NodeExpandVolume implements csi.NodeServer: make the mapped device show
// the image's new size, then grow the filesystem (online).
func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	resp, err := d.nodeExpand(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) nodeExpand(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetVolumePath() == "" {
		return nil, fmt.Errorf("volume ID and volume path are required: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := os.Stat(req.GetVolumePath()); err != nil {
		return nil, fmt.Errorf("volume path %s: %w", req.GetVolumePath(), errdefs.ErrNotFound)
	}
	s, ok, err := d.node.load(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("volume %s is not staged on this node: %w", req.GetVolumeId(), errdefs.ErrNotFound)
	}
	want := uint64(req.GetCapacityRange().GetRequiredBytes())
	size, err := mapper.WaitForSize(ctx, s.Mapping, want, "losetup")
	if err != nil {
		return nil, err
	}
	block := s.Block || req.GetVolumeCapability().GetBlock() != nil
	if !block {
		if _, err := mount.NewResizeFs(utilexec.New()).Resize(s.Mapping.Device, req.GetVolumePath()); err != nil {
			return nil, fmt.Errorf("grow the filesystem on %s: %w", s.Mapping.Device, err)
		}
	}
	d.log.Info("volume expanded on the node", "id", req.GetVolumeId(), "bytes", size)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: int64(size)}, nil
}
