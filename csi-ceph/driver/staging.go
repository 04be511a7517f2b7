package driver

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/pkg/atomicfile"
)

// The node's state dir holds, per staged volume (named by a hash of its
// volume ID, which may hold any character):
//
//	staged/<hash>.json   the staging record
//	maps/<hash>/         the mapper's work dir (key, rbd-fuse mount)

// recordVersion is the version of the records this driver writes. Version
// 0 (no "version" field) were written before a record named its image and
// boot: they are stale, and released only by what the mapper finds
// mapping the volume's image.
const recordVersion = 2

// staged is the record of a staged volume, kept in the state dir so that
// unstage can release the mapping after a restart, or when the mount is
// already gone. It names what it staged (cluster, pool, image name and
// ID, mapper, device) and the boot it was staged in: a device name is
// trusted only while the device still maps that image in this boot
// (health.go). It is replaced atomically and fsynced: after a crash it is
// either the old record or the new one. It is written before the map
// (without a device) and again after it, so that a crash in between
// leaves a record whose image the next stage or unstage can find.
type staged struct {
	Version     int    `json:"version,omitempty"`
	VolumeID    string `json:"volumeID"`
	StagingPath string `json:"stagingPath"`
	Block       bool   `json:"block"`
	ClusterID   string `json:"clusterID,omitempty"`
	// BootID is /proc/sys/kernel/random/boot_id when it was staged.
	BootID string `json:"bootID,omitempty"`
	// How the filesystem was mounted, to mount it again when healing.
	FsType     string         `json:"fsType,omitempty"`
	MountFlags []string       `json:"mountFlags,omitempty"`
	ReadOnly   bool           `json:"readOnly,omitempty"`
	Mapping    mapper.Mapping `json:"mapping"`
}

func stateName(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return hex.EncodeToString(sum[:16])
}

func (n *node) recordPath(volumeID string) string {
	return filepath.Join(n.stateDir, "staged", stateName(volumeID)+".json")
}

func (n *node) workDir(volumeID string) string {
	return filepath.Join(n.stateDir, "maps", stateName(volumeID))
}

// load reads the record of volumeID; found is false when there is none.
// A record of an earlier version gets what its volume ID tells about its
// image (pool ID and image name), so that its mapping can be found.
func (n *node) load(volumeID string) (s staged, found bool, err error) {
	b, err := os.ReadFile(n.recordPath(volumeID))
	if errors.Is(err, fs.ErrNotExist) {
		return staged{}, false, nil
	}
	if err != nil {
		return staged{}, false, fmt.Errorf("read staging record: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return staged{}, false, fmt.Errorf("decode staging record: %w", err)
	}
	if s.Version < recordVersion {
		if id, err := ParseVolumeID(s.VolumeID); err == nil && s.Mapping.Image == "" {
			s.Mapping.PoolID, s.Mapping.Image = id.PoolID, id.image()
		}
		if s.Mapping.Dir == "" && s.Mapping.Mapper == mapper.Fuse {
			s.Mapping.Dir = n.workDir(volumeID)
		}
	}
	return s, true, nil
}

// save writes the record of s.VolumeID, replacing any earlier one.
func (n *node) save(s staged) error {
	p := n.recordPath(s.VolumeID)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("write staging record: %w", err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode staging record: %w", err)
	}
	if err := atomicfile.Write(p, b, 0o600); err != nil {
		return fmt.Errorf("write staging record: %w", err)
	}
	return nil
}

// remove deletes the record of volumeID; a missing record is not an error.
func (n *node) remove(volumeID string) error {
	if err := os.Remove(n.recordPath(volumeID)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove staging record: %w", err)
	}
	return nil
}
