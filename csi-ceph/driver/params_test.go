package driver

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// The parameters ceph-csi users carry over are taken; anything else is
// refused with InvalidArgument, naming every unknown parameter.
func TestParseParams(t *testing.T) {
	base := map[string]string{"clusterID": "ceph-1", "pool": "rbd"}
	with := func(kv ...string) map[string]string {
		p := maps.Clone(base)
		for i := 0; i < len(kv); i += 2 {
			p[kv[i]] = kv[i+1]
		}
		return p
	}
	good := with("dataPool", "ec-data", "imageFeatures", "layering,exclusive-lock", "mounter", "krbd",
		"mapOptions", "krbd:lock_on_read,queue_depth=1024;nbd:try-netlink", "unmapOptions", "krbd:force",
		"mkfsOptions", "-m0 -Enodiscard,lazy_itable_init=1", "csi.storage.k8s.io/fstype", "xfs",
		"csi.storage.k8s.io/pv/name", "pv-1", "csi.storage.k8s.io/pvc/name", "c", "csi.storage.k8s.io/pvc/namespace", "ns",
		"csi.storage.k8s.io/provisioner-secret-name", "s", "csi.storage.k8s.io/provisioner-secret-namespace", "ns")
	v, err := parseParams(good)
	if err != nil {
		t.Fatal(err)
	}
	if v.DataPool != "ec-data" || v.FsType != "xfs" || v.Mounter != "krbd" {
		t.Fatalf("parseParams = %+v", v)
	}
	vctx := v.volumeContext("csi-vol-x")
	want := map[string]string{"clusterID": "ceph-1", "pool": "rbd", "imageName": "csi-vol-x", "mounter": "krbd",
		"mapOptions": good["mapOptions"], "unmapOptions": "krbd:force", "mkfsOptions": good["mkfsOptions"], "fsType": "xfs"}
	if !maps.Equal(vctx, want) {
		t.Fatalf("volume context %v, want %v", vctx, want)
	}
	// The node reads back what CreateVolume put in the volume context.
	np, err := stageParams(vctx)
	if err != nil || np.Mounter != "krbd" || !slices.Equal(np.Map.Krbd, []string{"lock_on_read", "queue_depth=1024"}) ||
		!slices.Equal(np.Map.NBD, []string{"try-netlink"}) || !slices.Equal(np.Unmap.Krbd, []string{"force"}) ||
		!slices.Equal(np.Mkfs, []string{"-m0", "-Enodiscard,lazy_itable_init=1"}) || np.FsType != "xfs" {
		t.Fatalf("stageParams = %+v, %v", np, err)
	}
	// A volume made before these keys existed: defaults.
	if np, err := stageParams(map[string]string{"clusterID": "c", "pool": "rbd", "imageName": "i", "storage.kubernetes.io/csiProvisionerIdentity": "x"}); err != nil || np.Mounter != "" || len(np.Mkfs) != 0 {
		t.Fatalf("stageParams of an old volume = %+v, %v", np, err)
	}

	for _, tc := range []struct {
		name   string
		params map[string]string
		sub    string
	}{
		{"no pool", map[string]string{"clusterID": "c"}, "clusterID and pool"},
		{"unknown ones, all named", with("encrypted", "true", "thickProvision", "true"), `"encrypted", "thickProvision"`},
		{"unknown csi parameter", with("csi.storage.k8s.io/foo", "x"), `"csi.storage.k8s.io/foo"`},
		{"misspelt", with("poool", "rbd"), `"poool"`},
		{"empty dataPool", with("dataPool", ""), "dataPool"},
		{"bad features", with("imageFeatures", "journaling"), "journaling"},
		{"bad mounter", with("mounter", "nfs"), "mounter"},
		{"bad mapOptions", with("mapOptions", "krbd:secret=x"), "set by the driver"},
		{"bad unmapOptions", with("unmapOptions", "krbd:noshare"), "only force"},
		{"mkfsOptions with a device", with("mkfsOptions", "-F /dev/sda"), "looks like a path"},
		{"btrfs", with("csi.storage.k8s.io/fstype", "btrfs"), "btrfs"},
	} {
		_, err := parseParams(tc.params)
		if err == nil || !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.sub) {
			t.Errorf("%s: %v; want InvalidArgument with %q", tc.name, err, tc.sub)
		}
	}
	if _, err := stageParams(map[string]string{"mapOptions": "krbd:name=admin"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("stageParams with a bad mapOptions: %v", err)
	}
}

func TestParseMkfsOptions(t *testing.T) {
	for in, want := range map[string][]string{
		"":                        nil,
		"-m0 -E nodiscard":        {"-m0", "-E", "nodiscard"},
		"  -K   -i size=512 ":     {"-K", "-i", "size=512"},
		"-b 4096 -O ^has_journal": {"-b", "4096", "-O", "^has_journal"},
	} {
		if got, err := parseMkfsOptions(in); err != nil || !slices.Equal(got, want) {
			t.Errorf("parseMkfsOptions(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"/dev/sda", "-F ../x", "-L 'x y'", `-L "x"`, "./dev"} {
		if _, err := parseMkfsOptions(bad); err == nil {
			t.Errorf("parseMkfsOptions(%q) succeeded", bad)
		}
	}
}
