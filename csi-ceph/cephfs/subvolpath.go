package cephfs

import (
	"path"
	"sync"
	"time"

	"github.com/ceph/go-ceph/cephfs"
)

// A subvolume's path ends in a directory the mgr names (a UUID), so it
// cannot be computed; asking the mgr (getpath) queues behind every other
// volumes command, which run one at a time. The directory is the only
// one in the subvolume's own, which a libcephfs client lists from the
// MDS in parallel with everything else (pathFromListing). fsClients keeps
// one such client per file system for the session; where it cannot
// mount (a user without MDS caps) the session asks the mgr instead.
type fsClients struct {
	mu     sync.Mutex
	mounts map[string]*cephfs.MountInfo
	failed map[string]time.Time // file systems that did not mount, and when
}

// fsClientRetry is how long after a failed mount the session asks the mgr
// before trying to mount again.
const fsClientRetry = time.Minute

// fsClient returns the session's client of fs, mounting it on first use; nil
// if it cannot mount (recently).
func (c *Conn) fsClient(fs string) *cephfs.MountInfo {
	m := &c.clients
	m.mu.Lock()
	defer m.mu.Unlock()
	if mi := m.mounts[fs]; mi != nil {
		return mi
	}
	if t, ok := m.failed[fs]; ok && time.Since(t) < fsClientRetry {
		return nil
	}
	r := c.rc.Rados()
	if r == nil {
		return nil
	}
	mi, err := cephfs.CreateFromRados(r)
	if err != nil {
		m.failed[fs] = time.Now()
		return nil
	}
	if err := mi.SelectFilesystem(fs); err == nil {
		err = mi.Mount()
	}
	if err != nil {
		_ = mi.Release()
		m.failed[fs] = time.Now()
		return nil
	}
	m.mounts[fs] = mi
	return mi
}

// closeFSClients unmounts the session's clients (before the librados
// connection they share goes).
func (c *Conn) closeFSClients() {
	m := &c.clients
	m.mu.Lock()
	defer m.mu.Unlock()
	for fs, mi := range m.mounts {
		_ = mi.Unmount()
		_ = mi.Release()
		delete(m.mounts, fs)
	}
}

// pathFromListing finds the path of a just-created subvolume by listing
// its directory: the mgr made one directory there (named by a UUID) next
// to its .meta file. Reading .meta itself would wait seconds for the
// mgr's client to give up its caps on the file it just wrote; listing
// the directory does not. ok is false when it cannot tell (no client,
// not exactly one such directory), and the caller asks the mgr.
func (c *Conn) pathFromListing(fs, group, sub string) (string, bool) {
	mi := c.fsClient(fs)
	if mi == nil {
		return "", false
	}
	dir := path.Join("/volumes", group, sub)
	d, err := mi.OpenDir(dir)
	if err != nil {
		return "", false
	}
	defer d.Close()
	var names []string
	for n := 0; n < maxEntries; n++ {
		e, err := d.ReadDir()
		if err != nil || e == nil {
			break
		}
		names = append(names, e.Name())
	}
	return pickSubvolumeDir(dir, names)
}

// maxEntries bounds the listing (a subvolume dir holds two entries).
const maxEntries = 64

// pickSubvolumeDir returns dir/<uuid> when names (a subvolume dir's
// listing) hold exactly one UUID-named entry besides ".", ".." and .meta.
func pickSubvolumeDir(dir string, names []string) (string, bool) {
	found := ""
	for _, n := range names {
		switch {
		case n == "." || n == ".." || n == ".meta":
		case isUUID(n) && found == "":
			found = n
		default:
			return "", false
		}
	}
	if found == "" {
		return "", false
	}
	return dir + "/" + found, true
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}
