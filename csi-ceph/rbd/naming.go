package rbd

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
)

// Names of what this package makes in Ceph. A volume's image is
// "csi-vol-<uuid>" and a snapshot "csi-snap-<uuid>", the uuid 32 random
// lower-case hex digits; the driver's volume and snapshot IDs carry the
// uuids, so the names follow from an ID without a journal lookup.
// CreateVolumeFromVolume's temporary snapshot of its source is named
// after the new image, "csi-tmp-<image>", so a retry finds it.
const (
	imagePrefix   = "csi-vol-"
	snapPrefix    = "csi-snap-"
	tmpSnapPrefix = "csi-tmp-"
)

// ImageName is the name of the image of the volume with uuid.
func ImageName(uuid string) string { return imagePrefix + uuid }

// ImageUUID returns the uuid in an image name made by ImageName; ok is
// false for any other name.
func ImageUUID(image string) (uuid string, ok bool) {
	uuid, ok = strings.CutPrefix(image, imagePrefix)
	if !ok {
		return "", false
	}
	return uuid, true
}

// SnapName is the name of the RBD snapshot with uuid.
func SnapName(uuid string) string { return snapPrefix + uuid }

// SnapUUID returns the uuid in a snapshot name made by SnapName; ok is
// false for any other name.
func SnapUUID(snap string) (uuid string, ok bool) {
	uuid, ok = strings.CutPrefix(snap, snapPrefix)
	if !ok {
		return "", false
	}
	return uuid, true
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newImageName() string { return ImageName(newUUID()) }

func newSnapName() string { return SnapName(newUUID()) }

// tmpSnapName is the temporary snapshot of a source volume taken to make
// the clone image.
func tmpSnapName(image string) string { return tmpSnapPrefix + image }
