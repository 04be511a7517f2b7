package rbd

import (
	"regexp"
	"testing"
)

func TestNames(t *testing.T) {
	uuid := regexp.MustCompile(`^[0-9a-f]{32}$`)
	for _, tc := range []struct {
		name   string
		make   func() string
		uuidOf func(string) (string, bool)
		build  func(string) string
	}{
		{"image", newImageName, ImageUUID, ImageName},
		{"snapshot", newSnapName, SnapUUID, SnapName},
	} {
		a, b := tc.make(), tc.make()
		if a == b {
			t.Errorf("%s: two new names are both %q", tc.name, a)
		}
		u, ok := tc.uuidOf(a)
		if !ok || !uuid.MatchString(u) || tc.build(u) != a {
			t.Errorf("%s: %q has uuid %q, %v", tc.name, a, u, ok)
		}
	}
	if got := ImageName("0123456789abcdef0123456789abcdef"); got != "csi-vol-0123456789abcdef0123456789abcdef" {
		t.Errorf("ImageName = %q", got)
	}
	if got := SnapName("0123456789abcdef0123456789abcdef"); got != "csi-snap-0123456789abcdef0123456789abcdef" {
		t.Errorf("SnapName = %q", got)
	}
	for _, s := range []string{"", "csi-snap-x", "vol-x", "csi-tmp-csi-vol-x"} {
		if u, ok := ImageUUID(s); ok {
			t.Errorf("ImageUUID(%q) = %q, true", s, u)
		}
	}
	for _, s := range []string{"", "csi-vol-x", "csi-tmp-csi-vol-x"} {
		if u, ok := SnapUUID(s); ok {
			t.Errorf("SnapUUID(%q) = %q, true", s, u)
		}
	}
	if got := tmpSnapName("csi-vol-x"); got != "csi-tmp-csi-vol-x" {
		t.Errorf("tmpSnapName = %q", got)
	}
}
