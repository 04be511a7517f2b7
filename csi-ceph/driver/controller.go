package driver

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
)

const (
	defaultSize = 1 << 30 // 1 GiB when the request gives no size
	maxSize     = 1 << 50 // 1 PiB
)

// ControllerGetCapabilities implements csi.ControllerServer.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// checkCapabilities accepts what an RBD image can serve: any single-node
// mode; multi-node modes only as raw block (a filesystem on one image
// cannot be shared); ext4 or xfs.
func checkCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return fmt.Errorf("volume capabilities are required: %w", errdefs.ErrInvalidArgument)
	}
	for _, c := range caps {
		if c == nil || c.GetAccessMode() == nil {
			return fmt.Errorf("a volume capability lacks an access mode: %w", errdefs.ErrInvalidArgument)
		}
		block := c.GetBlock() != nil
		if !block && c.GetMount() == nil {
			return fmt.Errorf("a volume capability must be block or mount: %w", errdefs.ErrInvalidArgument)
		}
		switch m := c.GetAccessMode().GetMode(); m {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
			csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		case csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER:
			if !block {
				return fmt.Errorf("access mode %v needs a block volume: a filesystem on an RBD image cannot be shared between nodes: %w", m, errdefs.ErrInvalidArgument)
			}
		default:
			return fmt.Errorf("access mode %v is not supported: %w", m, errdefs.ErrInvalidArgument)
		}
		if mnt := c.GetMount(); mnt != nil {
			if err := checkFsType(mnt.GetFsType()); err != nil {
				return err
			}
		}
	}
	return nil
}

func sizeFrom(r *csi.CapacityRange) (uint64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, fmt.Errorf("negative capacity: %w", errdefs.ErrInvalidArgument)
	}
	size := uint64(req)
	if size == 0 {
		size = defaultSize
		if lim > 0 && uint64(lim) < size {
			size = uint64(lim)
		}
	}
	if lim > 0 && size > uint64(lim) {
		return 0, fmt.Errorf("required %d bytes exceed the limit %d: %w", req, lim, errdefs.ErrOutOfRange)
	}
	if size > maxSize {
		return 0, fmt.Errorf("%d bytes is more than the %d an image may have here: %w", size, uint64(maxSize), errdefs.ErrOutOfRange)
	}
	return size, nil
}

// CreateVolume implements csi.ControllerServer.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	resp, err := d.createVolume(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) createVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, fmt.Errorf("volume name is required: %w", errdefs.ErrInvalidArgument)
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	size, err := sizeFrom(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	params, err := parseParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	creds, err := credsFrom(req.GetSecrets())
	if err != nil {
		return nil, err
	}
	unlock, err := d.locks.tryLock("name/" + req.GetName())
	if err != nil {
		return nil, err
	}
	defer unlock()
	c, release, err := d.conn(ctx, params.ClusterID, creds)
	if err != nil {
		return nil, err
	}
	defer release()
	poolID, err := c.PoolID(params.Pool)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("pool %q does not exist in cluster %q: %w", params.Pool, params.ClusterID, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, err
	}
	if params.DataPool != "" {
		if _, err := c.PoolID(params.DataPool); errors.Is(err, errdefs.ErrNotFound) {
			return nil, fmt.Errorf("data pool %q does not exist in cluster %q: %w", params.DataPool, params.ClusterID, errdefs.ErrInvalidArgument)
		} else if err != nil {
			return nil, err
		}
	}
	spec := rbd.VolumeSpec{Name: req.GetName(), Pool: params.Pool, SizeBytes: size, Features: params.Features, DataPool: params.DataPool}
	var vol rbd.Volume
	var created bool
	if src := req.GetVolumeContentSource(); src != nil {
		if req.GetCapacityRange().GetRequiredBytes() == 0 {
			spec.SizeBytes = 0 // the source's size
		}
		vol, created, err = d.createFromSource(ctx, c, params.ClusterID, spec, src)
	} else {
		done := timeOp(d.obs, metrics.OpCreate)
		vol, created, err = c.CreateVolume(ctx, spec)
		done(err)
	}
	if err != nil {
		return nil, err
	}
	id := volumeIDOf(params.ClusterID, poolID, vol.Image)
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("image %s does not make a volume ID: %w", vol.Image, err)
	}
	if created {
		logChange(ctx, "volume created", "volumeID", id.String(), "pool", vol.Pool, "image", vol.Image, "bytes", vol.SizeBytes)
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId: id.String(), CapacityBytes: int64(vol.SizeBytes), VolumeContext: params.volumeContext(vol.Image),
		ContentSource: req.GetVolumeContentSource(),
	}}, nil
}

// DeleteVolume implements csi.ControllerServer. A volume that does not
// exist, or an ID that is not ours, is already deleted.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	return &csi.DeleteVolumeResponse{}, toStatus(d.deleteVolume(ctx, req))
}

func (d *Driver) deleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) error {
	if req.GetVolumeId() == "" {
		return fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	}
	id, err := ParseVolumeID(req.GetVolumeId())
	if err != nil {
		logging.From(ctx).Info("delete of a volume ID that is not ours: nothing to do")
		return nil
	}
	if _, err := d.clusters.Get(id.ClusterID); err != nil {
		logging.From(ctx).Info("delete of a volume of an unknown cluster: nothing to do")
		return nil
	}
	creds, err := credsFrom(req.GetSecrets())
	if err != nil {
		return err
	}
	unlock, err := d.locks.tryLock(req.GetVolumeId())
	if err != nil {
		return err
	}
	defer unlock()
	c, release, err := d.conn(ctx, id.ClusterID, creds)
	if err != nil {
		return err
	}
	defer release()
	pool, err := c.PoolName(id.PoolID)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	done := timeOp(d.obs, metrics.OpDelete)
	err = c.DeleteVolume(ctx, pool, id.image())
	done(err)
	if err != nil {
		return err
	}
	logChange(ctx, "volume deleted")
	return nil
}

// lookupVolume finds an existing volume by ID (NotFound otherwise).
func (d *Driver) lookupVolume(ctx context.Context, volumeID string, secrets map[string]string) (rbd.Volume, error) {
	id, err := ParseVolumeID(volumeID)
	if err != nil {
		return rbd.Volume{}, err
	}
	c, release, err := d.connFor(ctx, id.ClusterID, secrets)
	if err != nil {
		return rbd.Volume{}, err
	}
	defer release()
	pool, err := c.PoolName(id.PoolID)
	if err != nil {
		return rbd.Volume{}, err
	}
	return c.GetVolume(ctx, pool, id.image())
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
// Capabilities the volume cannot serve are a response with a message, not
// an error.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	resp, err := d.validateVolumeCapabilities(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) validateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, fmt.Errorf("volume capabilities are required: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := d.lookupVolume(ctx, req.GetVolumeId(), req.GetSecrets()); err != nil {
		return nil, err
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

// ListVolumes implements csi.ControllerServer: the journaled volumes of
// every pool of every configured cluster, ordered by volume ID. The token
// is the ID to resume at, so it stays valid when that volume is deleted
// in the meantime.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	resp, err := d.listVolumes(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) listVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, fmt.Errorf("max_entries must not be negative: %w", errdefs.ErrInvalidArgument)
	}
	if t := req.GetStartingToken(); t != "" {
		if _, err := ParseVolumeID(t); err != nil {
			return nil, fmt.Errorf("starting token %q is not one of ours: %w", t, errdefs.ErrAborted)
		}
	}
	var all []*csi.ListVolumesResponse_Entry
	err := d.eachPool(ctx, nil, func(clusterID string, c *rbd.Conn, pool string, poolID int64) error {
		vols, err := c.ListVolumes(ctx, pool)
		if err != nil {
			return err
		}
		for _, v := range vols {
			id := volumeIDOf(clusterID, poolID, v.Image)
			if id.Validate() == nil {
				all = append(all, &csi.ListVolumesResponse_Entry{Volume: &csi.Volume{VolumeId: id.String(), CapacityBytes: int64(v.SizeBytes)}})
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	entries, next := page(all, func(e *csi.ListVolumesResponse_Entry) string { return e.Volume.VolumeId }, req.GetStartingToken(), req.GetMaxEntries())
	return &csi.ListVolumesResponse{Entries: entries, NextToken: next}, nil
}

// GetCapacity implements csi.ControllerServer: what can still be written
// to the pool of the parameters.
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	resp, err := d.getCapacity(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) getCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if len(req.GetVolumeCapabilities()) > 0 {
		if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
			return &csi.GetCapacityResponse{}, nil // none of it fits such volumes
		}
	}
	params := req.GetParameters()
	if len(params) == 0 {
		// No pool named: the sum of the clusters' free space is no
		// promise, so report none rather than a number that misleads.
		return &csi.GetCapacityResponse{}, nil
	}
	p, err := parseParams(params)
	if err != nil {
		return nil, err
	}
	c, release, err := d.connNoSecrets(ctx, p.ClusterID)
	if err != nil {
		return nil, err
	}
	defer release()
	st, err := c.PoolStats(ctx, p.Pool)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("pool %q does not exist in cluster %q: %w", p.Pool, p.ClusterID, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, err
	}
	return &csi.GetCapacityResponse{AvailableCapacity: int64(st.AvailableBytes), MaximumVolumeSize: wrapperspb.Int64(maxSize)}, nil
}

// ControllerExpandVolume implements csi.ControllerServer: grow the image
// (never shrink); a filesystem volume then needs the node to grow it.
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	resp, err := d.controllerExpand(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) controllerExpand(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	}
	if req.GetCapacityRange() == nil {
		return nil, fmt.Errorf("capacity range is required: %w", errdefs.ErrInvalidArgument)
	}
	size, err := sizeFrom(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	unlock, err := d.locks.tryLock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	c, release, id, pool, err := d.volumeRef(ctx, req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer release()
	done := timeOp(d.obs, metrics.OpResize)
	got, err := c.ExpandVolume(ctx, pool, id.image(), size)
	done(err)
	if err != nil {
		return nil, err
	}
	logChange(ctx, "volume expanded", "bytes", got)
	block := req.GetVolumeCapability().GetBlock() != nil
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(got), NodeExpansionRequired: !block}, nil
}

// page orders entries by their ID, starts at the first ID at or after
// token and returns at most max of them (0: all) with the next token. A
// token stays valid when its own entry has gone in the meantime.
func page[T any](entries []T, id func(T) string, token string, max int32) ([]T, string) {
	sort.Slice(entries, func(i, j int) bool { return id(entries[i]) < id(entries[j]) })
	start := sort.Search(len(entries), func(i int) bool { return id(entries[i]) >= token })
	entries = entries[start:]
	if n := int(max); n > 0 && len(entries) > n {
		return entries[:n], id(entries[n])
	}
	return entries, ""
}

// eachPool calls fn for every pool of every configured cluster, connected
// with secrets when the call carries them, else with the secret-less
// credentials.
func (d *Driver) eachPool(ctx context.Context, secrets map[string]string, fn func(clusterID string, c *rbd.Conn, pool string, poolID int64) error) error {
	for clusterID := range d.clusters {
		if err := d.eachPoolOf(ctx, clusterID, secrets, fn); err != nil {
			return err
		}
	}
	return nil
}

func (d *Driver) eachPoolOf(ctx context.Context, clusterID string, secrets map[string]string, fn func(clusterID string, c *rbd.Conn, pool string, poolID int64) error) error {
	c, release, err := d.connFor(ctx, clusterID, secrets)
	if err != nil {
		return err
	}
	defer release()
	pools, err := c.Pools()
	if err != nil {
		return err
	}
	for _, pool := range pools {
		poolID, err := c.PoolID(pool)
		if err != nil {
			return err
		}
		if err := fn(clusterID, c, pool, poolID); err != nil {
			return err
		}
	}
	return nil
}
