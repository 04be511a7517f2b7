package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
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

// staged is the record of a staged volume, kept in the state dir so that
// unstage can release the mapping after a restart, or when the mount is
// already gone.
type staged struct {
	VolumeID    string         `json:"volumeID"`
	StagingPath string         `json:"stagingPath"`
	Block       bool           `json:"block"`
	Mapping     mapper.Mapping `json:"mapping"`
}

func (n *node) recordPath(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(n.stateDir, "staged", hex.EncodeToString(sum[:16])+".json")
}

func (n *node) workDir(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(n.stateDir, "maps", hex.EncodeToString(sum[:16]))
}

func (n *node) load(volumeID string) (staged, bool, error) {
	b, err := os.ReadFile(n.recordPath(volumeID))
	if errors.Is(err, fs.ErrNotExist) {
		return staged{}, false, nil
	}
	if err != nil {
		return staged{}, false, fmt.Errorf("read staging record: %w", err)
	}
	var s staged
	if err := json.Unmarshal(b, &s); err != nil {
		return staged{}, false, fmt.Errorf("decode staging record: %w", err)
	}
	return s, true, nil
}

func (n *node) save(s staged) error {
	p := n.recordPath(s.VolumeID)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("write staging record: %w", err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write staging record: %w", err)
	}
	return os.Rename(tmp, p)
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
	if err := os.Remove(n.recordPath(s.VolumeID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove staging record: %w", err)
	}
	return nil
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
		return fmt.Errorf("volume ID is required: %w", errInvalid)
	case req.GetStagingTargetPath() == "" || !filepath.IsAbs(req.GetStagingTargetPath()):
		return fmt.Errorf("an absolute staging target path is required: %w", errInvalid)
	case req.GetVolumeCapability() == nil:
		return fmt.Errorf("volume capability is required: %w", errInvalid)
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
			return fmt.Errorf("volume is staged at %s already: %w", s.StagingPath, errPrecondition)
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
	vol := struct{ Pool, Image string }{pool, imagePrefix + id.UUID}
	which, err := n.host.Choose(req.GetVolumeContext()["mounter"])
	if err != nil {
		return fmt.Errorf("%v: %w", err, errPrecondition)
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
		return fmt.Errorf("volume ID is required: %w", errInvalid)
	}
	if req.GetStagingTargetPath() == "" {
		return fmt.Errorf("staging target path is required: %w", errInvalid)
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
		return fmt.Errorf("volume ID is required: %w", errInvalid)
	case req.GetStagingTargetPath() == "":
		return fmt.Errorf("staging target path is required: %w", errInvalid)
	case req.GetTargetPath() == "" || !filepath.IsAbs(req.GetTargetPath()):
		return fmt.Errorf("an absolute target path is required: %w", errInvalid)
	case req.GetVolumeCapability() == nil:
		return fmt.Errorf("volume capability is required: %w", errInvalid)
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
		return fmt.Errorf("volume is not staged on this node: %w", errNotFound)
	}
	if s.StagingPath != req.GetStagingTargetPath() {
		return fmt.Errorf("volume is staged at %s, not %s: %w", s.StagingPath, req.GetStagingTargetPath(), errPrecondition)
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
	if req.GetVolumeId() == "" || req.GetTargetPath() == "" {
		return nil, toStatus(fmt.Errorf("volume ID and target path are required: %w", errInvalid))
	}
	if err := mount.CleanupMountPoint(req.GetTargetPath(), d.node.mounter, true); err != nil {
		return nil, toStatus(fmt.Errorf("unmount %s: %w", req.GetTargetPath(), err))
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats implements csi.NodeServer.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	if req.GetVolumeId() == "" || req.GetVolumePath() == "" {
		return nil, toStatus(fmt.Errorf("volume ID and volume path are required: %w", errInvalid))
	}
	st, err := os.Stat(req.GetVolumePath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, toStatus(fmt.Errorf("volume path %s: %w", req.GetVolumePath(), errNotFound))
	}
	if err != nil {
		return nil, toStatus(err)
	}
	if !st.IsDir() {
		f, err := os.Open(req.GetVolumePath())
		if err != nil {
			return nil, toStatus(err)
		}
		defer f.Close()
		size, err := f.Seek(0, io.SeekEnd) // a block device's size
		if err != nil {
			return nil, toStatus(fmt.Errorf("size of %s: %w", req.GetVolumePath(), err))
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(req.GetVolumePath(), &sfs); err != nil {
		return nil, toStatus(fmt.Errorf("statfs %s: %w", req.GetVolumePath(), err))
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
		return nil, fmt.Errorf("volume ID and volume path are required: %w", errInvalid)
	}
	if _, err := os.Stat(req.GetVolumePath()); err != nil {
		return nil, fmt.Errorf("volume path %s: %w", req.GetVolumePath(), errNotFound)
	}
	s, ok, err := d.node.load(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("volume %s is not staged on this node: %w", req.GetVolumeId(), errNotFound)
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

// mkfsOptions are what a new filesystem on a thin RBD image gets: no
// discard of the fresh (already empty) image, lazy initialisation, and for
// ext4 4 KiB blocks whatever the size, so that small volumes can later grow
// online far beyond one group descriptor block (mke2fs's "small" profile
// uses 1 KiB blocks, and then the kernel refuses such online growth).
func mkfsOptions(fsType string) []string {
	switch fsType {
	case "ext4":
		return []string{"-b", "4096", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"}
	case "xfs":
		return []string{"-K"}
	}
	return nil
}

// formatAndMount mounts dev at target, making the filesystem first when
// the device is blank. A blank device (a new thin image reads as zeros) is
// recognised by reading its first 64 KiB, where every ext4 and xfs
// superblock lives, instead of running blkid; it is formatted and mounted
// directly. Anything else goes through mount-utils, which identifies the
// filesystem, checks it (fsck) and mounts it.
func (n *node) formatAndMount(dev, target, fsType string, opts []string, ro bool) error {
	blank, err := isBlank(dev)
	if err != nil {
		return err
	}
	if !blank || ro {
		return n.mounter.FormatAndMountSensitiveWithFormatOptions(dev, target, fsType, opts, nil, mkfsOptions(fsType))
	}
	args := mkfsOptions(fsType)
	if fsType == "xfs" {
		args = append(args, "-f", dev)
	} else {
		args = append(args, "-F", "-m0", dev)
	}
	if out, err := n.mounter.Exec.Command("mkfs."+fsType, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.%s %s: %w: %s", fsType, dev, err, out)
	}
	if len(opts) > 0 {
		return n.mounter.Mount(dev, target, fsType, opts)
	}
	if err := unix.Mount(dev, target, fsType, 0, ""); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	return nil
}

func isBlank(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF {
		return false, fmt.Errorf("read %s: %w", dev, err)
	}
	for _, b := range buf[:n] {
		if b != 0 {
			return false, nil
		}
	}
	return true, nil
}
