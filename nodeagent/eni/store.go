package eni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const stateVersion = 1

// snapshot is the on-disk form of the inventory.
type snapshot struct {
	Version     int          `json:"version"`
	ENIs        []Config     `json:"enis"`
	Missing     []string     `json:"missing,omitempty"`
	Assignments []Assignment `json:"assignments"`
	Attachments []Attachment `json:"attachments"`
}

// Store keeps the snapshot in one file, replaced atomically on every save.
type Store struct {
	path string
}

// NewStore returns a store for dir/enis.json, creating dir if needed.
func NewStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	return &Store{path: filepath.Join(dir, "enis.json")}, nil
}

// Path is the state file's path.
func (s *Store) Path() string { return s.path }

func (s *Store) load() (snapshot, error) {
	var snap snapshot
	b, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return snapshot{Version: stateVersion}, nil
	}
	if err != nil {
		return snap, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, &snap); err != nil {
		return snap, fmt.Errorf("decode state %s: %w", s.path, err)
	}
	if snap.Version != stateVersion {
		return snap, fmt.Errorf("state %s has version %d, want %d", s.path, snap.Version, stateVersion)
	}
	return snap, nil
}

// save writes the snapshot to a temporary file and renames it over the
// old one: a crash of the agent leaves either the old or the new state,
// never a torn one. With durable set it also syncs the file and the
// directory, so that the change survives a crash of the machine too. The
// control plane's data (ENIs, assignments) is saved durably; attachments
// alone are not, since a machine crash ends every pod namespace and the
// reconcile at start ends their attachments anyway.
func (s *Store) save(snap snapshot, durable bool) error {
	snap.Version = stateVersion
	b, err := json.Marshal(snap)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	dir := filepath.Dir(s.path)
	f, err := os.CreateTemp(dir, ".enis-*.json")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if durable {
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("sync state: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("replace state: %w", err)
	}
	if !durable {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	return nil
}
