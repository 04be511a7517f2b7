package k8s_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// repo is the repository's root (the tests run in e2e/k8s).
const repo = "../.."

// copyDir copies the component folder src (files only, one level, and
// its subfolders) to dst.
func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp %s %s: %v: %s", src, dst, err, out)
	}
}

func editFile(t testing.TB, p string, edit func(string) string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(edit(string(b))), 0o644); err != nil {
		t.Fatal(err)
	}
}

// controllerEnv is the one thing this cluster needs that a real one does
// not: without kube-proxy the kubernetes Service leads nowhere, so the
// controllers' sidecars (on the host's network) are told where the API
// server is. And one replica: this cluster has one node, and the
// controllers' replicas need a node each.
func controllerPatch(name string, containers []string) string {
	env := fmt.Sprintf(`[{"name":"KUBERNETES_SERVICE_HOST","value":%q},{"name":"KUBERNETES_SERVICE_PORT","value":%q}]`,
		k8s.env["KUBERNETES_SERVICE_HOST"], k8s.env["KUBERNETES_SERVICE_PORT"])
	var cs []string
	for _, c := range containers {
		cs = append(cs, fmt.Sprintf(`{"name":%q,"env":%s}`, c, env))
	}
	return fmt.Sprintf(`  - patch: '{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":%q,"namespace":"csi-ceph"},"spec":{"replicas":1,"template":{"spec":{"containers":[%s]}}}}'
`, name, strings.Join(cs, ","))
}

// install installs the suite as the README tells an admin: the agent as it
// is; csi-ceph with config.json edited for the run's Ceph cluster; the
// examples edited (the admin user's key, the cluster's ID); the snapshot
// CRDs and controller, as a cluster with snapshots has them.
func install(t *testing.T, cl testutil.CephCluster) {
	t.Helper()
	start := time.Now()
	k8s.k(t, "apply", "-k", filepath.Join(repo, "manifests/nodeagent"))

	tmp := t.TempDir()
	csi := filepath.Join(tmp, "csi-ceph")
	copyDir(t, filepath.Join(repo, "manifests/csi-ceph"), csi)
	mons, _ := json.Marshal(cl.Monitors)
	if err := os.WriteFile(filepath.Join(csi, "config.json"), []byte(fmt.Sprintf(`[{"clusterID": %q, "monitors": %s, "cephFS": {"subvolumeGroup": "csi"}}]`+"\n", cl.ClusterID, mons)), 0o644); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(tmp, "test-cluster")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	kz := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../csi-ceph\npatches:\n" +
		controllerPatch("csi-ceph-controller", []string{"csi-provisioner", "csi-attacher", "csi-snapshotter", "csi-resizer"}) +
		controllerPatch("csi-cephfs-controller", []string{"csi-provisioner", "csi-snapshotter", "csi-resizer"})
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kz), 0o644); err != nil {
		t.Fatal(err)
	}
	k8s.k(t, "apply", "-k", overlay)

	ex := filepath.Join(csi, "examples")
	editFile(t, filepath.Join(ex, "secret-example.yaml"), func(s string) string {
		s = strings.Replace(s, "userID: kubernetes", "userID: admin", 1)
		return strings.Replace(s, `userKey: "<replace with the key of client.kubernetes>"`, fmt.Sprintf("userKey: %q", cl.AdminKey), 1)
	})
	for _, f := range []string{"storageclass.yaml", "storageclass-cephfs.yaml", "snapshotclass.yaml", "snapshotclass-cephfs.yaml"} {
		editFile(t, filepath.Join(ex, f), func(s string) string { return strings.ReplaceAll(s, "clusterID: ceph-1", "clusterID: "+cl.ClusterID) })
	}
	installSnapshotter(t)
	k8s.k(t, "apply", "-k", ex)

	k8s.k(t, "-n", "kube-system", "rollout", "status", "daemonset/nodeagent", "--timeout=4m")
	for _, w := range []string{"daemonset/csi-ceph-node", "daemonset/csi-cephfs-node", "deployment/csi-ceph-controller", "deployment/csi-cephfs-controller"} {
		k8s.k(t, "-n", "csi-ceph", "rollout", "status", w, "--timeout=4m")
	}
	t.Logf("suite installed and Ready in %v", time.Since(start).Round(time.Second))
}

// installSnapshotter installs the VolumeSnapshot CRDs (from the
// external-snapshotter client module the manifests test already uses)
// and its snapshot-controller, on the host's network with the API
// server's address, as the CSI sidecars.
func installSnapshotter(t *testing.T) {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/kubernetes-csi/external-snapshotter/client/v8").Output()
	if err != nil {
		t.Fatalf("find the external-snapshotter client module: %v", err)
	}
	crds := filepath.Join(strings.TrimSpace(string(out)), "config", "crd")
	for _, f := range []string{"snapshot.storage.k8s.io_volumesnapshotclasses.yaml", "snapshot.storage.k8s.io_volumesnapshotcontents.yaml", "snapshot.storage.k8s.io_volumesnapshots.yaml"} {
		k8s.k(t, "apply", "-f", filepath.Join(crds, f))
	}
	for _, crd := range []string{"volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots"} {
		k8s.k(t, "wait", "--for=condition=Established", "crd/"+crd+".snapshot.storage.k8s.io", "--timeout=60s")
	}
	img := snapshotControllerImage(t)
	k8s.apply(t, fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata:
  name: snapshot-controller
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: e2e-snapshot-controller
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: cluster-admin
subjects:
  - kind: ServiceAccount
    name: snapshot-controller
    namespace: kube-system
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: snapshot-controller
  namespace: kube-system
spec:
  replicas: 1
  selector:
    matchLabels: {app: snapshot-controller}
  template:
    metadata:
      labels: {app: snapshot-controller}
    spec:
      serviceAccountName: snapshot-controller
      hostNetwork: true
      containers:
        - name: snapshot-controller
          image: %s
          imagePullPolicy: Never
          args: ["--v=2", "--leader-election=false"]
          env:
            - {name: KUBERNETES_SERVICE_HOST, value: %q}
            - {name: KUBERNETES_SERVICE_PORT, value: %q}
`, img, k8s.env["KUBERNETES_SERVICE_HOST"], k8s.env["KUBERNETES_SERVICE_PORT"]))
	k8s.k(t, "-n", "kube-system", "rollout", "status", "deployment/snapshot-controller", "--timeout=3m")
}

// snapshotControllerImage is the snapshot-controller image `make
// k8s-images` imported (the snapshotter's version).
func snapshotControllerImage(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ctr", "-a", k8s.env["CONTAINERD_SOCKET"], "-n", "k8s.io", "images", "ls", "-q").Output()
	if err != nil {
		t.Fatalf("ctr images ls: %v", err)
	}
	for _, l := range strings.Fields(string(out)) {
		if strings.Contains(l, "/snapshot-controller:") {
			return l
		}
	}
	t.Fatalf("no snapshot-controller image in containerd (make k8s-images): %s", out)
	return ""
}
