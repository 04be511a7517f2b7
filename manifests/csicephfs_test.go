package manifests

// csi-ceph's CephFS driver: its CSIDriver, workloads, StorageClass and
// VolumeSnapshotClass (the workloads' generic checks are in
// csiceph_test.go).

import (
	"slices"
	"sort"
	"strings"
	"testing"

	snapshotv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
)

const (
	cephFSDriverName    = "cephfs.csi.nodeinfra.dev"
	cephFSController    = "csi-cephfs-controller"
	cephFSNode          = "csi-cephfs-node"
	cephFSStorageClass  = "ceph-cephfs"
	cephFSSnapshotClass = "ceph-cephfs-snapshot"
)

func TestCephFSDriverAndClasses(t *testing.T) {
	objs := load(t)
	var d *storagev1.CSIDriver
	each(objs, func(_ *object, c *storagev1.CSIDriver) {
		if c.Name == cephFSDriverName {
			d = c
		}
	})
	if d == nil {
		t.Fatalf("CSIDriver %s is not in the manifests", cephFSDriverName)
	}
	if d.Spec.AttachRequired == nil || *d.Spec.AttachRequired {
		t.Errorf("CSIDriver %s: attachRequired must be false (nothing to attach; no csi-attacher runs)", d.Name)
	}
	if d.Spec.FSGroupPolicy == nil || *d.Spec.FSGroupPolicy != storagev1.FileFSGroupPolicy {
		t.Errorf("CSIDriver %s: fsGroupPolicy must be File", d.Name)
	}
	if !slices.Equal(d.Spec.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
		t.Errorf("CSIDriver %s: volumeLifecycleModes %v, want [Persistent]", d.Name, d.Spec.VolumeLifecycleModes)
	}
	clusterIDs := cephClusterIDs(t, objs)
	checkCluster := func(o *object, params map[string]string) {
		if params["clusterID"] == "" || params["fsName"] == "" {
			t.Errorf("%s: parameters clusterID and fsName are required", o)
		} else if !clusterIDs[params["clusterID"]] {
			t.Errorf("%s: clusterID %q is not in csi-ceph's cluster config", o, params["clusterID"])
		}
	}
	checkSecrets := func(o *object, secs map[string]*corev1.Secret, need ...string) {
		for _, p := range need {
			sec, ok := secs[p]
			if !ok {
				t.Errorf("%s: no %s secret", o, p)
				continue
			}
			for _, k := range []string{"userID", "userKey"} {
				if !secretHasKey(sec, k) {
					t.Errorf("%s: %s secret %s/%s has no key %s", o, p, sec.Namespace, sec.Name, k)
				}
			}
		}
	}
	sawSC := false
	each(objs, func(o *object, sc *storagev1.StorageClass) {
		if sc.Provisioner != cephFSDriverName {
			return
		}
		secs := checkCSIParams(t, objs, o, sc.Parameters)
		// What the CephFS driver's CreateVolume accepts (ceph-csi's names).
		for k, v := range sc.Parameters {
			switch k {
			case "clusterID", "fsName":
			case "pool":
				if v == "" {
					t.Errorf("%s: pool is empty", o)
				}
			case "mounter":
				if v != mapper.CephFSKernel && v != mapper.CephFSFuse {
					t.Errorf("%s: mounter %q: want kernel or fuse", o, v)
				}
			case "kernelMountOptions", "fuseMountOptions":
				if _, err := mapper.ParseFSMountOptions(v); err != nil {
					t.Errorf("%s: %s: %v", o, k, err)
				}
			case "csi.storage.k8s.io/fstype":
				t.Errorf("%s: a CephFS volume has no fstype", o)
			default:
				if !strings.HasPrefix(k, "csi.storage.k8s.io/") {
					t.Errorf("%s: the CephFS driver refuses parameter %q", o, k)
				}
			}
		}
		checkCluster(o, sc.Parameters)
		checkSecrets(o, secs, "provisioner", "controller-expand", "node-stage")
		if sc.Name != cephFSStorageClass {
			return
		}
		sawSC = true
		if sc.ReclaimPolicy == nil || *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
			t.Errorf("%s: reclaimPolicy must be Delete", o)
		}
		if sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			t.Errorf("%s: allowVolumeExpansion must be true", o)
		}
	})
	if !sawSC {
		t.Errorf("StorageClass %s of %s is not in the manifests", cephFSStorageClass, cephFSDriverName)
	}
	sawVSC := false
	each(objs, func(o *object, vsc *snapshotv1.VolumeSnapshotClass) {
		if vsc.Driver != cephFSDriverName {
			return
		}
		checkCluster(o, vsc.Parameters)
		checkSecrets(o, checkCSIParams(t, objs, o, vsc.Parameters), "snapshotter")
		if vsc.Name == cephFSSnapshotClass {
			sawVSC = true
			if vsc.DeletionPolicy != snapshotv1.VolumeSnapshotContentDelete {
				t.Errorf("%s: deletionPolicy %q, want Delete", o, vsc.DeletionPolicy)
			}
		}
	})
	if !sawVSC {
		t.Errorf("VolumeSnapshotClass %s of %s is not in the manifests", cephFSSnapshotClass, cephFSDriverName)
	}
}

// The CephFS workloads run beside the RBD ones: their own pods (no
// selector overlap), no attacher, and on the node a health port of their
// own (both node plugins share the host's network).
func TestCephFSWorkloads(t *testing.T) {
	objs := load(t)
	ctrl := lookup[appsv1.Deployment](objs, cephNamespace, cephFSController)
	node := lookup[appsv1.DaemonSet](objs, cephNamespace, cephFSNode)
	if ctrl == nil || node == nil {
		t.Fatalf("Deployment %s/%s or DaemonSet %s/%s missing", cephNamespace, cephFSController, cephNamespace, cephFSNode)
	}
	images := func(s *corev1.PodSpec) []string {
		var out []string
		for _, c := range s.Containers {
			out = append(out, imageName(c.Image))
		}
		sort.Strings(out)
		return out
	}
	if got, want := images(&ctrl.Spec.Template.Spec), []string{"csi-ceph", "csi-provisioner", "csi-resizer", "csi-snapshotter", "livenessprobe"}; !slices.Equal(got, want) {
		t.Errorf("Deployment %s runs %v, want %v", cephFSController, got, want)
	}
	if got, want := images(&node.Spec.Template.Spec), []string{"csi-ceph", "csi-node-driver-registrar", "livenessprobe"}; !slices.Equal(got, want) {
		t.Errorf("DaemonSet %s runs %v, want %v", cephFSNode, got, want)
	}
	for _, c := range append(ctrl.Spec.Template.Spec.Containers, node.Spec.Template.Spec.Containers...) {
		if imageName(c.Image) != "csi-ceph" {
			continue
		}
		f, _ := flags(&c)
		if typ, _ := flag1(f, "type"); typ != "cephfs" {
			t.Errorf("%s: --type %q, want cephfs", c.Name, typ)
		}
	}
	// No two workloads of the namespace select each other's pods.
	sel := map[string]string{}
	for _, w := range workloads(objs) {
		if w.o.ns() != cephNamespace {
			continue
		}
		key := w.o.kind + "/" + strings.Join(sortedLabels(w.spec(), w), ",")
		if other, dup := sel[key]; dup {
			t.Errorf("%s and %s have the same pod labels", w.o, other)
		}
		sel[key] = w.o.String()
	}
	// Host ports of the node plugins (hostNetwork) differ.
	ports := map[int32]string{}
	each(objs, func(o *object, ds *appsv1.DaemonSet) {
		if ds.Namespace != cephNamespace || !ds.Spec.Template.Spec.HostNetwork {
			return
		}
		for _, c := range ds.Spec.Template.Spec.Containers {
			for _, p := range c.Ports {
				if other, dup := ports[p.ContainerPort]; dup {
					t.Errorf("%s and %s both use host port %d", o, other, p.ContainerPort)
				}
				ports[p.ContainerPort] = o.String()
			}
		}
	})
}

func sortedLabels(_ *corev1.PodSpec, w workload) []string {
	var out []string
	var labels map[string]string
	switch obj := w.o.obj.(type) {
	case *appsv1.Deployment:
		labels = obj.Spec.Template.Labels
	case *appsv1.DaemonSet:
		labels = obj.Spec.Template.Labels
	}
	for k, v := range labels {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
