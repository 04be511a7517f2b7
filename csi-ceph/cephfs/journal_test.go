package cephfs

import "testing"

func TestRoundSize(t *testing.T) {
	for in, want := range map[uint64]uint64{0: 0, 1: QuotaUnit, QuotaUnit: QuotaUnit, QuotaUnit + 1: 2 * QuotaUnit, 1 << 30: 1 << 30} {
		if got := RoundSize(in); got != want {
			t.Errorf("RoundSize(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestNames(t *testing.T) {
	if uuid, ok := SubvolumeUUID(SubvolumeName("ab12")); !ok || uuid != "ab12" {
		t.Fatalf("SubvolumeUUID = %q, %v", uuid, ok)
	}
	if uuid, ok := SnapUUID(SnapName("cd34")); !ok || uuid != "cd34" {
		t.Fatalf("SnapUUID = %q, %v", uuid, ok)
	}
	if _, ok := SubvolumeUUID("csi-snap-x"); ok {
		t.Fatal("a snapshot name read as a subvolume's")
	}
	if s := (VolumeSpec{FromSnapshot: &SnapshotRef{"a", "b"}}).source(); s != "snapshot:a@b" {
		t.Fatal(s)
	}
	if s, ok := cutSourceVolume((VolumeSpec{FromVolume: "v"}).source()); !ok || s != "v" {
		t.Fatal(s)
	}
}
