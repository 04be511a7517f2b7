package mapper

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
)

// A mapping's work dir holds what its daemon needs to start again without
// the stage secrets, for as long as the mapping lives, readable by root
// only:
//
//	key          rbd-nbd: the cephx key alone (--keyfile)
//	keyring      rbd-fuse: a keyring for the user
//	ceph.conf    rbd-fuse: monitors, keyring and log file
//	rbd-fuse.log rbd-fuse's log
//	fuse/        rbd-fuse's mount: one file, the image
const (
	keyFile     = "key"
	keyringFile = "keyring"
	confFile    = "ceph.conf"
	fuseLog     = "rbd-fuse.log"
	fuseDir     = "fuse"
)

// writePrivate writes a file readable by root only.
func writePrivate(p string, b []byte) error {
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return err
	}
	return os.Chmod(p, 0o600) // WriteFile keeps an existing file's mode
}

// removeWorkDir removes a work dir once its mapping is released: first
// whatever is still mounted in it (a broken FUSE mount, lazily), then the
// files it is known to hold, then the directories. It never removes
// recursively through a mount: rbd-fuse deletes an image whose file is
// unlinked.
func removeWorkDir(dir string) error {
	if dir == "" {
		return nil
	}
	under, err := mounts.Under(dir)
	if err != nil {
		return err
	}
	for _, p := range under {
		if err := mounts.Unmount(p); err != nil {
			return err
		}
	}
	for _, f := range []string{keyFile, keyringFile, confFile, fuseLog} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", f, err)
		}
	}
	for _, d := range []string{filepath.Join(dir, fuseDir), dir} {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove work dir: %w", err)
		}
	}
	return nil
}

// keyringFor is a keyring holding user's key.
func keyringFor(user, key string) []byte {
	return []byte(fmt.Sprintf("[client.%s]\n\tkey = %s\n", user, key))
}

// confFor is a ceph.conf for a librados client of monitors that reads
// keyring and logs to logFile.
func confFor(monitors []string, keyring, logFile string) []byte {
	return []byte(fmt.Sprintf("[global]\nmon host = %s\nkeyring = %s\nlog file = %s\n", strings.Join(monitors, ","), keyring, logFile))
}
