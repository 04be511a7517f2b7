package manifests

// CSI drivers, storage classes, snapshot classes, and csi-ceph's cluster
// config.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
)

// secretParams are the CSI secret parameters the sidecars and the kubelet
// understand (each with -secret-name and -secret-namespace).
var secretParams = []string{"provisioner", "controller-publish", "node-stage", "node-publish", "controller-expand", "node-expand", "snapshotter", "groupsnapshotter"}

// checkCSIParams checks the csi.storage.k8s.io/ parameters: known keys,
// name and namespace in pairs, and the Secrets they name defined here.
// It returns the Secrets referenced, by parameter prefix.
func checkCSIParams(t *testing.T, objs []*object, o *object, params map[string]string) map[string]*corev1.Secret {
	t.Helper()
	known := map[string]bool{"csi.storage.k8s.io/fstype": true}
	for _, p := range secretParams {
		known["csi.storage.k8s.io/"+p+"-secret-name"] = true
		known["csi.storage.k8s.io/"+p+"-secret-namespace"] = true
	}
	for k := range params {
		if strings.HasPrefix(k, "csi.storage.k8s.io/") && !known[k] {
			t.Errorf("%s: unknown parameter %q", o, k)
		}
	}
	out := map[string]*corev1.Secret{}
	for _, p := range secretParams {
		name, hasName := params["csi.storage.k8s.io/"+p+"-secret-name"]
		ns, hasNS := params["csi.storage.k8s.io/"+p+"-secret-namespace"]
		if hasName != hasNS {
			t.Errorf("%s: %s secret: name and namespace go together", o, p)
			continue
		}
		if !hasName || strings.Contains(name+ns, "${") {
			continue
		}
		sec := lookup[corev1.Secret](objs, ns, name)
		if sec == nil {
			t.Errorf("%s: %s secret %s/%s is not in the manifests", o, p, ns, name)
			continue
		}
		out[p] = sec
	}
	return out
}

func TestCSIDriverAndClasses(t *testing.T) {
	objs := load(t)
	drivers := map[string]*storagev1.CSIDriver{}
	each(objs, func(o *object, d *storagev1.CSIDriver) { drivers[d.Name] = d })

	d := drivers[cephDriverName]
	if d == nil {
		t.Fatalf("CSIDriver %s is not in the manifests", cephDriverName)
	}
	if d.Spec.AttachRequired == nil || !*d.Spec.AttachRequired {
		t.Errorf("CSIDriver %s: attachRequired must be true", d.Name)
	}
	if d.Spec.PodInfoOnMount == nil || *d.Spec.PodInfoOnMount {
		t.Errorf("CSIDriver %s: podInfoOnMount must be false", d.Name)
	}
	if d.Spec.FSGroupPolicy == nil || *d.Spec.FSGroupPolicy != storagev1.FileFSGroupPolicy {
		t.Errorf("CSIDriver %s: fsGroupPolicy must be File", d.Name)
	}
	if !slices.Equal(d.Spec.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
		t.Errorf("CSIDriver %s: volumeLifecycleModes %v, want [Persistent]", d.Name, d.Spec.VolumeLifecycleModes)
	}

	clusterIDs := cephClusterIDs(t, objs)

	// Secrets of csi-ceph carry userID and userKey.
	checkCephSecrets := func(o *object, secs map[string]*corev1.Secret, need ...string) {
		for _, p := range need {
			if _, ok := secs[p]; !ok {
				t.Errorf("%s: no %s secret (csi.storage.k8s.io/%s-secret-name and -namespace)", o, p, p)
			}
		}
		for p, sec := range secs {
			for _, k := range []string{"userID", "userKey"} {
				if !secretHasKey(sec, k) {
					t.Errorf("%s: %s secret %s/%s has no key %s", o, p, sec.Namespace, sec.Name, k)
				}
			}
		}
	}
	checkCluster := func(o *object, params map[string]string) {
		if params["clusterID"] == "" || params["pool"] == "" {
			t.Errorf("%s: parameters clusterID and pool are required", o)
		} else if !clusterIDs[params["clusterID"]] {
			t.Errorf("%s: clusterID %q is not in csi-ceph's cluster config %v", o, params["clusterID"], clusterIDs)
		}
	}

	sawSC := false
	each(objs, func(o *object, sc *storagev1.StorageClass) {
		if drivers[sc.Provisioner] == nil {
			t.Errorf("%s: provisioner %q is not a CSIDriver of the manifests", o, sc.Provisioner)
		}
		secs := checkCSIParams(t, objs, o, sc.Parameters)
		if sc.Provisioner != cephDriverName {
			return
		}
		// What csi-ceph's CreateVolume accepts (ceph-csi's names).
		for k, v := range sc.Parameters {
			switch k {
			case "clusterID", "pool", "imageFeatures", "mounter":
			case "dataPool":
				if v == "" {
					t.Errorf("%s: dataPool is empty", o)
				}
			case "mapOptions", "unmapOptions":
				if _, err := mapper.ParseMapOptions(v, k == "unmapOptions"); err != nil {
					t.Errorf("%s: %v", o, err)
				}
			case "mkfsOptions":
				if strings.ContainsAny(v, "/'\"\\") {
					t.Errorf("%s: mkfsOptions %q: csi-ceph refuses paths and quotes", o, v)
				}
			default:
				if !strings.HasPrefix(k, "csi.storage.k8s.io/") {
					t.Errorf("%s: csi-ceph refuses parameter %q (clusterID, pool, dataPool, imageFeatures, mounter, mapOptions, unmapOptions, mkfsOptions)", o, k)
				}
			}
		}
		checkCluster(o, sc.Parameters)
		if m, ok := sc.Parameters["mounter"]; ok && m != "krbd" && m != "rbd-nbd" && m != "fuse" {
			t.Errorf("%s: mounter %q: want krbd, rbd-nbd or fuse", o, m)
		}
		if f, ok := sc.Parameters["imageFeatures"]; ok {
			if err := validImageFeatures(f); err != nil {
				t.Errorf("%s: imageFeatures %q: %v", o, f, err)
			}
		}
		if fs := sc.Parameters["csi.storage.k8s.io/fstype"]; fs != "ext4" && fs != "xfs" {
			t.Errorf("%s: csi.storage.k8s.io/fstype %q: want ext4 or xfs", o, fs)
		}
		checkCephSecrets(o, secs, "provisioner", "controller-expand", "node-stage")
		if sc.Name != cephStorageClass {
			return
		}
		sawSC = true
		if sc.ReclaimPolicy == nil || *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			t.Errorf("%s: reclaimPolicy must be Delete", o)
		}
		if sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			t.Errorf("%s: allowVolumeExpansion must be true", o)
		}
		if sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingImmediate {
			t.Errorf("%s: volumeBindingMode must be Immediate", o)
		}
		if sc.Parameters["csi.storage.k8s.io/fstype"] != "ext4" {
			t.Errorf("%s: csi.storage.k8s.io/fstype must be ext4", o)
		}
	})
	if !sawSC {
		t.Errorf("StorageClass %s of %s is not in the manifests", cephStorageClass, cephDriverName)
	}

	sawVSC := false
	each(objs, func(o *object, vsc *snapshotv1.VolumeSnapshotClass) {
		if drivers[vsc.Driver] == nil {
			t.Errorf("%s: driver %q is not a CSIDriver of the manifests", o, vsc.Driver)
		}
		secs := checkCSIParams(t, objs, o, vsc.Parameters)
		if vsc.Driver != cephDriverName {
			return
		}
		checkCluster(o, vsc.Parameters)
		checkCephSecrets(o, secs, "snapshotter")
		if vsc.Name == cephSnapshotClass {
			sawVSC = true
			if vsc.DeletionPolicy != snapshotv1.VolumeSnapshotContentDelete {
				t.Errorf("%s: deletionPolicy %q, want Delete", o, vsc.DeletionPolicy)
			}
		}
	})
	if !sawVSC {
		t.Errorf("VolumeSnapshotClass %s of %s is not in the manifests", cephSnapshotClass, cephDriverName)
	}
}

// validImageFeatures mirrors csi-ceph's rbd.ParseFeatures.
func validImageFeatures(s string) error {
	set := map[string]bool{}
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		switch n {
		case "layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten":
			set[n] = true
		default:
			return fmt.Errorf("feature %q is not supported", n)
		}
	}
	if set["object-map"] && !set["exclusive-lock"] {
		return errors.New("object-map needs exclusive-lock")
	}
	if set["fast-diff"] && !set["object-map"] {
		return errors.New("fast-diff needs object-map")
	}
	return nil
}

// ---------------------------------------------------------------------------
// csi-ceph's cluster config.

var clusterIDRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,36}$`)

// parseCephConfig checks a config.json the way csi-ceph's ParseClusters
// does (plus exact key names) and returns its clusterIDs.
func parseCephConfig(b []byte) ([]string, error) {
	var list []map[string]json.RawMessage
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("want a JSON list of objects: %w", err)
	}
	if len(list) == 0 {
		return nil, errors.New("no cluster")
	}
	var ids []string
	for i, c := range list {
		var id string
		var mons []string
		if err := json.Unmarshal(c["clusterID"], &id); err != nil || !clusterIDRe.MatchString(id) {
			return nil, fmt.Errorf("entry %d: clusterID must be 1 to 36 letters, digits, '-', '_' or '.' (%s)", i, c["clusterID"])
		}
		if slices.Contains(ids, id) {
			return nil, fmt.Errorf("clusterID %q appears twice", id)
		}
		if raw, ok := c["cephFS"]; ok {
			var fs map[string]json.RawMessage
			var group string
			if err := json.Unmarshal(raw, &fs); err != nil {
				return nil, fmt.Errorf("cluster %q: cephFS must be an object", id)
			}
			for k, v := range fs {
				if k != "subvolumeGroup" || json.Unmarshal(v, &group) != nil || group == "" || strings.ContainsAny(group, "/ ") {
					return nil, fmt.Errorf("cluster %q: cephFS takes subvolumeGroup, a name (got %s: %s)", id, k, v)
				}
			}
		}
		if err := json.Unmarshal(c["monitors"], &mons); err != nil || len(mons) == 0 {
			return nil, fmt.Errorf("cluster %q: monitors must be a non-empty list of \"host:port\" strings", id)
		}
		for _, m := range mons {
			m = strings.TrimPrefix(strings.TrimPrefix(m, "v1:"), "v2:")
			host, port, err := net.SplitHostPort(m)
			p, perr := strconv.Atoi(port)
			if err != nil || host == "" || strings.ContainsAny(host, " ,;/") || perr != nil || p < 1 || p > 65535 {
				return nil, fmt.Errorf("cluster %q: monitor %q is not host:port", id, m)
			}
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// cephConfigRef is where a csi-ceph container reads --cluster-config from.
type cephConfigRef struct{ ns, configMap, key string }

// cephConfigOf resolves a csi-ceph container's --cluster-config to a key of
// a ConfigMap volume.
func cephConfigOf(s *corev1.PodSpec, c *corev1.Container, ns string) (cephConfigRef, error) {
	f, _ := flags(c)
	p, ok := flag1(f, "cluster-config")
	if !ok {
		p = "/etc/csi-ceph/config.json"
	}
	m, rel, ok := mountFor(c, p)
	if !ok {
		return cephConfigRef{}, fmt.Errorf("--cluster-config %s is on no volume mount", p)
	}
	v := volumeNamed(s, m.Name)
	if v == nil || v.ConfigMap == nil {
		return cephConfigRef{}, fmt.Errorf("--cluster-config %s is not on a ConfigMap volume", p)
	}
	key := rel
	if len(v.ConfigMap.Items) > 0 {
		key = ""
		for _, it := range v.ConfigMap.Items {
			if path.Clean(it.Path) == rel {
				key = it.Key
			}
		}
		if key == "" {
			return cephConfigRef{}, fmt.Errorf("--cluster-config %s: volume %s projects no item at %s", p, v.Name, rel)
		}
	}
	return cephConfigRef{ns, v.ConfigMap.Name, key}, nil
}

// cephClusterIDs parses the cluster config every csi-ceph container reads
// and returns the clusterIDs (the same config for all of them).
func cephClusterIDs(t *testing.T, objs []*object) map[string]bool {
	t.Helper()
	refs := map[cephConfigRef]bool{}
	for _, w := range workloads(objs) {
		for _, c := range allContainers(w.spec()) {
			if imageName(c.Image) != "csi-ceph" {
				continue
			}
			ref, err := cephConfigOf(w.spec(), c, w.o.ns())
			if err != nil {
				t.Errorf("%s: container %s: %v", w.o, c.Name, err)
				continue
			}
			refs[ref] = true
		}
	}
	if len(refs) != 1 {
		t.Errorf("csi-ceph containers read %d different cluster configs (%v), want one", len(refs), refs)
	}
	ids := map[string]bool{}
	for ref := range refs {
		cm := lookup[corev1.ConfigMap](objs, ref.ns, ref.configMap)
		if cm == nil || !configMapHasKey(cm, ref.key) {
			t.Errorf("cluster config: ConfigMap %s/%s key %s is not in the manifests", ref.ns, ref.configMap, ref.key)
			continue
		}
		got, err := parseCephConfig([]byte(cm.Data[ref.key]))
		if err != nil {
			t.Errorf("ConfigMap %s/%s key %s: %v", ref.ns, ref.configMap, ref.key, err)
		}
		for _, id := range got {
			ids[id] = true
		}
	}
	return ids
}

func TestCephClusterConfig(t *testing.T) {
	objs := load(t)
	cm := lookup[corev1.ConfigMap](objs, cephNamespace, cephConfigMap)
	if cm == nil {
		t.Fatalf("ConfigMap %s/%s is not in the manifests", cephNamespace, cephConfigMap)
	}
	ids, err := parseCephConfig([]byte(cm.Data["config.json"]))
	if err != nil {
		t.Fatalf("ConfigMap %s config.json: %v", cephConfigMap, err)
	}
	got := cephClusterIDs(t, objs)
	if len(got) != len(ids) || !slices.ContainsFunc(ids, func(id string) bool { return got[id] }) {
		t.Errorf("csi-ceph containers read clusters %v, ConfigMap %s has %v", got, cephConfigMap, ids)
	}
	// The parser itself refuses what csi-ceph refuses.
	for _, bad := range []string{`[]`, `{}`, `[{"clusterID": "a"}]`, `[{"clusterID": "a", "monitors": []}]`,
		`[{"clusterid": "a", "monitors": ["h:1"]}]`, `[{"clusterID": "a b", "monitors": ["h:1"]}]`,
		`[{"clusterID": "a", "monitors": ["h"]}]`, `[{"clusterID": "a", "monitors": ["h:1"]}, {"clusterID": "a", "monitors": ["h:1"]}]`,
		`[{"clusterID": "a", "monitors": ["h:1"], "cephFS": {"subVolumeGroup": "csi"}}]`, `[{"clusterID": "a", "monitors": ["h:1"], "cephFS": {"subvolumeGroup": ""}}]`} {
		if _, err := parseCephConfig([]byte(bad)); err == nil {
			t.Errorf("parseCephConfig accepted %s", bad)
		}
	}
	if _, err := parseCephConfig([]byte(`[{"clusterID": "c.1", "monitors": ["v2:[fd00::1]:3300", "mon-a:6789"], "cephFS": {"subvolumeGroup": "k8s"}}]`)); err != nil {
		t.Errorf("parseCephConfig refused a valid config: %v", err)
	}
}
