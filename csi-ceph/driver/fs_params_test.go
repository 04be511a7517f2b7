package driver

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

func TestParseFSParams(t *testing.T) {
	good := map[string]string{"clusterID": "ceph-1", "fsName": "cephfs", "pool": "cephfs.data", "mounter": "fuse",
		"kernelMountOptions": "ms_mode=prefer-crc,recover_session=clean", "fuseMountOptions": "allow_other",
		"csi.storage.k8s.io/pvc/name": "c", "csi.storage.k8s.io/provisioner-secret-name": "s"}
	v, err := parseFSParams(good)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"clusterID": "ceph-1", "fsName": "cephfs", "subvolumeName": "csi-vol-x", "subvolumePath": "/volumes/csi/x/1",
		"mounter": "fuse", "kernelMountOptions": good["kernelMountOptions"], "fuseMountOptions": "allow_other"}
	if got := v.volumeContext("csi-vol-x", "/volumes/csi/x/1"); !maps.Equal(got, want) {
		t.Fatalf("volume context %v, want %v", got, want)
	}
	for name, p := range map[string]map[string]string{
		"no fsName":         {"clusterID": "c"},
		"no clusterID":      {"fsName": "cephfs"},
		"unknown":           {"clusterID": "c", "fsName": "f", "imageFeatures": "layering", "zzz": "1"},
		"rbd fstype":        {"clusterID": "c", "fsName": "f", "fsType": "ext4"},
		"empty pool":        {"clusterID": "c", "fsName": "f", "pool": ""},
		"bad mounter":       {"clusterID": "c", "fsName": "f", "mounter": "krbd"},
		"key in options":    {"clusterID": "c", "fsName": "f", "kernelMountOptions": "secret=abc"},
		"argument smuggled": {"clusterID": "c", "fsName": "f", "fuseMountOptions": "-d"},
		"space":             {"clusterID": "c", "fsName": "f", "fuseMountOptions": "a b"},
	} {
		_, err := parseFSParams(p)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
		if name == "unknown" && (!strings.Contains(err.Error(), `"imageFeatures", "zzz"`)) {
			t.Errorf("unknown parameters not all named: %v", err)
		}
	}
}

func TestCheckFSCapabilities(t *testing.T) {
	mount := func(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: m}}
	}
	for _, m := range []csi.VolumeCapability_AccessMode_Mode{csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER} {
		if err := checkFSCapabilities([]*csi.VolumeCapability{mount(m)}); err != nil {
			t.Errorf("%v refused: %v", m, err)
		}
	}
	block := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	for name, caps := range map[string][]*csi.VolumeCapability{
		"none":                {},
		"block":               {block},
		"multi single writer": {mount(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER)},
		"no mode":             {{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}}},
	} {
		if err := checkFSCapabilities(caps); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if !slices.Contains(ownFSParams, paramFSName) {
		t.Fatal("fsName is not a parameter")
	}
}

func TestConfigType(t *testing.T) {
	base := Config{Endpoint: "unix:///tmp/x.sock", NodeID: "n", Mode: ModeAll, ClusterConfig: "/x"}
	for typ, ok := range map[string]bool{"rbd": true, "cephfs": true, "nfs": false, "": false} {
		c := base
		c.Type = typ
		if err := c.Validate(); (err == nil) != ok {
			t.Errorf("type %q: %v", typ, err)
		}
	}
	c := base
	c.Type, c.CloneWait = "cephfs", -1
	if c.Validate() == nil {
		t.Error("negative clone wait accepted")
	}
}
