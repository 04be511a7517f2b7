package rbd

import "testing"

func TestJournalVolumeEntries(t *testing.T) {
	c, _ := connect(t)
	io, err := c.ioctx("rbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(io.Destroy) // after the cleanups below, which use io
	j := journal{io}
	name, image := uniqueName(t), newImageName()
	if err := j.reserveVolume(name, image); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.releaseVolume(image) })
	if got, found, err := j.lookupVolume(name); err != nil || !found || got != image {
		t.Fatalf("lookupVolume = %q, %v, %v; want %q", got, found, err, image)
	}
	if got, found, err := j.volumeName(image); err != nil || !found || got != name {
		t.Fatalf("volumeName = %q, %v, %v; want %q", got, found, err, name)
	}
	if !hasEntry(t, j, name, image) {
		t.Fatalf("volumes() misses %s -> %s", name, image)
	}
	for i := 0; i < 2; i++ { // releasing twice is fine
		if err := j.releaseVolume(image); err != nil {
			t.Fatalf("releaseVolume #%d: %v", i+1, err)
		}
	}
	if _, found, err := j.lookupVolume(name); err != nil || found {
		t.Fatalf("lookupVolume after release = %v, %v", found, err)
	}
	if _, found, err := j.volumeName(image); err != nil || found {
		t.Fatalf("volumeName after release = %v, %v", found, err)
	}
	if hasEntry(t, j, name, image) {
		t.Fatal("volumes() lists a released entry")
	}
}

func hasEntry(t *testing.T, j journal, name, image string) bool {
	t.Helper()
	entries, err := j.volumes()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.name == name && e.value == image {
			return true
		}
	}
	return false
}

func TestJournalSnapshotEntries(t *testing.T) {
	c, _ := connect(t)
	io, err := c.ioctx("rbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(io.Destroy) // after the cleanups below, which use io
	j := journal{io}
	name, image, snap := "snap-"+uniqueName(t), newImageName(), newSnapName()
	if err := j.reserveSnapshot(name, image, snap); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = j.releaseSnapshot(image, snap) })
	if gi, gs, found, err := j.lookupSnapshot(name); err != nil || !found || gi != image || gs != snap {
		t.Fatalf("lookupSnapshot = %q, %q, %v, %v", gi, gs, found, err)
	}
	if got, found, err := j.snapshotName(image, snap); err != nil || !found || got != name {
		t.Fatalf("snapshotName = %q, %v, %v; want %q", got, found, err, name)
	}
	if !hasSnapEntry(t, j, journalSnapshot{name: name, image: image, snap: snap}) {
		t.Fatal("snapshots() misses the reserved snapshot")
	}
	for i := 0; i < 2; i++ {
		if err := j.releaseSnapshot(image, snap); err != nil {
			t.Fatalf("releaseSnapshot #%d: %v", i+1, err)
		}
	}
	if _, _, found, err := j.lookupSnapshot(name); err != nil || found {
		t.Fatalf("lookupSnapshot after release = %v, %v", found, err)
	}
	if hasSnapEntry(t, j, journalSnapshot{name: name, image: image, snap: snap}) {
		t.Fatal("snapshots() lists a released entry")
	}

	// A malformed entry is an error for its name and left out of the list.
	bad := "snap-" + uniqueName(t)
	if err := io.SetOmap(journalObject, map[string][]byte{snapNameKey + bad: []byte("no-at-sign")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = io.RmOmapKeys(journalObject, []string{snapNameKey + bad}) })
	if _, _, _, err := j.lookupSnapshot(bad); err == nil {
		t.Error("lookupSnapshot of a malformed entry succeeded")
	}
	list, err := j.snapshots()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s.name == bad {
			t.Errorf("snapshots() lists the malformed entry %+v", s)
		}
	}
}

func hasSnapEntry(t *testing.T, j journal, want journalSnapshot) bool {
	t.Helper()
	list, err := j.snapshots()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range list {
		if s == want {
			return true
		}
	}
	return false
}

func TestSplitSnapRef(t *testing.T) {
	for ref, ok := range map[string]bool{
		"csi-vol-a@csi-snap-b": true, "a@b": true,
		"": false, "a": false, "@b": false, "a@": false,
	} {
		image, snap, got := splitSnapRef(ref)
		if got != ok || (ok && snapRef(image, snap) != ref) {
			t.Errorf("splitSnapRef(%q) = %q, %q, %v", ref, image, snap, got)
		}
	}
}
