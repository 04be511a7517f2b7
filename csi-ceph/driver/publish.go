package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// NodePublishVolume implements csi.NodeServer: bind-mount the staged
// filesystem, or the mapped device for a block volume, at the target;
// only from a record whose device still maps the volume, and after
// healing a broken staging.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	return &csi.NodePublishVolumeResponse{}, toStatus(d.nodePublish(ctx, req))
}

func (d *Driver) nodePublish(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
	if err := checkPublish(req, checkCapabilities); err != nil {
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
	h, err := n.inspect(ctx, s)
	if err != nil {
		return err
	}
	switch h.state {
	case stale:
		// Never publish a device the record merely names.
		d.conds.set(req.GetVolumeId(), true)
		return fmt.Errorf("the volume's staging record is stale (%s): stage it again: %w", h.reason, errdefs.ErrFailedPrecondition)
	case broken:
		if s, err = n.heal(ctx, s, h); err != nil {
			d.conds.set(req.GetVolumeId(), true)
			return fmt.Errorf("the volume's staging is broken (%s) and healing it failed: %v: %w", h.reason, err, errdefs.ErrUnavailable)
		}
	}
	d.conds.set(req.GetVolumeId(), false)
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
	if _, mounted, err := mounts.At(target); err != nil {
		return err
	} else if mounted {
		if same, err := sameFile(target, s.Mapping.Device, block); err == nil && same {
			return nil // published already
		}
		// A bind of an earlier mapping (healed since): bind the current one.
		if err := mounts.Unmount(target); err != nil {
			return err
		}
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
	logChange(ctx, "volume published", "target", target, "readOnly", req.GetReadonly())
	return nil
}

// NodeUnpublishVolume implements csi.NodeServer.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	return &csi.NodeUnpublishVolumeResponse{}, toStatus(unpublish(ctx, req))
}

// unpublish removes a publish target's mount and the target (both
// drivers).
func unpublish(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) error {
	if req.GetVolumeId() == "" || req.GetTargetPath() == "" {
		return fmt.Errorf("volume ID and target path are required: %w", errdefs.ErrInvalidArgument)
	}
	_, published, _ := mounts.At(req.GetTargetPath()) // the mount table only: no I/O to the mount
	if err := mounts.Cleanup(req.GetTargetPath()); err != nil {
		return fmt.Errorf("unpublish %s: %w", req.GetTargetPath(), err)
	}
	if published {
		logChange(ctx, "volume unpublished", "target", req.GetTargetPath())
	}
	return nil
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
	h, err := d.node.inspect(ctx, s)
	if err != nil {
		return nil, err
	}
	d.conds.set(req.GetVolumeId(), h.state != healthy)
	if h.state != healthy {
		return nil, fmt.Errorf("the volume's staging is %s (%s): %w", h.state, h.reason, errdefs.ErrFailedPrecondition)
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
	logChange(ctx, "volume expanded on the node", "bytes", size)
	return &csi.NodeExpandVolumeResponse{CapacityBytes: int64(size)}, nil
}
