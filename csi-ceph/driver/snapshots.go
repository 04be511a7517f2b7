package driver

import (
	"context"
	"errors"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// volumeRef resolves a volume ID to its connection (release it when
// done), pool and image.
func (d *Driver) volumeRef(ctx context.Context, volumeID string, secrets map[string]string) (*rbd.Conn, func(), VolumeID, string, error) {
	id, err := ParseVolumeID(volumeID)
	if err != nil {
		return nil, nil, id, "", err
	}
	creds, err := credsFrom(secrets)
	if err != nil {
		return nil, nil, id, "", err
	}
	c, release, err := d.conn(ctx, id.ClusterID, creds)
	if err != nil {
		return nil, nil, id, "", err
	}
	pool, err := c.PoolName(id.PoolID)
	if err != nil {
		release()
		return nil, nil, id, "", err
	}
	return c, release, id, pool, nil
}

func snapshotToCSI(id SnapshotID, s rbd.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId: id.String(), SourceVolumeId: id.VolumeID.String(), SizeBytes: int64(s.SizeBytes),
		CreationTime: timestamppb.New(s.CreatedAt), ReadyToUse: s.ReadyToUse,
	}
}

// CreateSnapshot implements csi.ControllerServer.
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	resp, err := d.createSnapshot(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) createSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
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
	c, release, vid, pool, err := d.volumeRef(ctx, req.GetSourceVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer release()
	done := timeOp(d.obs, metrics.OpSnapshot)
	s, created, err := c.CreateSnapshot(ctx, rbd.SnapshotSpec{Name: req.GetName(), Pool: pool, SourceImage: vid.image()})
	done(err)
	if err != nil {
		return nil, err
	}
	sid := snapshotIDOf(vid, s.SnapName)
	if err := sid.Validate(); err != nil || !isUUID(sid.SnapUUID) {
		return nil, fmt.Errorf("snapshot %s does not make a snapshot ID", s.SnapName)
	}
	if created {
		logChange(ctx, "snapshot created", "snapshotID", sid.String())
	}
	return &csi.CreateSnapshotResponse{Snapshot: snapshotToCSI(sid, s)}, nil
}

// DeleteSnapshot implements csi.ControllerServer: a snapshot that does
// not exist, or an ID that is not ours, is already deleted.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	return &csi.DeleteSnapshotResponse{}, toStatus(d.deleteSnapshot(ctx, req))
}

func (d *Driver) deleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) error {
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
	c, release, vid, pool, err := d.volumeRef(ctx, sid.VolumeID.String(), req.GetSecrets())
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer release()
	done := timeOp(d.obs, metrics.OpDeleteSnapshot)
	err = c.DeleteSnapshot(ctx, pool, vid.image(), sid.snap())
	done(err)
	if err != nil {
		return err
	}
	logChange(ctx, "snapshot deleted")
	return nil
}

// ListSnapshots implements csi.ControllerServer, filtered by snapshot or
// source volume and paged by snapshot ID.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	resp, err := d.listSnapshots(ctx, req)
	return resp, toStatus(err)
}

func (d *Driver) listSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, fmt.Errorf("max_entries must not be negative: %w", errdefs.ErrInvalidArgument)
	}
	if t := req.GetStartingToken(); t != "" {
		if _, err := ParseSnapshotID(t); err != nil {
			return nil, fmt.Errorf("starting token %q is not one of ours: %w", t, errdefs.ErrAborted)
		}
	}
	if s := req.GetSnapshotId(); s != "" {
		if _, err := ParseSnapshotID(s); err != nil {
			return &csi.ListSnapshotsResponse{}, nil
		}
	}
	if v := req.GetSourceVolumeId(); v != "" {
		if _, err := ParseVolumeID(v); err != nil {
			return &csi.ListSnapshotsResponse{}, nil
		}
	}
	var all []*csi.ListSnapshotsResponse_Entry
	err := d.eachPool(ctx, req.GetSecrets(), func(clusterID string, c *rbd.Conn, pool string, poolID int64) error {
		snaps, err := c.ListSnapshots(ctx, pool)
		if err != nil {
			return err
		}
		for _, s := range snaps {
			sid := snapshotIDOf(volumeIDOf(clusterID, poolID, s.SourceImage), s.SnapName)
			if sid.Validate() != nil || !isUUID(sid.SnapUUID) {
				continue
			}
			if req.GetSnapshotId() != "" && sid.String() != req.GetSnapshotId() {
				continue
			}
			if req.GetSourceVolumeId() != "" && sid.VolumeID.String() != req.GetSourceVolumeId() {
				continue
			}
			all = append(all, &csi.ListSnapshotsResponse_Entry{Snapshot: snapshotToCSI(sid, s)})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	entries, next := page(all, func(e *csi.ListSnapshotsResponse_Entry) string { return e.Snapshot.SnapshotId }, req.GetStartingToken(), req.GetMaxEntries())
	return &csi.ListSnapshotsResponse{Entries: entries, NextToken: next}, nil
}

// createFromSource makes a volume from a snapshot or a volume.
func (d *Driver) createFromSource(ctx context.Context, c *rbd.Conn, clusterID string, spec rbd.VolumeSpec, src *csi.VolumeContentSource) (rbd.Volume, bool, error) {
	if s := src.GetSnapshot(); s != nil {
		sid, err := ParseSnapshotID(s.GetSnapshotId())
		if err != nil {
			return rbd.Volume{}, false, fmt.Errorf("source snapshot %q: %w", s.GetSnapshotId(), errdefs.ErrNotFound)
		}
		if sid.ClusterID != clusterID {
			return rbd.Volume{}, false, fmt.Errorf("source snapshot is in cluster %q, not %q: %w", sid.ClusterID, clusterID, errdefs.ErrInvalidArgument)
		}
		pool, err := c.PoolName(sid.PoolID)
		if err != nil {
			return rbd.Volume{}, false, err
		}
		done := timeOp(d.obs, metrics.OpClone)
		vol, created, err := c.CreateVolumeFromSnapshot(ctx, spec, pool, sid.image(), sid.snap())
		done(err)
		return vol, created, err
	}
	if v := src.GetVolume(); v != nil {
		vid, err := ParseVolumeID(v.GetVolumeId())
		if err != nil {
			return rbd.Volume{}, false, fmt.Errorf("source volume %q: %w", v.GetVolumeId(), errdefs.ErrNotFound)
		}
		if vid.ClusterID != clusterID {
			return rbd.Volume{}, false, fmt.Errorf("source volume is in cluster %q, not %q: %w", vid.ClusterID, clusterID, errdefs.ErrInvalidArgument)
		}
		pool, err := c.PoolName(vid.PoolID)
		if err != nil {
			return rbd.Volume{}, false, err
		}
		done := timeOp(d.obs, metrics.OpClone)
		vol, created, err := c.CreateVolumeFromVolume(ctx, spec, pool, vid.image())
		done(err)
		return vol, created, err
	}
	return rbd.Volume{}, false, fmt.Errorf("unknown volume content source: %w", errdefs.ErrInvalidArgument)
}
