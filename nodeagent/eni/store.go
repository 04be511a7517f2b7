package eni

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/nodeinfra/nodeinfra/pkg/atomicfile"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

const stateVersion = 1

// snapshot is the inventory as stored.
type snapshot struct {
	Version     int          `json:"version"`
	ENIs        []Config     `json:"enis"`
	Missing     []string     `json:"missing,omitempty"`
	Assignments []Assignment `json:"assignments"`
	// Attachments are stored one file each, not in the control file.
	Attachments []Attachment `json:"-"`
}

// Store keeps the inventory on disk in two parts:
//
//   - enis.json holds the control plane's data (ENIs, assignments, missing
//     ENIs). It is replaced atomically (temporary file, fsync, rename, fsync
//     of the directory) on every change, so it survives any crash.
//   - attachments/ holds one small file per attachment, created before the
//     agent answers an Attach, replaced (temporary file, rename) when the
//     ADD confirms it with its link's identity, and removed on Detach.
//     These are not synced:
//     they must survive the agent being killed (the page cache does), while
//     a crash of the machine ends every pod namespace, and the reconcile at
//     start ends their attachments anyway. This keeps the ADD path to two
//     small writes, without fsync.
type Store struct {
	dir string
	log *slog.Logger
}

// NewStore returns a store in dir, creating it if needed.
func NewStore(dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, "attachments"), 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	return &Store{dir: dir, log: slog.Default()}, nil
}

// Path is the control file's path.
func (s *Store) Path() string { return filepath.Join(s.dir, "enis.json") }

func (s *Store) attachmentPath(k AttachmentKey) string {
	// A hash keeps any container ID to a short, safe file name; the file
	// itself holds the key.
	sum := sha256.Sum256([]byte(k.ContainerID + "\x00" + k.IfName))
	return filepath.Join(s.dir, "attachments", hex.EncodeToString(sum[:])+".json")
}

func (s *Store) load() (snapshot, error) {
	snap := snapshot{Version: stateVersion}
	b, err := os.ReadFile(s.Path())
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return snap, fmt.Errorf("read state: %w", err)
	default:
		if err := json.Unmarshal(b, &snap); err != nil {
			return snap, fmt.Errorf("decode state %s: %w", s.Path(), err)
		}
		if snap.Version != stateVersion {
			return snap, fmt.Errorf("state %s has version %d, want %d", s.Path(), snap.Version, stateVersion)
		}
	}
	dir := filepath.Join(s.dir, "attachments")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return snap, fmt.Errorf("read attachments: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if !strings.HasSuffix(e.Name(), ".json") {
			_ = os.Remove(p) // a temporary file of an interrupted update
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return snap, fmt.Errorf("read attachment: %w", err)
		}
		var a Attachment
		if err := json.Unmarshal(b, &a); err != nil || a.ContainerID == "" || a.MAC == "" {
			// The agent died between creating the file and writing it, so it
			// never answered that Attach: the attachment never existed.
			s.log.Warn("dropping unreadable attachment file", "file", p, "error", err)
			_ = os.Remove(p)
			continue
		}
		snap.Attachments = append(snap.Attachments, a)
	}
	return snap, nil
}

// saveControl replaces enis.json durably.
func (s *Store) saveControl(snap snapshot) error {
	snap.Version = stateVersion
	b, err := json.MarshalIndent(snap, "", " ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	return atomicfile.Write(s.Path(), b, 0o600)
}

// putAttachment writes one attachment. A new one is a single write to a
// new file; a changed one goes to a temporary file renamed over the old
// (atomic if the agent dies, not synced: see Store).
func (s *Store) putAttachment(a Attachment, replace bool) error {
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode attachment: %w", err)
	}
	p := s.attachmentPath(a.AttachmentKey)
	target, flags := p, os.O_WRONLY|os.O_CREATE|os.O_EXCL
	if replace {
		// load removes a temporary file the agent died before renaming.
		p, flags = p+".tmp", os.O_WRONLY|os.O_CREATE|os.O_TRUNC
	}
	f, err := os.OpenFile(p, flags, 0o600)
	if err != nil {
		return fmt.Errorf("write attachment: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(p)
		return fmt.Errorf("write attachment: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(p)
		return fmt.Errorf("write attachment: %w", err)
	}
	if replace {
		if err := os.Rename(p, target); err != nil {
			os.Remove(p)
			return fmt.Errorf("replace attachment: %w", err)
		}
	}
	return nil
}

func (s *Store) deleteAttachment(k AttachmentKey) error {
	if err := os.Remove(s.attachmentPath(k)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove attachment: %w", err)
	}
	return nil
}
