package driver

import (
	"fmt"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// checkStage checks the fields NodeStageVolume needs, for both drivers,
// then the capability with check (the RBD or the CephFS one).
func checkStage(req *csi.NodeStageVolumeRequest, check func([]*csi.VolumeCapability) error) error {
	switch {
	case req.GetVolumeId() == "":
		return fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	case req.GetStagingTargetPath() == "" || !filepath.IsAbs(req.GetStagingTargetPath()):
		return fmt.Errorf("an absolute staging target path is required: %w", errdefs.ErrInvalidArgument)
	case req.GetVolumeCapability() == nil:
		return fmt.Errorf("volume capability is required: %w", errdefs.ErrInvalidArgument)
	}
	return check([]*csi.VolumeCapability{req.GetVolumeCapability()})
}

// checkPublish is checkStage for NodePublishVolume.
func checkPublish(req *csi.NodePublishVolumeRequest, check func([]*csi.VolumeCapability) error) error {
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
	return check([]*csi.VolumeCapability{req.GetVolumeCapability()})
}
