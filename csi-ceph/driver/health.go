package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// What a staging record still holds. A record names a device, and a
// device name outlives its mapping: after a reboot (records live on the
// host's disk, mappings do not) or once a daemon died, it may hold
// another tenant's image. So before the driver reuses a record, publishes
// from it, or unmaps by it, it asks the mapper whether the device still
// maps the record's image (inspect):
//
//   - healthy: it does, and the filesystem is mounted from it at the
//     staging path;
//   - broken: the device is the volume's but does not serve it (its
//     daemon died), or the staging mount is gone or from another device:
//     healed (heal) by publish and stage, released by unstage;
//   - stale: the record is from an earlier boot or an earlier driver
//     version, or its device is gone or maps another image now: the
//     device is never touched on the volume's behalf; the record is
//     dropped and the volume mapped again.

type healthState int

const (
	healthy healthState = iota
	broken
	stale
)

func (s healthState) String() string {
	return [...]string{"healthy", "broken", "stale"}[s]
}

// health is a record's state and, unless healthy, why.
type health struct {
	state  healthState
	reason string
}

// checkTimeout bounds a mapper's check (rbd-nbd list-mapped, FUSE probes).
const checkTimeout = 10 * time.Second

// inspect tells what s still holds. An error means it could not tell.
func (n *node) inspect(ctx context.Context, s staged) (health, error) {
	switch {
	case s.Version < recordVersion || s.BootID == "":
		return health{stale, "the record was written by an earlier version of the driver"}, nil
	case s.BootID != n.bootID:
		return health{stale, fmt.Sprintf("the volume was staged before the node restarted (boot %s)", s.BootID)}, nil
	}
	mp, ok := n.mappers[s.Mapping.Mapper]
	if !ok {
		return health{stale, fmt.Sprintf("the record names unknown mapper %q", s.Mapping.Mapper)}, nil
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	err := mp.Check(cctx, s.Mapping)
	cancel()
	switch {
	case errors.Is(err, mapper.ErrStale):
		return health{stale, err.Error()}, nil
	case errors.Is(err, mapper.ErrBroken):
		return health{broken, err.Error()}, nil
	case err != nil:
		return health{}, fmt.Errorf("check the mapping of %s: %w", s.VolumeID, err)
	}
	if s.Block {
		return health{state: healthy}, nil
	}
	mt, mounted, err := mounts.At(s.StagingPath)
	if err != nil {
		return health{}, err
	}
	if !mounted {
		return health{broken, "the staging path is not mounted"}, nil
	}
	if rdev, err := deviceNumber(s.Mapping.Device); err != nil || mt.Dev() != rdev {
		return health{broken, fmt.Sprintf("the staging path is mounted from %d:%d, not from %s", mt.Major, mt.Minor, s.Mapping.Device)}, nil
	}
	return health{state: healthy}, nil
}

// deviceNumber is the device number of a device node (stat only: no I/O
// to the device).
func deviceNumber(dev string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", dev, err)
	}
	return st.Rdev, nil
}

// heal brings a broken staging back without the stage secrets: the mapper
// starts its daemon again from what its work dir keeps (rbd-nbd on the
// same device; rbd-fuse with a new loop device), and a filesystem volume
// is mounted again at the staging path when its device changed or its
// mount is gone. Pods that still use the old mount keep the broken
// filesystem until they restart; new publishes get the healed one.
func (n *node) heal(ctx context.Context, s staged, h health) (staged, error) {
	mp := n.mappers[s.Mapping.Mapper]
	switch err := mp.Check(ctx, s.Mapping); {
	case errors.Is(err, mapper.ErrBroken):
		hl, ok := mp.(mapper.Healer)
		if !ok {
			return s, fmt.Errorf("mapper %s cannot heal (%s): %w", s.Mapping.Mapper, h.reason, errdefs.ErrFailedPrecondition)
		}
		m, err := hl.Heal(ctx, s.Mapping)
		if err != nil {
			return s, err
		}
		s.Mapping = m
		if err := n.save(s); err != nil {
			return s, err
		}
	case err != nil:
		return s, err
	}
	if !s.Block {
		again, err := n.inspect(ctx, s)
		if err != nil {
			return s, err
		}
		if again.state != healthy {
			// Mounted from a dead device, or not at all: mount again.
			if err := mounts.Unmount(s.StagingPath); err != nil {
				return s, err
			}
			if err := n.mountStaging(s, nil); err != nil {
				return s, err
			}
		}
	}
	logChange(ctx, "staging healed", "was", h.reason, "device", s.Mapping.Device)
	return s, nil
}

// sameFile reports whether path (a publish target, or a staging path)
// shows device dev: a filesystem on it, or a bind mount of its node.
func sameFile(path, dev string, block bool) (bool, error) {
	var p, d unix.Stat_t
	if err := unix.Stat(dev, &d); err != nil {
		return false, fmt.Errorf("stat %s: %w", dev, err)
	}
	if block {
		if err := unix.Stat(path, &p); err != nil {
			return false, fmt.Errorf("stat %s: %w", path, err)
		}
		return p.Dev == d.Dev && p.Ino == d.Ino, nil
	}
	mt, ok, err := mounts.At(path)
	if err != nil || !ok {
		return false, err
	}
	return mt.Dev() == d.Rdev, nil
}

// NodeGetVolumeStats implements csi.NodeServer: usage, and the volume's
// condition for kubelets that read it here (VOLUME_CONDITION).
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	resp, err := d.nodeVolumeStats(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) nodeVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
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
	abnormal, msg := d.node.condition(ctx, req.GetVolumeId(), path)
	resp := &csi.NodeGetVolumeStatsResponse{}
	if probe != nil {
		abnormal, msg = true, fmt.Sprintf("the volume path does not answer: %v", probe)
	} else if usage, err := usageOf(path); err == nil {
		resp.Usage = usage
	} else if !abnormal {
		return nil, err
	}
	d.conds.set(req.GetVolumeId(), abnormal)
	setVolumeCondition(resp, abnormal, msg)
	return resp, nil
}

// condition tells whether the volume at path is abnormal, and why: its
// staging broken or stale, or path showing an earlier mapping of it.
func (n *node) condition(ctx context.Context, volumeID, path string) (abnormal bool, msg string) {
	s, found, err := n.load(volumeID)
	if err != nil {
		return true, err.Error()
	}
	if !found {
		return false, ""
	}
	h, err := n.inspect(ctx, s)
	switch {
	case err != nil:
		return true, err.Error()
	case h.state != healthy:
		return true, fmt.Sprintf("the volume's staging is %s: %s", h.state, h.reason)
	}
	if same, err := sameFile(path, s.Mapping.Device, s.Block); err == nil && !same && path != s.StagingPath {
		if _, mounted, _ := mounts.At(path); mounted || s.Block {
			return true, fmt.Sprintf("%s shows an earlier mapping of the volume (now %s): restart the pod", path, s.Mapping.Device)
		}
	}
	return false, ""
}

// usageOf is the usage of a filesystem volume (statfs) or the size of a
// block volume.
func usageOf(path string) ([]*csi.VolumeUsage, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		size, err := f.Seek(0, io.SeekEnd) // a block device's size
		if err != nil {
			return nil, fmt.Errorf("size of %s: %w", path, err)
		}
		return []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}, nil
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := int64(sfs.Bsize)
	return []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: int64(sfs.Blocks) * bs, Available: int64(sfs.Bavail) * bs, Used: int64(sfs.Blocks-sfs.Bfree) * bs},
		{Unit: csi.VolumeUsage_INODES, Total: int64(sfs.Files), Available: int64(sfs.Ffree), Used: int64(sfs.Files - sfs.Ffree)},
	}, nil
}

// nodeCapVolumeCondition is VOLUME_CONDITION, value 4 of the node
// capabilities up to CSI 1.12; CSI 1.13 reserved it for
// GET_VOLUME_HEALTH.
const nodeCapVolumeCondition = csi.NodeServiceCapability_RPC_Type(4)

// setVolumeCondition sets csi.v1.VolumeCondition{abnormal, message}, field
// 2 of NodeGetVolumeStatsResponse up to CSI 1.12, which kubelets built on
// those versions read for volume health. CSI 1.13's bindings no longer
// have the field, so it travels as an unknown field, which they keep and
// send.
func setVolumeCondition(resp *csi.NodeGetVolumeStatsResponse, abnormal bool, msg string) {
	var cond []byte
	if abnormal {
		cond = protowire.AppendTag(cond, 1, protowire.VarintType)
		cond = protowire.AppendVarint(cond, 1)
	}
	if msg != "" {
		cond = protowire.AppendTag(cond, 2, protowire.BytesType)
		cond = protowire.AppendString(cond, msg)
	}
	b := protowire.AppendTag(nil, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, cond)
	resp.ProtoReflect().SetUnknown(b)
}

// NodeGetVolumeHealth implements csi.NodeServer (GET_VOLUME_HEALTH).
func (d *Driver) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	resp, err := d.nodeVolumeHealth(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) nodeVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	}
	n := d.node
	s, found, err := n.load(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if !found {
		if _, err := ParseVolumeID(req.GetVolumeId()); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("volume is not staged on this node: %w", errdefs.ErrNotFound)
	}
	vh := &csi.VolumeHealth{VolumeId: req.GetVolumeId()}
	add := func(reason, msg string) {
		vh.HealthStatuses = append(vh.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: reason, Message: msg})
	}
	h, err := n.inspect(ctx, s)
	switch {
	case err != nil:
		add("CheckFailed", err.Error())
	case h.state == broken:
		add("StagingBroken", h.reason)
	case h.state == stale:
		add("StagingStale", h.reason)
	}
	if p := req.GetVolumePublishPath(); p != "" && err == nil && h.state == healthy {
		if abnormal, msg := n.condition(ctx, req.GetVolumeId(), p); abnormal {
			add("PublishedFromEarlierMapping", msg)
		}
	}
	d.conds.set(req.GetVolumeId(), len(vh.HealthStatuses) > 0)
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: vh}, nil
}
