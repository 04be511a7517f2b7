package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nodeinfra/nodeinfra/csi-ceph/cephfs"
	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// A CephFS volume ID is a VolumeID whose pool ID is the file system's ID
// (fscid) and whose UUID names the subvolume csi-vol-<uuid> in the
// cluster's subvolume group; a snapshot ID adds the snapshot's UUID
// (csi-snap-<uuid>).

func fsVolumeID(clusterID string, fs cephfs.FS, subvol string) (VolumeID, error) {
	uuid, _ := cephfs.SubvolumeUUID(subvol)
	id := VolumeID{ClusterID: clusterID, PoolID: fs.ID, UUID: uuid}
	if err := id.Validate(); err != nil {
		return id, fmt.Errorf("subvolume %s does not make a volume ID: %w", subvol, err)
	}
	return id, nil
}

func (v VolumeID) subvolume() string { return cephfs.SubvolumeName(v.UUID) }

func (s SnapshotID) fsSnap() string { return cephfs.SnapName(s.SnapUUID) }

// ControllerGetCapabilities implements csi.ControllerServer.
func (d *FSDriver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// fsRef is a connection (release it when done) and the file system and
// subvolume group of a volume ID.
type fsRef struct {
	c       *cephfs.Conn
	release func()
	id      VolumeID
	fs      cephfs.FS
	group   string
}

// volumeRef resolves a volume ID: NotFound when it is not ours or its
// file system is gone.
func (d *FSDriver) volumeRef(ctx context.Context, volumeID string, secrets map[string]string) (fsRef, error) {
	id, err := ParseVolumeID(volumeID)
	if err != nil {
		return fsRef{}, err
	}
	creds, err := credsFrom(secrets)
	if err != nil {
		return fsRef{}, err
	}
	c, release, err := d.conn(ctx, id.ClusterID, creds)
	if err != nil {
		return fsRef{}, err
	}
	fs, err := c.FSByID(id.PoolID)
	if err != nil {
		release()
		return fsRef{}, err
	}
	return fsRef{c: c, release: release, id: id, fs: fs, group: d.group(id.ClusterID)}, nil
}

// CreateVolume implements csi.ControllerServer. The quota is the
// requested size rounded up to whole 4 MiB (cephfs.RoundSize). A volume
// from a snapshot or a volume is a Ceph clone, copied in the background:
// the call waits for it up to --clone-wait, then answers Aborted, and the
// CO's retry returns the volume once Ceph has copied it.
//
// The PVC and PV names the provisioner passes (--extra-create-metadata)
// are accepted but not stored: subvolume metadata (`fs subvolume metadata
// set`) came after Pacific, and go-ceph builds it only without the
// pacific tag.
func (d *FSDriver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	resp, err := d.createVolume(ctx, req)
	return resp, toStatus(err)
}

func (d *FSDriver) createVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, fmt.Errorf("volume name is required: %w", errdefs.ErrInvalidArgument)
	}
	if err := checkFSCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	size, err := sizeFrom(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	size = cephfs.RoundSize(size)
	if lim := req.GetCapacityRange().GetLimitBytes(); lim > 0 && size > uint64(lim) {
		return nil, fmt.Errorf("%d bytes rounded up to whole 4 MiB exceed the limit %d: %w", size, lim, errdefs.ErrOutOfRange)
	}
	params, err := parseFSParams(req.GetParameters())
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
	fs, err := c.FSByName(params.FSName)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil, fmt.Errorf("file system %q does not exist in cluster %q: %w", params.FSName, params.ClusterID, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, err
	}
	if params.Pool != "" && !slices.Contains(fs.DataPools, params.Pool) {
		return nil, fmt.Errorf("pool %q is not a data pool of file system %s (it has %v): %w", params.Pool, fs.Name, fs.DataPools, errdefs.ErrInvalidArgument)
	}
	group := d.group(params.ClusterID)
	spec := cephfs.VolumeSpec{FS: fs, Group: group, Name: req.GetName(), SizeBytes: size, Pool: params.Pool}
	if src := req.GetVolumeContentSource(); src != nil {
		if req.GetCapacityRange().GetRequiredBytes() == 0 {
			spec.SizeBytes = 0 // the source's
		}
		if err := d.sourceOf(c, params.ClusterID, fs, group, src, &spec); err != nil {
			return nil, err
		}
	}
	op := metrics.OpCreate
	if spec.FromSnapshot != nil || spec.FromVolume != "" {
		op = metrics.OpClone
	}
	done := timeOp(d.obs, op)
	vol, created, err := c.CreateVolume(ctx, spec)
	// A small clone is done in a second or two: wait for it a little
	// (--clone-wait) rather than send the CO into its back-off.
	for deadline := time.Now().Add(d.cfg.CloneWait); errors.Is(err, cephfs.ErrCloneInProgress) && time.Now().Before(deadline); {
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond):
		}
		vol, created, err = c.CreateVolume(ctx, spec)
	}
	if !errors.Is(err, cephfs.ErrCloneInProgress) { // a clone still copied is not over: the CO asks again
		done(err)
	}
	if err != nil {
		return nil, err
	}
	id, err := fsVolumeID(params.ClusterID, fs, vol.Subvolume)
	if err != nil {
		return nil, err
	}
	if created {
		logChange(ctx, "volume created", "volumeID", id.String(), "subvolume", vol.Subvolume, "bytes", vol.SizeBytes)
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{
		VolumeId: id.String(), CapacityBytes: int64(vol.SizeBytes), VolumeContext: params.volumeContext(vol.Subvolume, vol.Path),
		ContentSource: req.GetVolumeContentSource(),
	}}, nil
}

// sourceOf fills in spec's source: a snapshot or a volume of the same
// file system (NotFound if it does not exist).
func (d *FSDriver) sourceOf(c *cephfs.Conn, clusterID string, fs cephfs.FS, group string, src *csi.VolumeContentSource, spec *cephfs.VolumeSpec) error {
	switch {
	case src.GetSnapshot() != nil:
		sid, err := ParseSnapshotID(src.GetSnapshot().GetSnapshotId())
		if err != nil {
			return fmt.Errorf("source snapshot: %w", err)
		}
		if sid.ClusterID != clusterID || sid.PoolID != fs.ID {
			return fmt.Errorf("source snapshot %s is not of file system %s: %w", sid, fs.Name, errdefs.ErrInvalidArgument)
		}
		if _, err := c.GetSnapshot(fs, group, sid.subvolume(), sid.fsSnap()); err != nil {
			return fmt.Errorf("source snapshot: %w", err)
		}
		spec.FromSnapshot = &cephfs.SnapshotRef{Subvolume: sid.subvolume(), Snap: sid.fsSnap()}
	case src.GetVolume() != nil:
		vid, err := ParseVolumeID(src.GetVolume().GetVolumeId())
		if err != nil {
			return fmt.Errorf("source volume: %w", err)
		}
		if vid.ClusterID != clusterID || vid.PoolID != fs.ID {
			return fmt.Errorf("source volume %s is not of file system %s: %w", vid, fs.Name, errdefs.ErrInvalidArgument)
		}
		if _, err := c.GetVolume(fs.Name, group, vid.subvolume()); err != nil {
			return fmt.Errorf("source volume: %w", err)
		}
		spec.FromVolume = vid.subvolume()
	default:
		return fmt.Errorf("volume content source is neither a snapshot nor a volume: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// DeleteVolume implements csi.ControllerServer. A volume with snapshots
// goes with its snapshots retained (cephfs.Conn.DeleteVolume). A volume
// that does not exist, or an ID that is not ours, is already deleted.
func (d *FSDriver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	return &csi.DeleteVolumeResponse{}, toStatus(d.deleteVolume(ctx, req))
}

func (d *FSDriver) deleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) error {
	if req.GetVolumeId() == "" {
		return fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	}
	id, err := ParseVolumeID(req.GetVolumeId())
	if err != nil {
		return nil
	}
	if _, err := d.clusters.Get(id.ClusterID); err != nil {
		return nil
	}
	unlock, err := d.locks.tryLock(req.GetVolumeId())
	if err != nil {
		return err
	}
	defer unlock()
	r, err := d.volumeRef(ctx, req.GetVolumeId(), req.GetSecrets())
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer r.release()
	done := timeOp(d.obs, metrics.OpDelete)
	err = r.c.DeleteVolume(ctx, r.fs, r.group, id.subvolume())
	done(err)
	if err != nil {
		return err
	}
	logChange(ctx, "volume deleted")
	return nil
}

// ValidateVolumeCapabilities implements csi.ControllerServer.
func (d *FSDriver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	resp, err := d.validateVolumeCapabilities(ctx, req)
	return resp, toStatus(err)
}

func (d *FSDriver) validateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, fmt.Errorf("volume ID is required: %w", errdefs.ErrInvalidArgument)
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, fmt.Errorf("volume capabilities are required: %w", errdefs.ErrInvalidArgument)
	}
	r, err := d.volumeRef(ctx, req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer r.release()
	if _, err := r.c.GetVolume(r.fs.Name, r.group, r.id.subvolume()); err != nil {
		return nil, err
	}
	if err := checkFSCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

// ControllerExpandVolume implements csi.ControllerServer: raise the quota
// (rounded as at create), online; the node has nothing to do.
func (d *FSDriver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	resp, err := d.controllerExpand(ctx, req)
	return resp, toStatus(err)
}

func (d *FSDriver) controllerExpand(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
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
	size = cephfs.RoundSize(size)
	unlock, err := d.locks.tryLock(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := d.volumeRef(ctx, req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer r.release()
	done := timeOp(d.obs, metrics.OpResize)
	got, err := r.c.ExpandVolume(ctx, r.fs.Name, r.group, r.id.subvolume(), size)
	done(err)
	if err != nil {
		return nil, err
	}
	logChange(ctx, "volume expanded", "bytes", got)
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: int64(got), NodeExpansionRequired: false}, nil
}

// CreateSnapshot implements csi.ControllerServer: a subvolume snapshot,
// ready at once.
func (d *FSDriver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	resp, err := d.createSnapshot(ctx, req)
	return resp, toStatus(err)
}

func (d *FSDriver) createSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" {
		return nil, fmt.Errorf("snapshot name is required: %w", errdefs.ErrInvalidArgument)
	}
	if req.GetSourceVolumeId() == "" {
		return nil, fmt.Errorf("source volume ID is required: %w", errdefs.ErrInvalidArgument)
	}
	unlock, err := d.locks.tryLock("snapname/" + req.GetName())
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := d.volumeRef(ctx, req.GetSourceVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer r.release()
	done := timeOp(d.obs, metrics.OpSnapshot)
	s, created, err := r.c.CreateSnapshot(ctx, r.fs, r.group, req.GetName(), r.id.subvolume())
	done(err)
	if err != nil {
		return nil, err
	}
	uuid, _ := cephfs.SnapUUID(s.Snap)
	sid := SnapshotID{VolumeID: r.id, SnapUUID: uuid}
	if !isUUID(uuid) {
		return nil, fmt.Errorf("snapshot %s does not make a snapshot ID", s.Snap)
	}
	if created {
		logChange(ctx, "snapshot created", "snapshotID", sid.String())
	}
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{
		SnapshotId: sid.String(), SourceVolumeId: r.id.String(), SizeBytes: int64(s.SizeBytes),
		CreationTime: timestamppb.New(s.CreatedAt), ReadyToUse: true,
	}}, nil
}

// DeleteSnapshot implements csi.ControllerServer: FailedPrecondition
// while clones are made from it; a snapshot that does not exist, or an
// ID that is not ours, is already deleted.
func (d *FSDriver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	return &csi.DeleteSnapshotResponse{}, toStatus(d.deleteSnapshot(ctx, req))
}

func (d *FSDriver) deleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) error {
	if req.GetSnapshotId() == "" {
		return fmt.Errorf("snapshot ID is required: %w", errdefs.ErrInvalidArgument)
	}
	sid, err := ParseSnapshotID(req.GetSnapshotId())
	if err != nil {
		return nil
	}
	if _, err := d.clusters.Get(sid.ClusterID); err != nil {
		return nil
	}
	unlock, err := d.locks.tryLock(req.GetSnapshotId())
	if err != nil {
		return err
	}
	defer unlock()
	r, err := d.volumeRef(ctx, sid.VolumeID.String(), req.GetSecrets())
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer r.release()
	done := timeOp(d.obs, metrics.OpDeleteSnapshot)
	err = r.c.DeleteSnapshot(ctx, r.fs, r.group, sid.subvolume(), sid.fsSnap())
	done(err)
	if err != nil {
		return err
	}
	logChange(ctx, "snapshot deleted")
	return nil
}
