package rbd

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/ceph/go-ceph/rados"
)

// The journal is the omap of one object in each pool. It maps CSI names to
// what they were given, both ways, so that a create call with a name seen
// before returns the same volume or snapshot, also after a controller
// restart:
//
//	name/<csi volume name>       -> <image>
//	image/<image>                -> <csi volume name>
//	snapname/<csi snapshot name> -> <image>@<snap>
//	snap/<image>@<snap>          -> <csi snapshot name>
//
// A name is reserved (both keys in one omap write) before its image or
// snapshot is made, so a crash in between leaves a name that the next call
// completes instead of a second image; it is released after the image or
// snapshot is gone. Entries whose image or snapshot was never made are left
// out of the lists.
const journalObject = "nodeinfra.csi.volumes"

const (
	volNameKey  = "name/"
	volImageKey = "image/"
	snapNameKey = "snapname/"
	snapKey     = "snap/"
)

// journal is the journal of the pool that io is open on.
type journal struct{ io *rados.IOContext }

// journalEntry is an entry found by prefix: the key without the prefix,
// and the value.
type journalEntry struct{ name, value string }

// get reads one key; a missing journal or key is not found, not an error.
func (j journal) get(key string) (string, bool, error) {
	vals, err := j.io.GetOmapValues(journalObject, "", key, 2)
	if errors.Is(err, rados.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read volume journal: %w", err)
	}
	v, ok := vals[key]
	return string(v), ok, nil
}

// list returns the entries whose key starts with prefix, sorted by name.
// A missing journal is an empty list.
func (j journal) list(prefix string) ([]journalEntry, error) {
	vals, err := j.io.GetAllOmapValues(journalObject, "", prefix, 256)
	if errors.Is(err, rados.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	out := make([]journalEntry, 0, len(vals))
	for k, v := range vals {
		out = append(out, journalEntry{name: strings.TrimPrefix(k, prefix), value: string(v)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// lookupVolume returns the image reserved for the CSI volume name.
func (j journal) lookupVolume(name string) (image string, found bool, err error) {
	return j.get(volNameKey + name)
}

// volumeName returns the CSI volume name that image was reserved for.
func (j journal) volumeName(image string) (name string, found bool, err error) {
	return j.get(volImageKey + image)
}

// reserveVolume maps the CSI volume name to image and back.
func (j journal) reserveVolume(name, image string) error {
	if err := j.io.SetOmap(journalObject, map[string][]byte{
		volNameKey + name: []byte(image), volImageKey + image: []byte(name),
	}); err != nil {
		return fmt.Errorf("write volume journal: %w", err)
	}
	return nil
}

// releaseVolume removes image's entries; entries that are gone are not an
// error.
func (j journal) releaseVolume(image string) error {
	name, found, err := j.volumeName(image)
	if err != nil {
		return err
	}
	keys := []string{volImageKey + image}
	if found {
		keys = append(keys, volNameKey+name)
	}
	if err := j.io.RmOmapKeys(journalObject, keys); err != nil && !errors.Is(err, rados.ErrNotFound) {
		return fmt.Errorf("clear volume journal: %w", err)
	}
	return nil
}

// volumes returns the reserved volumes, CSI name -> image, sorted by name.
func (j journal) volumes() ([]journalEntry, error) {
	return j.list(volNameKey)
}

// snapRef is how the journal names a snapshot: "<image>@<snap>".
func snapRef(image, snap string) string { return image + "@" + snap }

// splitSnapRef splits "<image>@<snap>".
func splitSnapRef(ref string) (image, snap string, ok bool) {
	image, snap, ok = strings.Cut(ref, "@")
	return image, snap, ok && image != "" && snap != ""
}

// lookupSnapshot returns the snapshot reserved for the CSI snapshot name.
func (j journal) lookupSnapshot(name string) (image, snap string, found bool, err error) {
	ref, found, err := j.get(snapNameKey + name)
	if err != nil || !found {
		return "", "", false, err
	}
	image, snap, ok := splitSnapRef(ref)
	if !ok {
		return "", "", false, fmt.Errorf("snapshot journal: bad entry %q for %q", ref, name)
	}
	return image, snap, true, nil
}

// snapshotName returns the CSI snapshot name that image@snap was reserved
// for.
func (j journal) snapshotName(image, snap string) (name string, found bool, err error) {
	return j.get(snapKey + snapRef(image, snap))
}

// reserveSnapshot maps the CSI snapshot name to image@snap and back.
func (j journal) reserveSnapshot(name, image, snap string) error {
	ref := snapRef(image, snap)
	if err := j.io.SetOmap(journalObject, map[string][]byte{
		snapNameKey + name: []byte(ref), snapKey + ref: []byte(name),
	}); err != nil {
		return fmt.Errorf("write snapshot journal: %w", err)
	}
	return nil
}

// releaseSnapshot removes the entries of image@snap; entries that are gone
// are not an error.
func (j journal) releaseSnapshot(image, snap string) error {
	name, found, err := j.snapshotName(image, snap)
	if err != nil {
		return err
	}
	ref := snapRef(image, snap)
	keys := []string{snapKey + ref}
	if found {
		keys = append(keys, snapNameKey+name)
	}
	if err := j.io.RmOmapKeys(journalObject, keys); err != nil && !errors.Is(err, rados.ErrNotFound) {
		return fmt.Errorf("clear snapshot journal: %w", err)
	}
	return nil
}

// journalSnapshot is a reserved snapshot.
type journalSnapshot struct{ name, image, snap string }

// snapshots returns the reserved snapshots, sorted by CSI name; malformed
// entries are skipped.
func (j journal) snapshots() ([]journalSnapshot, error) {
	entries, err := j.list(snapNameKey)
	if err != nil {
		return nil, err
	}
	var out []journalSnapshot
	for _, e := range entries {
		if image, snap, ok := splitSnapRef(e.value); ok {
			out = append(out, journalSnapshot{name: e.name, image: image, snap: snap})
		}
	}
	return out, nil
}
