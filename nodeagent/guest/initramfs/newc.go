// Package initramfs builds the sandbox guest's initramfs: an uncompressed
// newc cpio archive with the guest agent as /init and a static busybox.
package initramfs

import (
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// File types of Entry.Mode (the S_IF* bits).
const (
	TypeMask    = 0o170000
	TypeDir     = 0o040000
	TypeReg     = 0o100000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
	TypeBlock   = 0o060000
)

// Entry is one member of a newc archive.
type Entry struct {
	// Name is the path inside the archive, without a leading slash.
	Name string
	// Mode is the file type and permission bits (TypeReg|0o755).
	Mode uint32
	// Data is a regular file's content or a symlink's target.
	Data []byte
	// Major and Minor are a device node's numbers.
	Major, Minor uint32
}

// Dir is a directory entry.
func Dir(name string, perm uint32) Entry { return Entry{Name: name, Mode: TypeDir | perm&0o7777} }

// File is a regular file entry.
func File(name string, perm uint32, data []byte) Entry {
	return Entry{Name: name, Mode: TypeReg | perm&0o7777, Data: data}
}

// Symlink is a symbolic link entry pointing at target.
func Symlink(name, target string) Entry {
	return Entry{Name: name, Mode: TypeSymlink | 0o777, Data: []byte(target)}
}

// CharDev is a character device node entry.
func CharDev(name string, perm, major, minor uint32) Entry {
	return Entry{Name: name, Mode: TypeChar | perm&0o7777, Major: major, Minor: minor}
}

// Trailer is the name of the entry that ends a newc archive.
const Trailer = "TRAILER!!!"

// newcMagic starts every newc header ("new ASCII" format, no checksum).
const newcMagic = "070701"

// newcHeaderSize is the magic plus 13 eight-digit hex fields.
const newcHeaderSize = 6 + 13*8

// ErrBadEntry is returned for entries the archive cannot hold.
var ErrBadEntry = errors.New("bad initramfs entry")

// WriteNewc writes entries, then the trailer, as a newc cpio archive (the
// format the kernel unpacks into its initial rootfs). Directories must come
// before what they contain. Every entry gets its own inode number.
func WriteNewc(w io.Writer, entries []Entry) error {
	for i, e := range entries {
		if err := checkEntry(e); err != nil {
			return err
		}
		if err := writeEntry(w, uint32(i+1), e); err != nil {
			return fmt.Errorf("write %s: %w", e.Name, err)
		}
	}
	if err := writeEntry(w, 0, Entry{Name: Trailer}); err != nil {
		return fmt.Errorf("write trailer: %w", err)
	}
	return nil
}

func checkEntry(e Entry) error {
	if e.Name == "" || e.Name == Trailer || strings.HasPrefix(e.Name, "/") || path.Clean(e.Name) != e.Name ||
		strings.HasPrefix(e.Name, "../") || e.Name == ".." || strings.IndexByte(e.Name, 0) >= 0 {
		return fmt.Errorf("%w: name %q", ErrBadEntry, e.Name)
	}
	switch e.Mode & TypeMask {
	case TypeReg, TypeSymlink:
	case TypeDir, TypeChar, TypeBlock:
		if len(e.Data) > 0 {
			return fmt.Errorf("%w: %s: only files and symlinks have data", ErrBadEntry, e.Name)
		}
	default:
		return fmt.Errorf("%w: %s: unsupported mode %#o", ErrBadEntry, e.Name, e.Mode)
	}
	if uint64(len(e.Data)) > 0xFFFFFFFF {
		return fmt.Errorf("%w: %s: larger than 4 GiB", ErrBadEntry, e.Name)
	}
	return nil
}

func writeEntry(w io.Writer, ino uint32, e Entry) error {
	nlink := uint32(1)
	if e.Mode&TypeMask == TypeDir {
		nlink = 2
	}
	// ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
	// rdevminor namesize check
	hdr := fmt.Sprintf(newcMagic+"%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, e.Mode, 0, 0, nlink, 0, len(e.Data), 0, 0, e.Major, e.Minor, len(e.Name)+1, 0)
	b := make([]byte, 0, pad4(len(hdr)+len(e.Name)+1))
	b = append(b, hdr...)
	b = append(b, e.Name...)
	b = append(b, 0)
	b = b[:cap(b)]
	if _, err := w.Write(b); err != nil {
		return err
	}
	if len(e.Data) == 0 {
		return nil
	}
	if _, err := w.Write(e.Data); err != nil {
		return err
	}
	if n := pad4(len(e.Data)) - len(e.Data); n > 0 {
		_, err := w.Write(make([]byte, n))
		return err
	}
	return nil
}

// pad4 rounds n up to a multiple of 4 (newc aligns headers and data).
func pad4(n int) int { return (n + 3) &^ 3 }
