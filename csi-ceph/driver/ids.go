package driver

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
)

// idVersion is the first field of every ID, so the format can change.
const idVersion = "1"

// maxIDLen is the CSI limit on volume and snapshot IDs.
const maxIDLen = 128

// MaxClusterIDLen keeps a snapshot ID within maxIDLen (ceph-csi has the
// same limit: a UUID's length).
const MaxClusterIDLen = 36

// VolumeID names an RBD image: cluster, pool (by ID, to keep IDs short
// and stable across pool renames) and the image's UUID. The form is
//
//	1-<len(cluster) as 2 hex>-<cluster>-<pool ID as 16 hex>-<32 hex uuid>
//
// like ceph-csi's, so a cluster ID may contain '-'.
type VolumeID struct {
	ClusterID string
	PoolID    int64
	UUID      string
}

// SnapshotID adds the snapshot's UUID to the volume it was taken of.
type SnapshotID struct {
	VolumeID
	SnapUUID string
}

func (v VolumeID) String() string {
	return fmt.Sprintf("%s-%02x-%s-%016x-%s", idVersion, len(v.ClusterID), v.ClusterID, v.PoolID, v.UUID)
}

func (s SnapshotID) String() string { return s.VolumeID.String() + "-" + s.SnapUUID }

// volumeIDOf is the ID of image, a volume of the pool with poolID; it
// does not validate when image was not named by rbd.ImageName.
func volumeIDOf(clusterID string, poolID int64, image string) VolumeID {
	uuid, _ := rbd.ImageUUID(image)
	return VolumeID{ClusterID: clusterID, PoolID: poolID, UUID: uuid}
}

// snapshotIDOf is the ID of the RBD snapshot snap of the volume v; its
// SnapUUID is empty when snap was not named by rbd.SnapName.
func snapshotIDOf(v VolumeID, snap string) SnapshotID {
	uuid, _ := rbd.SnapUUID(snap)
	return SnapshotID{VolumeID: v, SnapUUID: uuid}
}

// image is the name of the RBD image that v names.
func (v VolumeID) image() string { return rbd.ImageName(v.UUID) }

// snap is the name of the RBD snapshot that s names.
func (s SnapshotID) snap() string { return rbd.SnapName(s.SnapUUID) }

// Validate checks the parts of an ID before it is encoded.
func (v VolumeID) Validate() error {
	if v.ClusterID == "" || len(v.ClusterID) > MaxClusterIDLen {
		return fmt.Errorf("cluster ID %q: 1 to %d characters: %w", v.ClusterID, MaxClusterIDLen, ErrMalformedID)
	}
	if v.PoolID < 0 {
		return fmt.Errorf("pool ID %d: %w", v.PoolID, ErrMalformedID)
	}
	if !isUUID(v.UUID) {
		return fmt.Errorf("image UUID %q: want 32 hex digits: %w", v.UUID, ErrMalformedID)
	}
	return nil
}

func isUUID(s string) bool { return len(s) == 32 && isLowerHex(s) }

// isLowerHex reports whether s is lower-case hex digits only: IDs have
// one spelling.
func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return s != ""
}

// ParseVolumeID decodes a volume ID; anything else is ErrMalformedID.
func ParseVolumeID(s string) (VolumeID, error) {
	v, rest, err := parseVolume(s)
	if err != nil {
		return VolumeID{}, err
	}
	if rest != "" {
		return VolumeID{}, fmt.Errorf("volume ID %q has trailing data: %w", s, ErrMalformedID)
	}
	return v, nil
}

// ParseSnapshotID decodes a snapshot ID.
func ParseSnapshotID(s string) (SnapshotID, error) {
	v, rest, err := parseVolume(s)
	if err != nil {
		return SnapshotID{}, err
	}
	snap, ok := strings.CutPrefix(rest, "-")
	if !ok || !isUUID(snap) {
		return SnapshotID{}, fmt.Errorf("snapshot ID %q: %w", s, ErrMalformedID)
	}
	return SnapshotID{VolumeID: v, SnapUUID: snap}, nil
}

func parseVolume(s string) (VolumeID, string, error) {
	bad := func(why string) (VolumeID, string, error) {
		return VolumeID{}, "", fmt.Errorf("ID %q: %s: %w", s, why, ErrMalformedID)
	}
	if len(s) > maxIDLen {
		return bad("longer than 128 bytes")
	}
	rest, ok := strings.CutPrefix(s, idVersion+"-")
	if !ok {
		return bad("unknown version")
	}
	if len(rest) < 3 || rest[2] != '-' {
		return bad("no cluster length")
	}
	n, err := strconv.ParseUint(rest[:2], 16, 8)
	if err != nil || n == 0 || !isLowerHex(rest[:2]) {
		return bad("bad cluster length")
	}
	rest = rest[3:]
	if uint64(len(rest)) < n+1 || rest[n] != '-' {
		return bad("cluster ID cut short")
	}
	v := VolumeID{ClusterID: rest[:n]}
	rest = rest[n+1:]
	if len(rest) < 16+1+32 || rest[16] != '-' {
		return bad("pool or image part cut short")
	}
	pool, err := strconv.ParseUint(rest[:16], 16, 63)
	if err != nil || !isLowerHex(rest[:16]) {
		return bad("bad pool ID")
	}
	v.PoolID = int64(pool)
	v.UUID = rest[17 : 17+32]
	if err := v.Validate(); err != nil {
		return VolumeID{}, "", fmt.Errorf("ID %q: %w", s, err)
	}
	return v, rest[17+32:], nil
}
