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
//	maps/<hash>/         the mapper's work dir (rbd-fuse mount, keyring)

// staged is the record of a staged volume, kept in the state dir so that
// unstage can release the mapping after a restart, or when the mount is
// already gone. It is replaced atomically and fsynced: after a crash it
// is either the old record or the new one.
type staged struct {
	VolumeID    string         `json:"volumeID"`
	StagingPath string         `json:"stagingPath"`
	Block       bool           `json:"block"`
	Mapping     mapper.Mapping `json:"mapping"`
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
