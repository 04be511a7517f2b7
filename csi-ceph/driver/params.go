package driver

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// StorageClass parameters, by ceph-csi's names so that its users' classes
// carry over. The node's ones (mounter, mapOptions, unmapOptions,
// mkfsOptions, the filesystem) travel in the volume context, which
// CreateVolume fills and NodeStageVolume reads.
const (
	paramClusterID    = "clusterID"
	paramPool         = "pool"
	paramDataPool     = "dataPool"
	paramFeatures     = "imageFeatures"
	paramMounter      = "mounter"
	paramMapOptions   = "mapOptions"
	paramUnmapOptions = "unmapOptions"
	paramMkfsOptions  = "mkfsOptions"
	paramFsType       = "csi.storage.k8s.io/fstype"
	// ctxFsType carries csi.storage.k8s.io/fstype in the volume context.
	ctxFsType = "fsType"
)

var ownParams = []string{paramClusterID, paramPool, paramDataPool, paramFeatures, paramMounter, paramMapOptions, paramUnmapOptions, paramMkfsOptions}

// csiParams are the csi.storage.k8s.io/ parameters that are not ours but
// may reach CreateVolume: the external-provisioner's metadata
// (--extra-create-metadata) and secret references, which it normally
// strips.
var csiParams = func() map[string]bool {
	m := map[string]bool{paramFsType: true, "csi.storage.k8s.io/pv/name": true,
		"csi.storage.k8s.io/pvc/name": true, "csi.storage.k8s.io/pvc/namespace": true}
	for _, p := range []string{"provisioner", "controller-publish", "node-stage", "node-publish", "controller-expand", "node-expand", "snapshotter"} {
		m["csi.storage.k8s.io/"+p+"-secret-name"] = true
		m["csi.storage.k8s.io/"+p+"-secret-namespace"] = true
	}
	return m
}()

// volumeParams are a StorageClass's parameters, validated.
type volumeParams struct {
	ClusterID, Pool, DataPool, Features string
	// node: the mapper, map and unmap options and mkfs options as given
	// (valid), and the filesystem.
	Mounter, MapOptions, UnmapOptions, MkfsOptions, FsType string
}

// parseParams validates a StorageClass's parameters; unknown ones are
// refused, all of them named.
func parseParams(p map[string]string) (volumeParams, error) {
	var unknown []string
	for k := range p {
		if !slices.Contains(ownParams, k) && !csiParams[k] {
			unknown = append(unknown, fmt.Sprintf("%q", k))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return volumeParams{}, fmt.Errorf("unknown parameters %s (csi-ceph takes %s and csi.storage.k8s.io/fstype): %w",
			strings.Join(unknown, ", "), strings.Join(ownParams, ", "), errdefs.ErrInvalidArgument)
	}
	v := volumeParams{ClusterID: p[paramClusterID], Pool: p[paramPool], DataPool: p[paramDataPool], Features: p[paramFeatures],
		Mounter: p[paramMounter], MapOptions: p[paramMapOptions], UnmapOptions: p[paramUnmapOptions],
		MkfsOptions: p[paramMkfsOptions], FsType: p[paramFsType]}
	if v.ClusterID == "" || v.Pool == "" {
		return v, fmt.Errorf("parameters clusterID and pool are required: %w", errdefs.ErrInvalidArgument)
	}
	if _, ok := p[paramDataPool]; ok && v.DataPool == "" {
		return v, fmt.Errorf("parameter dataPool is empty: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := rbd.ParseFeatures(v.Features); err != nil {
		return v, err
	}
	if _, err := parseNodeParams(v.Mounter, v.MapOptions, v.UnmapOptions, v.MkfsOptions, v.FsType); err != nil {
		return v, err
	}
	return v, nil
}

// volumeContext is what CreateVolume hands the node through the volume.
func (v volumeParams) volumeContext(image string) map[string]string {
	vctx := map[string]string{paramClusterID: v.ClusterID, paramPool: v.Pool, "imageName": image}
	for k, val := range map[string]string{paramMounter: v.Mounter, paramMapOptions: v.MapOptions,
		paramUnmapOptions: v.UnmapOptions, paramMkfsOptions: v.MkfsOptions, ctxFsType: v.FsType} {
		if val != "" {
			vctx[k] = val
		}
	}
	return vctx
}

// nodeParams are what NodeStageVolume takes from the volume context.
type nodeParams struct {
	Mounter string
	Map     mapper.MapOptions
	Unmap   mapper.MapOptions
	// Mkfs replaces the default mkfs options when set.
	Mkfs   []string
	FsType string
}

// stageParams reads a volume context (keys it does not know are the CO's
// and are left alone; a volume made before these keys existed has none).
func stageParams(vctx map[string]string) (nodeParams, error) {
	return parseNodeParams(vctx[paramMounter], vctx[paramMapOptions], vctx[paramUnmapOptions], vctx[paramMkfsOptions], vctx[ctxFsType])
}

func parseNodeParams(mounter, mapOpts, unmapOpts, mkfs, fsType string) (nodeParams, error) {
	n := nodeParams{Mounter: mounter, FsType: fsType}
	switch mounter {
	case "", mapper.KRBD, mapper.RBDNBD, mapper.Fuse:
	default:
		return n, fmt.Errorf("mounter %q: want %s, %s or %s: %w", mounter, mapper.KRBD, mapper.RBDNBD, mapper.Fuse, errdefs.ErrInvalidArgument)
	}
	var err error
	if n.Map, err = mapper.ParseMapOptions(mapOpts, false); err != nil {
		return n, err
	}
	if n.Unmap, err = mapper.ParseMapOptions(unmapOpts, true); err != nil {
		return n, err
	}
	if n.Mkfs, err = parseMkfsOptions(mkfs); err != nil {
		return n, err
	}
	if err := checkFsType(fsType); err != nil {
		return n, err
	}
	return n, nil
}

// checkFsType accepts the filesystems the node makes.
func checkFsType(fsType string) error {
	switch fsType {
	case "", "ext4", "xfs":
		return nil
	}
	return fmt.Errorf("fsType %q is not supported (ext4, xfs): %w", fsType, errdefs.ErrInvalidArgument)
}

// parseMkfsOptions splits mkfsOptions into arguments. They go before the
// device, to mkfs directly (no shell); an argument that looks like a path
// is refused, as mkfs would take the first such one for the device to
// format.
func parseMkfsOptions(s string) ([]string, error) {
	args := strings.Fields(s)
	for _, a := range args {
		if strings.ContainsAny(a, "/'\"\\") || strings.HasPrefix(a, ".") {
			return nil, fmt.Errorf("mkfsOptions %q: argument %q looks like a path or is quoted: %w", s, a, errdefs.ErrInvalidArgument)
		}
	}
	return args, nil
}
