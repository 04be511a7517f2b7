// Package cephfs is csi-ceph's CephFS side: subvolumes in a subvolume
// group, their snapshots and clones, through the mgr's volumes module
// (go-ceph's cephfs/admin), and the omap journal that makes a create by
// request name idempotent (journal.go). It knows no gRPC: errors wrap the
// pkg/errdefs sentinels, which the CSI layer converts once.
package cephfs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/cephfs"
	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"

	"github.com/nodeinfra/nodeinfra/csi-ceph/rbd"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// DefaultGroup is the subvolume group volumes go in when the cluster
// config names none (ceph-csi's default too).
const DefaultGroup = "csi"

// Conn is a session with a cluster: librados (shared with package rbd's
// connection code) and the volumes module's admin commands over it.
type Conn struct {
	rc  *rbd.Conn
	fsa *admin.FSAdmin

	mu     sync.Mutex
	groups map[string]bool // "fs/group" made (or found) by this session
	// fss are the file systems as last listed, at fssAt: a file
	// system's ID and pools do not change, and listing them takes two
	// monitor commands, so a create looks them up at most once a minute
	// (or when one is missing).
	fss   []FS
	fssAt time.Time

	clients fsClients // libcephfs clients that list subvolume dirs
}

// fsCacheTTL is how long a listing of the file systems is used.
const fsCacheTTL = time.Minute

// Connect opens a session as creds; Close ends it.
func Connect(ctx context.Context, monitors []string, creds rbd.Credentials) (*Conn, error) {
	rc, err := rbd.Connect(ctx, monitors, creds)
	if err != nil {
		return nil, err
	}
	c := &Conn{rc: rc, fsa: admin.NewFromConn(rc.Rados()), groups: map[string]bool{}}
	c.clients.mounts, c.clients.failed = map[string]*cephfs.MountInfo{}, map[string]time.Time{}
	return c, nil
}

// Close ends the session.
func (c *Conn) Close() {
	c.closeFSClients()
	c.rc.Close()
}

// FS is a CephFS file system.
type FS struct {
	Name string
	// ID is the file system's ID (fscid): volume IDs carry it, as it
	// stays when the file system is renamed.
	ID           int64
	MetadataPool string
	DataPools    []string
}

// FSByName finds a file system by name (NotFound if there is none).
func (c *Conn) FSByName(name string) (FS, error) {
	return c.findFS(func(f FS) bool { return f.Name == name }, fmt.Sprintf("file system %q", name))
}

// FSByID finds a file system by ID (NotFound if there is none).
func (c *Conn) FSByID(id int64) (FS, error) {
	return c.findFS(func(f FS) bool { return f.ID == id }, fmt.Sprintf("file system %d", id))
}

func (c *Conn) findFS(match func(FS) bool, what string) (FS, error) {
	c.mu.Lock()
	cached, fresh := c.fss, time.Since(c.fssAt) < fsCacheTTL
	c.mu.Unlock()
	if fresh {
		for _, f := range cached {
			if match(f) {
				return f, nil
			}
		}
	}
	all, err := c.listFS()
	if err != nil {
		return FS{}, err
	}
	for _, f := range all {
		if match(f) {
			return f, nil
		}
	}
	return FS{}, fmt.Errorf("%s: %w", what, errdefs.ErrNotFound)
}

// listFS lists the file systems and caches the list.
func (c *Conn) listFS() ([]FS, error) {
	idents, err := c.fsa.EnumerateVolumes()
	if err != nil {
		return nil, fmt.Errorf("list file systems: %w", err)
	}
	infos, err := c.fsa.ListFileSystems()
	if err != nil {
		return nil, fmt.Errorf("list file systems: %w", err)
	}
	var all []FS
	for _, id := range idents {
		f := FS{Name: id.Name, ID: id.ID}
		for _, in := range infos {
			if in.Name == id.Name {
				f.MetadataPool, f.DataPools = in.MetadataPool, in.DataPools
			}
		}
		all = append(all, f)
	}
	c.mu.Lock()
	c.fss, c.fssAt = all, time.Now()
	c.mu.Unlock()
	return all, nil
}

// ensureGroup creates the subvolume group on first use (creating an
// existing group is no error); a session remembers the groups it made.
func (c *Conn) ensureGroup(fs, group string) error {
	key := fs + "/" + group
	c.mu.Lock()
	done := c.groups[key]
	c.mu.Unlock()
	if done {
		return nil
	}
	if err := c.fsa.CreateSubVolumeGroup(fs, group, nil); err != nil {
		return fmt.Errorf("create subvolume group %s/%s: %w", fs, group, classify(err))
	}
	c.mu.Lock()
	c.groups[key] = true
	c.mu.Unlock()
	return nil
}

// journal opens the journal of group in the metadata pool of fs.
func (c *Conn) journal(fs FS, group string) (*journal, error) {
	r := c.rc.Rados()
	if r == nil {
		return nil, errors.New("open journal: ceph connection is closed")
	}
	io, err := r.OpenIOContext(fs.MetadataPool)
	if err != nil {
		return nil, fmt.Errorf("open metadata pool %s: %w", fs.MetadataPool, err)
	}
	return &journal{io: io, object: journalPrefix + group}, nil
}

// errno is the (negative) errno of a Ceph error, 0 if it has none.
func errno(err error) int {
	var ce interface{ ErrorCode() int }
	if errors.As(err, &ce) {
		return ce.ErrorCode()
	}
	if errors.Is(err, rados.ErrNotFound) {
		return -int(syscall.ENOENT)
	}
	return 0
}

// classify adds the errdefs kind of a Ceph error: a missing thing is
// NotFound, a busy one (EAGAIN, EBUSY) Aborted (retry later).
func classify(err error) error {
	if err == nil {
		return nil
	}
	switch -errno(err) {
	case int(syscall.ENOENT):
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	case int(syscall.EAGAIN), int(syscall.EBUSY):
		return fmt.Errorf("%w: %w", err, errdefs.ErrAborted)
	}
	return err
}

func isErrno(err error, e syscall.Errno) bool { return errno(err) == -int(e) }
