package cephfs

import "testing"

func TestPickSubvolumeDir(t *testing.T) {
	const dir, id = "/volumes/csi/sub1", "bb05a18a-2921-4440-a834-7b228ea1a2d2"
	if p, ok := pickSubvolumeDir(dir, []string{".", "..", ".meta", id}); !ok || p != dir+"/"+id {
		t.Fatalf("pickSubvolumeDir = %q, %v", p, ok)
	}
	for name, names := range map[string][]string{
		"two UUIDs":     {".meta", id, "cc05a18a-2921-4440-a834-7b228ea1a2d2"},
		"no UUID":       {".", "..", ".meta"},
		"other entry":   {".meta", id, "x"},
		"upper case":    {"BB05A18A-2921-4440-A834-7B228EA1A2D2"},
		"not a UUID":    {"bb05a18a-2921-4440-a834-7b228ea1a2dz"},
		"dashes moved":  {"bb05a18a2-921-4440-a834-7b228ea1a2d2"},
		"path climbing": {"../../../../../etc/passwd/aaaaaaaa"},
	} {
		if p, ok := pickSubvolumeDir(dir, names); ok {
			t.Errorf("%s: pickSubvolumeDir = %q, accepted", name, p)
		}
	}
}
