package driver

import (
	"errors"
	"strings"
	"testing"
)

const uuidA = "0123456789abcdef0123456789abcdef"
const uuidB = "fedcba9876543210fedcba9876543210"

func TestIDsRoundTrip(t *testing.T) {
	for _, v := range []VolumeID{
		{ClusterID: "ceph-1", PoolID: 2, UUID: uuidA},
		{ClusterID: "b9127830-b0cc-4e34-aa47-9d1a2e9949a8", PoolID: 1 << 40, UUID: uuidA},
		{ClusterID: "x", PoolID: 0, UUID: uuidB},
		{ClusterID: strings.Repeat("c", MaxClusterIDLen), PoolID: 1<<63 - 1, UUID: uuidB},
	} {
		s := v.String()
		if len(s) > maxIDLen {
			t.Fatalf("%+v: ID %d bytes", v, len(s))
		}
		got, err := ParseVolumeID(s)
		if err != nil || got != v {
			t.Fatalf("ParseVolumeID(%q) = %+v, %v; want %+v", s, got, err, v)
		}
		snap := SnapshotID{VolumeID: v, SnapUUID: uuidB}
		if len(snap.String()) > maxIDLen {
			t.Fatalf("snapshot ID of %+v: %d bytes", v, len(snap.String()))
		}
		gs, err := ParseSnapshotID(snap.String())
		if err != nil || gs != snap {
			t.Fatalf("ParseSnapshotID(%q) = %+v, %v", snap.String(), gs, err)
		}
		// A volume ID is not a snapshot ID and the other way round.
		if _, err := ParseSnapshotID(s); !errors.Is(err, ErrMalformedID) {
			t.Errorf("volume ID parsed as a snapshot ID: %v", err)
		}
		if _, err := ParseVolumeID(snap.String()); !errors.Is(err, ErrMalformedID) {
			t.Errorf("snapshot ID parsed as a volume ID: %v", err)
		}
	}
}

func TestMalformedIDs(t *testing.T) {
	good := VolumeID{ClusterID: "ceph-1", PoolID: 2, UUID: uuidA}.String()
	for _, s := range []string{
		"", "1", "1-", "2" + good[1:], "1-06-ceph-1", "1-zz-ceph-1-0000000000000002-" + uuidA,
		"1-07-ceph-1-0000000000000002-" + uuidA, "1-00--0000000000000002-" + uuidA,
		"1-06-ceph-1-000000000000000g-" + uuidA, "1-06-ceph-1-0000000000000002-" + strings.ToUpper(uuidA),
		"1-06-ceph-1-0000000000000002-" + uuidA[:31], good + "x", good + "-" + uuidB,
		"1-06-ceph-1-8000000000000000-" + uuidA, strings.Repeat("1", 200), "../../etc/passwd",
	} {
		if _, err := ParseVolumeID(s); !errors.Is(err, ErrMalformedID) {
			t.Errorf("ParseVolumeID(%q) = %v, want ErrMalformedID", s, err)
		}
	}
	for _, v := range []VolumeID{{ClusterID: "", UUID: uuidA}, {ClusterID: strings.Repeat("c", MaxClusterIDLen+1), UUID: uuidA}, {ClusterID: "c", UUID: "x"}} {
		if err := v.Validate(); err == nil {
			t.Errorf("%+v accepted", v)
		}
	}
}

// Any string either decodes into an ID that encodes back to itself, or is
// refused as malformed: never a panic.
func FuzzParseIDs(f *testing.F) {
	f.Add(VolumeID{ClusterID: "ceph-1", PoolID: 2, UUID: uuidA}.String())
	f.Add(SnapshotID{VolumeID: VolumeID{ClusterID: "c", PoolID: 9, UUID: uuidA}, SnapUUID: uuidB}.String())
	f.Add("1-01-x-")
	f.Fuzz(func(t *testing.T, s string) {
		if v, err := ParseVolumeID(s); err == nil {
			if v.String() != s {
				t.Fatalf("%q decoded to %+v which encodes to %q", s, v, v.String())
			}
		} else if !errors.Is(err, ErrMalformedID) {
			t.Fatalf("error %v is not ErrMalformedID", err)
		}
		if v, err := ParseSnapshotID(s); err == nil {
			if v.String() != s {
				t.Fatalf("%q decoded to %+v which encodes to %q", s, v, v.String())
			}
		} else if !errors.Is(err, ErrMalformedID) {
			t.Fatalf("error %v is not ErrMalformedID", err)
		}
	})
}

func TestPage(t *testing.T) {
	ids := []string{"d", "b", "a", "c"}
	id := func(s string) string { return s }
	got, next := page(append([]string(nil), ids...), id, "", 2)
	if strings.Join(got, "") != "ab" || next != "c" {
		t.Fatalf("first page %v, next %q", got, next)
	}
	// The token's own entry is gone: resume at the next one.
	got, next = page([]string{"a", "b", "d"}, id, "c", 2)
	if strings.Join(got, "") != "d" || next != "" {
		t.Fatalf("second page %v, next %q", got, next)
	}
	if got, _ := page(append([]string(nil), ids...), id, "", 0); len(got) != 4 {
		t.Fatalf("no limit: %v", got)
	}
}
