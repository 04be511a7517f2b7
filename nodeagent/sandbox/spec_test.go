package sandbox

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestSpecWithDefaults(t *testing.T) {
	disks := []Disk{{Path: "/dev/vdb"}, {ID: "data", RBD: &RBDImage{Pool: "p", Image: "i"}}, {Path: "/img"}}
	s := Spec{ID: "a", Disks: disks}.WithDefaults()
	if s.VCPUs != 1 || s.MemoryMiB != 128 {
		t.Errorf("defaults: vcpus %d memory %d, want 1 and 128", s.VCPUs, s.MemoryMiB)
	}
	var ids []string
	for _, d := range s.Disks {
		ids = append(ids, d.ID)
	}
	if got := strings.Join(ids, ","); got != "disk0,data,disk2" {
		t.Errorf("disk IDs %s, want disk0,data,disk2", got)
	}
	if disks[0].ID != "" {
		t.Error("WithDefaults modified the caller's disks")
	}
	s.Disks[1].RBD.Pool = "changed"
	if disks[1].RBD.Pool != "p" {
		t.Error("WithDefaults shares the caller's RBD image")
	}
	kept := Spec{ID: "a", VCPUs: 4, MemoryMiB: 512}.WithDefaults()
	if kept.VCPUs != 4 || kept.MemoryMiB != 512 || kept.Disks != nil {
		t.Errorf("WithDefaults changed set values: %+v", kept)
	}
}

func TestSpecValidate(t *testing.T) {
	rbd := func(pool, image string) Disk { return Disk{ID: "r", RBD: &RBDImage{Pool: pool, Image: image}} }
	good := Spec{ID: "pod-1.abc_x", VCPUs: 2, MemoryMiB: 256, NetNS: "/var/run/netns/cni-1",
		Disks: []Disk{{ID: "root", Path: "/dev/sdb", ReadOnly: true}, rbd("rbd", "csi-vol-1")}}
	for _, tc := range []struct {
		name   string
		mutate func(*Spec)
		ok     bool
	}{
		{"good", func(*Spec) {}, true},
		{"defaults only", func(s *Spec) { *s = Spec{ID: "x"}.WithDefaults() }, true},
		{"63-character ID", func(s *Spec) { s.ID = strings.Repeat("a", 63) }, true},
		{"digit first", func(s *Spec) { s.ID = "0abc" }, true},
		{"no netns", func(s *Spec) { s.NetNS = "" }, true},
		{"limits", func(s *Spec) { s.VCPUs, s.MemoryMiB = 64, 65536 }, true},
		{"low limits", func(s *Spec) { s.VCPUs, s.MemoryMiB = 1, 64 }, true},
		{"no disks", func(s *Spec) { s.Disks = nil }, true},

		{"empty ID", func(s *Spec) { s.ID = "" }, false},
		{"64-character ID", func(s *Spec) { s.ID = strings.Repeat("a", 64) }, false},
		{"upper case ID", func(s *Spec) { s.ID = "Pod" }, false},
		{"slash in ID", func(s *Spec) { s.ID = "a/b" }, false},
		{"dot-dot in ID", func(s *Spec) { s.ID = "a..b" }, false},
		{"ID is dot-dot", func(s *Spec) { s.ID = ".." }, false},
		{"dash first", func(s *Spec) { s.ID = "-a" }, false},
		{"dot first", func(s *Spec) { s.ID = ".a" }, false},
		{"space in ID", func(s *Spec) { s.ID = "a b" }, false},
		{"non-ASCII ID", func(s *Spec) { s.ID = "é" }, false},
		{"zero vcpus", func(s *Spec) { s.VCPUs = 0 }, false},
		{"65 vcpus", func(s *Spec) { s.VCPUs = 65 }, false},
		{"63 MiB", func(s *Spec) { s.MemoryMiB = 63 }, false},
		{"65537 MiB", func(s *Spec) { s.MemoryMiB = 65537 }, false},
		{"relative netns", func(s *Spec) { s.NetNS = "netns/x" }, false},
		{"unclean netns", func(s *Spec) { s.NetNS = "/var/run/../netns/x" }, false},
		{"trailing slash netns", func(s *Spec) { s.NetNS = "/var/run/netns/" }, false},
		{"duplicate disk ID", func(s *Spec) { s.Disks[1].ID = "root" }, false},
		{"disk without ID", func(s *Spec) { s.Disks[0].ID = "" }, false},
		{"bad disk", func(s *Spec) { s.Disks[0].Path = "dev/sdb" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			s.Disks = append([]Disk(nil), good.Disks...)
			tc.mutate(&s)
			err := s.Validate()
			if tc.ok && err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !tc.ok {
				if err == nil {
					t.Fatal("accepted")
				}
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("error %v does not wrap ErrInvalidArgument", err)
				}
			}
		})
	}
}

func TestDiskValidate(t *testing.T) {
	rbd := func(pool, image string) Disk { return Disk{ID: "r", RBD: &RBDImage{Pool: pool, Image: image}} }
	for _, tc := range []struct {
		name string
		d    Disk
		ok   bool
	}{
		{"path", Disk{ID: "d0", Path: "/dev/sdb"}, true},
		{"file", Disk{ID: "scratch_1", Path: "/var/lib/img.raw", ReadOnly: true}, true},
		{"rbd", rbd("rbd", "csi-vol-0f3a.1"), true},
		{"20-character ID", Disk{ID: strings.Repeat("x", 20), Path: "/a"}, true},
		{"255-character image", rbd("p", strings.Repeat("i", 255)), true},

		{"no ID", Disk{Path: "/dev/sdb"}, false},
		{"21-character ID", Disk{ID: strings.Repeat("x", 21), Path: "/a"}, false},
		{"dot in ID", Disk{ID: "a.b", Path: "/a"}, false},
		{"upper case ID", Disk{ID: "Root", Path: "/a"}, false},
		{"no source", Disk{ID: "d"}, false},
		{"both sources", Disk{ID: "d", Path: "/a", RBD: &RBDImage{Pool: "p", Image: "i"}}, false},
		{"relative path", Disk{ID: "d", Path: "a/b"}, false},
		{"unclean path", Disk{ID: "d", Path: "/a/../b"}, false},
		{"NUL in path", Disk{ID: "d", Path: "/a\x00b"}, false},
		{"empty pool", rbd("", "i"), false},
		{"empty image", rbd("p", ""), false},
		{"slash in pool", rbd("p/q", "i"), false},
		{"slash in image", rbd("p", "i/j"), false},
		{"snapshot", rbd("p", "i@snap"), false},
		{"space in image", rbd("p", "i j"), false},
		{"tab in pool", rbd("p\t", "i"), false},
		{"newline in image", rbd("p", "i\n"), false},
		{"256-character image", rbd("p", strings.Repeat("i", 256)), false},
		{"invalid UTF-8", rbd("p", "i\xff"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.d.Validate()
			if tc.ok && err != nil {
				t.Fatalf("rejected: %v", err)
			}
			if !tc.ok && (err == nil || !errors.Is(err, errdefs.ErrInvalidArgument)) {
				t.Fatalf("got %v, want an ErrInvalidArgument", err)
			}
		})
	}
}

func TestSpecEqual(t *testing.T) {
	base := Spec{ID: "a", NetNS: "/n", Disks: []Disk{{Path: "/d"}, {ID: "r", RBD: &RBDImage{Pool: "p", Image: "i"}}}}
	for _, tc := range []struct {
		name  string
		other Spec
		equal bool
	}{
		{"itself", base, true},
		{"explicit defaults", Spec{ID: "a", VCPUs: 1, MemoryMiB: 128, NetNS: "/n",
			Disks: []Disk{{ID: "disk0", Path: "/d"}, {ID: "r", RBD: &RBDImage{Pool: "p", Image: "i"}}}}, true},
		{"another ID", Spec{ID: "b", NetNS: "/n", Disks: base.Disks}, false},
		{"more CPUs", Spec{ID: "a", VCPUs: 2, NetNS: "/n", Disks: base.Disks}, false},
		{"more memory", Spec{ID: "a", MemoryMiB: 256, NetNS: "/n", Disks: base.Disks}, false},
		{"another netns", Spec{ID: "a", NetNS: "/m", Disks: base.Disks}, false},
		{"fewer disks", Spec{ID: "a", NetNS: "/n", Disks: base.Disks[:1]}, false},
		{"disks reordered", Spec{ID: "a", NetNS: "/n", Disks: []Disk{base.Disks[1], base.Disks[0]}}, false},
		{"another image", Spec{ID: "a", NetNS: "/n", Disks: []Disk{{Path: "/d"}, {ID: "r", RBD: &RBDImage{Pool: "p", Image: "j"}}}}, false},
		{"read-only", Spec{ID: "a", NetNS: "/n", Disks: []Disk{{Path: "/d", ReadOnly: true}, base.Disks[1]}}, false},
	} {
		if got := base.Equal(tc.other); got != tc.equal {
			t.Errorf("%s: Equal = %v, want %v", tc.name, got, tc.equal)
		}
		if got := tc.other.Equal(base); got != tc.equal {
			t.Errorf("%s: reversed Equal = %v, want %v", tc.name, got, tc.equal)
		}
	}
	if !(Spec{ID: "a"}).Equal(Spec{ID: "a", Disks: []Disk{}}) {
		t.Error("nil and empty disks differ")
	}
	if (Disk{ID: "d", Path: "/a"}).Equal(Disk{ID: "d", RBD: &RBDImage{}}) {
		t.Error("a path disk equals an RBD disk")
	}
}

// A spec from the control plane either validates, and then is safe to use
// as a directory name and stable under defaults, or is refused as an
// invalid argument: never a panic, never another kind of error.
func FuzzSpecValidate(f *testing.F) {
	f.Add("pod-1", uint32(0), uint32(0), "/var/run/netns/x", "", "/dev/sdb", "", "", false)
	f.Add("a..b", uint32(65), uint32(1), "rel", "d", "", "rbd", "img@snap", true)
	f.Add("x", uint32(2), uint32(64), "", "data", "", "rbd", "csi-vol", false)
	f.Fuzz(func(t *testing.T, id string, vcpus, mem uint32, netns, diskID, path, pool, image string, ro bool) {
		d := Disk{ID: diskID, Path: path, ReadOnly: ro}
		if pool != "" || image != "" {
			d.RBD = &RBDImage{Pool: pool, Image: image}
		}
		s := Spec{ID: id, VCPUs: vcpus, MemoryMiB: mem, NetNS: netns, Disks: []Disk{d}}.WithDefaults()
		if err := s.Validate(); err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v is not InvalidArgument", err)
			}
			return
		}
		if dir := filepath.Join("/state", s.ID); filepath.Dir(dir) != "/state" {
			t.Fatalf("ID %q escapes its directory: %s", s.ID, dir)
		}
		again := s.WithDefaults()
		if !again.Equal(s) || again.Validate() != nil {
			t.Fatalf("defaults not stable: %+v vs %+v", s, again)
		}
		if err := s.Disks[0].Validate(); err != nil {
			t.Fatalf("disk of a valid spec is invalid alone: %v", err)
		}
	})
}
