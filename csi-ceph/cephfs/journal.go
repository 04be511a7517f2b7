package cephfs

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/ceph/go-ceph/rados"
)

// The journal is one omap object per subvolume group in the file
// system's metadata pool, nodeinfra.csi.cephfs.<group>, as RBD's journal
// is one per pool. It maps a request name to what was made for it, and
// back:
//
//	name/<request name>          JSON volumeRecord
//	subvol/<subvolume>           request name
//	snapname/<request name>      JSON snapshotRecord
//	snap/<subvolume>@<snapshot>  request name
//
// It is written before the subvolume, snapshot or clone is made (a crash
// in between leaves a reservation the retried create completes) and
// cleared after it is removed.
const journalPrefix = "nodeinfra.csi.cephfs."

const (
	volNameKey  = "name/"
	subvolKey   = "subvol/"
	snapNameKey = "snapname/"
	snapKey     = "snap/"
)

// Names of what the driver makes: csi-vol-<uuid> subvolumes, csi-snap-<uuid>
// snapshots, and csi-tmp-<clone> for the snapshot a clone from a volume
// is made from.
const (
	subvolPrefix  = "csi-vol-"
	snapPrefix    = "csi-snap-"
	tmpSnapPrefix = "csi-tmp-"
)

// SubvolumeName is the subvolume a volume UUID names.
func SubvolumeName(uuid string) string { return subvolPrefix + uuid }

// SubvolumeUUID is the UUID in a subvolume name made by SubvolumeName.
func SubvolumeUUID(subvol string) (string, bool) { return strings.CutPrefix(subvol, subvolPrefix) }

// SnapName is the snapshot a snapshot UUID names.
func SnapName(uuid string) string { return snapPrefix + uuid }

// SnapUUID is the UUID in a snapshot name made by SnapName.
func SnapUUID(snap string) (string, bool) { return strings.CutPrefix(snap, snapPrefix) }

func tmpSnapName(clone string) string { return tmpSnapPrefix + clone }

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// volumeRecord is what a volume's request asked for, to answer a repeated
// request and to tell a different one with the same name.
type volumeRecord struct {
	Subvolume string `json:"subvolume"`
	// RequestBytes is the size asked for (0: the source's).
	RequestBytes uint64 `json:"requestBytes"`
	Pool         string `json:"pool,omitempty"`
	// Source is "", "snapshot:<subvolume>@<snapshot>" or "volume:<subvolume>".
	Source string `json:"source,omitempty"`
}

// snapshotRecord is what a snapshot's request made.
type snapshotRecord struct {
	Subvolume string `json:"subvolume"`
	Snap      string `json:"snap"`
	// SizeBytes is the source's quota when the snapshot was taken: the
	// size of a volume restored from it.
	SizeBytes uint64 `json:"sizeBytes"`
}

type journal struct {
	io     *rados.IOContext
	object string
}

func (j *journal) close() { j.io.Destroy() }

func (j *journal) get(key string, v any) (bool, error) {
	vals, err := j.io.GetOmapValues(j.object, "", key, 2)
	if errors.Is(err, rados.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read journal: %w", err)
	}
	b, ok := vals[key]
	if !ok {
		return false, nil
	}
	if s, isStr := v.(*string); isStr {
		*s = string(b)
		return true, nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("journal entry %s: %w", key, err)
	}
	return true, nil
}

func (j *journal) set(kv map[string]any) error {
	m := map[string][]byte{}
	for k, v := range kv {
		if s, ok := v.(string); ok {
			m[k] = []byte(s)
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode journal entry: %w", err)
		}
		m[k] = b
	}
	if err := j.io.SetOmap(j.object, m); err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	return nil
}

func (j *journal) rm(keys ...string) error {
	if err := j.io.RmOmapKeys(j.object, keys); err != nil && !errors.Is(err, rados.ErrNotFound) {
		return fmt.Errorf("clear journal: %w", err)
	}
	return nil
}

func (j *journal) lookupVolume(name string) (volumeRecord, bool, error) {
	var r volumeRecord
	found, err := j.get(volNameKey+name, &r)
	return r, found, err
}

func (j *journal) reserveVolume(name string, r volumeRecord) error {
	return j.set(map[string]any{volNameKey + name: r, subvolKey + r.Subvolume: name})
}

// volumeName is the request name a subvolume was made for.
func (j *journal) volumeName(subvol string) (string, bool, error) {
	var name string
	found, err := j.get(subvolKey+subvol, &name)
	return name, found, err
}

func (j *journal) releaseVolume(subvol string) error {
	name, found, err := j.volumeName(subvol)
	if err != nil {
		return err
	}
	keys := []string{subvolKey + subvol}
	if found {
		keys = append(keys, volNameKey+name)
	}
	return j.rm(keys...)
}

func (j *journal) lookupSnapshot(name string) (snapshotRecord, bool, error) {
	var r snapshotRecord
	found, err := j.get(snapNameKey+name, &r)
	return r, found, err
}

func (j *journal) reserveSnapshot(name string, r snapshotRecord) error {
	return j.set(map[string]any{snapNameKey + name: r, snapKey + r.Subvolume + "@" + r.Snap: name})
}

// snapshotRecordOf finds the record of a snapshot by what it names.
func (j *journal) snapshotRecordOf(subvol, snap string) (snapshotRecord, bool, error) {
	var name string
	found, err := j.get(snapKey+subvol+"@"+snap, &name)
	if err != nil || !found {
		return snapshotRecord{}, false, err
	}
	return j.lookupSnapshot(name)
}

func (j *journal) releaseSnapshot(subvol, snap string) error {
	var name string
	found, err := j.get(snapKey+subvol+"@"+snap, &name)
	if err != nil {
		return err
	}
	keys := []string{snapKey + subvol + "@" + snap}
	if found {
		keys = append(keys, snapNameKey+name)
	}
	return j.rm(keys...)
}
