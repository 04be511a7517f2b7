package driver

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// CephFS StorageClass parameters, by ceph-csi's names. The node's ones
// (mounter and the mount options) travel in the volume context with the
// subvolume's name and path.
const (
	paramFSName      = "fsName"
	paramKernelOpts  = "kernelMountOptions"
	paramFuseOpts    = "fuseMountOptions"
	ctxSubvolumeName = "subvolumeName"
	ctxSubvolumePath = "subvolumePath"
)

var ownFSParams = []string{paramClusterID, paramFSName, paramPool, paramMounter, paramKernelOpts, paramFuseOpts}

// fsParams are a CephFS StorageClass's parameters, validated.
type fsParams struct {
	ClusterID, FSName, Pool string
	// Mounter is "", kernel or fuse ("": what the node has, best first).
	Mounter              string
	KernelOpts, FuseOpts string
}

// parseFSParams validates a CephFS StorageClass's parameters; unknown
// ones are refused, all of them named.
func parseFSParams(p map[string]string) (fsParams, error) {
	var unknown []string
	for k := range p {
		if !slices.Contains(ownFSParams, k) && !csiParams[k] {
			unknown = append(unknown, fmt.Sprintf("%q", k))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fsParams{}, fmt.Errorf("unknown parameters %s (the CephFS driver takes %s): %w",
			strings.Join(unknown, ", "), strings.Join(ownFSParams, ", "), errdefs.ErrInvalidArgument)
	}
	v := fsParams{ClusterID: p[paramClusterID], FSName: p[paramFSName], Pool: p[paramPool], Mounter: p[paramMounter],
		KernelOpts: p[paramKernelOpts], FuseOpts: p[paramFuseOpts]}
	if v.ClusterID == "" || v.FSName == "" {
		return v, fmt.Errorf("parameters clusterID and fsName are required: %w", errdefs.ErrInvalidArgument)
	}
	if _, ok := p[paramPool]; ok && v.Pool == "" {
		return v, fmt.Errorf("parameter pool is empty: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := fsNodeParamsOf(v.Mounter, v.KernelOpts, v.FuseOpts); err != nil {
		return v, err
	}
	return v, nil
}

// volumeContext is what CreateVolume hands the node through the volume.
func (v fsParams) volumeContext(subvol, path string) map[string]string {
	vctx := map[string]string{paramClusterID: v.ClusterID, paramFSName: v.FSName, ctxSubvolumeName: subvol, ctxSubvolumePath: path}
	for k, val := range map[string]string{paramMounter: v.Mounter, paramKernelOpts: v.KernelOpts, paramFuseOpts: v.FuseOpts} {
		if val != "" {
			vctx[k] = val
		}
	}
	return vctx
}

// fsNodeParams are what NodeStageVolume takes from the volume context.
type fsNodeParams struct {
	Mounter              string
	KernelOpts, FuseOpts []string
}

func fsNodeParamsOf(mounter, kernelOpts, fuseOpts string) (fsNodeParams, error) {
	n := fsNodeParams{Mounter: mounter}
	switch mounter {
	case "", mapper.CephFSKernel, mapper.CephFSFuse:
	default:
		return n, fmt.Errorf("mounter %q: want %s or %s: %w", mounter, mapper.CephFSKernel, mapper.CephFSFuse, errdefs.ErrInvalidArgument)
	}
	var err error
	if n.KernelOpts, err = mapper.ParseFSMountOptions(kernelOpts); err != nil {
		return n, fmt.Errorf("%s: %v: %w", paramKernelOpts, err, errdefs.ErrInvalidArgument)
	}
	if n.FuseOpts, err = mapper.ParseFSMountOptions(fuseOpts); err != nil {
		return n, fmt.Errorf("%s: %v: %w", paramFuseOpts, err, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// checkFSCapabilities accepts what a CephFS subvolume can serve: a
// filesystem (mount access; any fsType is CephFS), shared by any number
// of writers on one node or on many, or read-only on many; or held by
// one publish only (SINGLE_NODE_SINGLE_WRITER).
func checkFSCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return fmt.Errorf("volume capabilities are required: %w", errdefs.ErrInvalidArgument)
	}
	for _, c := range caps {
		if c == nil || c.GetAccessMode() == nil {
			return fmt.Errorf("a volume capability lacks an access mode: %w", errdefs.ErrInvalidArgument)
		}
		if c.GetMount() == nil {
			return fmt.Errorf("a CephFS volume is a filesystem: block access is not supported: %w", errdefs.ErrInvalidArgument)
		}
		switch m := c.GetAccessMode().GetMode(); m {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
		default:
			return fmt.Errorf("access mode %v is not supported: %w", m, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}
