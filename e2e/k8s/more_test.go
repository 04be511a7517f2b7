package k8s_test

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// podWith is a tenant pod (an ENI of its VPC through cni-eni) running a
// shell command with PVCs mounted at /data, /data2, ...
func podWith(name, command string, pvcs ...string) string {
	var mounts, vols string
	for i, c := range pvcs {
		dir := "/data"
		if i > 0 {
			dir = "/data" + strconv.Itoa(i+1)
		}
		mounts += fmt.Sprintf("            - {name: v%d, mountPath: %s}\n", i, dir)
		vols += fmt.Sprintf("    - name: v%d\n      persistentVolumeClaim: {claimName: %s}\n", i, c)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
    - name: main
      image: %s
      imagePullPolicy: Never
      command: ["sh", "-c", %q]
      volumeMounts:
%s  volumes:
%s`, name, tenantImage, command, mounts, vols)
}

func pvc(name, class, mode, size, fromSnapshot string) string {
	src := ""
	if fromSnapshot != "" {
		src = fmt.Sprintf("  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: %s}\n", fromSnapshot)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %s
  namespace: default
spec:
  accessModes: [%s]
  storageClassName: %s
  resources:
    requests:
      storage: %s
%s`, name, mode, class, size, src)
}

// exec runs a shell command in a pod.
func (c *cluster) exec(t *testing.T, pod, command string) string {
	t.Helper()
	return strings.TrimSpace(c.k(t, "-n", "default", "exec", pod, "--", "sh", "-c", command))
}

func (c *cluster) cleanup(t *testing.T, kind string, names ...string) {
	t.Cleanup(func() {
		for _, n := range names {
			c.k(t, "-n", "default", "delete", kind, n, "--ignore-not-found", "--wait=true", "--timeout=2m")
		}
	})
}

// testVolumes: a snapshot restores into a new PVC; a PVC resize reaches
// the filesystem of the pod that uses it; two pods share an RWX CephFS
// volume; restarting the csi-ceph node plugin leaves a volume in use
// usable.
func testVolumes(t *testing.T) {
	v := newVPC(t, "vpc-st", "10.62.0.1/24")
	for i := 0; i < 6; i++ {
		v.eni(t, fmt.Sprintf("10.62.0.%d/24", 31+i))
	}
	for _, p := range []string{"writer", "restored", "share-1", "share-2"} {
		k8s.agentCLI(t, "eni", "assign", "default/"+p, "--vpc", "vpc-st")
	}
	token := "snap-" + randHex(6)

	// Pods are deleted before the claims they use (cleanups run last first).
	k8s.cleanup(t, "pvc", "src", "restored", "shared")
	k8s.cleanup(t, "volumesnapshot", "src-snap")
	k8s.apply(t, pvc("src", "ceph-rbd", "ReadWriteOnce", "64Mi", ""))
	k8s.apply(t, podWith("writer", "echo "+token+" > /data/token; sync; exec sleep infinity", "src"))
	k8s.cleanup(t, "pod", "writer")
	k8s.waitRunning(t, "writer")

	t.Run("snapshot restores into a new PVC", func(t *testing.T) {
		k8s.apply(t, `apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: src-snap
  namespace: default
spec:
  volumeSnapshotClassName: ceph-rbd-snapshot
  source: {persistentVolumeClaimName: src}
`)
		start := time.Now()
		k8s.k(t, "-n", "default", "wait", "--for=jsonpath={.status.readyToUse}=true", "volumesnapshot/src-snap", "--timeout=3m")
		t.Logf("snapshot ready in %v", time.Since(start).Round(time.Millisecond))
		k8s.apply(t, pvc("restored", "ceph-rbd", "ReadWriteOnce", "64Mi", "src-snap"))
		k8s.apply(t, podWith("restored", "exec sleep infinity", "restored"))
		k8s.cleanup(t, "pod", "restored")
		k8s.waitRunning(t, "restored")
		if got := k8s.exec(t, "restored", "cat /data/token"); got != token {
			t.Errorf("the restored volume reads %q, the snapshot's source had %q", got, token)
		}
	})

	t.Run("resize reaches the filesystem", func(t *testing.T) {
		// XFS: growing a mounted ext4 takes CAP_SYS_RESOURCE (its resize
		// ioctl), which this machine's root lacks; XFS's takes
		// CAP_SYS_ADMIN. XFS's smallest filesystem is 300 MiB.
		sc := k8s.k(t, "get", "storageclass", "ceph-rbd", "-o", "yaml")
		sc = strings.Replace(sc, "name: ceph-rbd\n", "name: ceph-rbd-xfs\n", 1)
		sc = strings.Replace(sc, "csi.storage.k8s.io/fstype: ext4", "csi.storage.k8s.io/fstype: xfs", 1)
		sc = regexp.MustCompile(`(?m)^  (uid|resourceVersion|creationTimestamp): .*\n`).ReplaceAllString(sc, "")
		k8s.apply(t, sc)
		t.Cleanup(func() { k8s.k(t, "delete", "storageclass", "ceph-rbd-xfs", "--ignore-not-found") })
		k8s.agentCLI(t, "eni", "assign", "default/grower", "--vpc", "vpc-st")
		k8s.cleanup(t, "pvc", "grown")
		k8s.apply(t, pvc("grown", "ceph-rbd-xfs", "ReadWriteOnce", "320Mi", ""))
		k8s.apply(t, podWith("grower", "echo "+token+" > /data/token; sync; exec sleep infinity", "grown"))
		k8s.cleanup(t, "pod", "grower")
		k8s.waitRunning(t, "grower")
		before, _ := strconv.ParseInt(k8s.exec(t, "grower", "df -B1 --output=size /data | tail -1"), 10, 64)
		k8s.k(t, "-n", "default", "patch", "pvc", "grown", "--type=merge", "-p", `{"spec":{"resources":{"requests":{"storage":"480Mi"}}}}`)
		start := time.Now()
		eventually(t, 3*time.Minute, "the filesystem grown", func() error {
			after, _ := strconv.ParseInt(k8s.exec(t, "grower", "df -B1 --output=size /data | tail -1"), 10, 64)
			if after < before+(120<<20) {
				return fmt.Errorf("the filesystem is %d bytes (was %d)", after, before)
			}
			return nil
		})
		after, _ := strconv.ParseInt(k8s.exec(t, "grower", "df -B1 --output=size /data | tail -1"), 10, 64)
		t.Logf("PVC 320Mi → 480Mi: the filesystem grew from %d to %d bytes in %v, online", before, after, time.Since(start).Round(time.Millisecond))
		if got := k8s.exec(t, "grower", "cat /data/token"); got != token {
			t.Errorf("after the resize the volume reads %q", got)
		}
	})

	t.Run("two pods share an RWX CephFS volume", func(t *testing.T) {
		k8s.apply(t, pvc("shared", "ceph-cephfs", "ReadWriteMany", "64Mi", ""))
		msg := "shared-" + randHex(6)
		k8s.apply(t, podWith("share-1", "echo "+msg+" > /data/msg; exec sleep infinity", "shared"))
		k8s.apply(t, podWith("share-2", "exec sleep infinity", "shared"))
		k8s.cleanup(t, "pod", "share-1", "share-2")
		k8s.waitRunning(t, "share-1")
		k8s.waitRunning(t, "share-2")
		if got := k8s.exec(t, "share-2", "cat /data/msg"); got != msg {
			t.Errorf("share-2 reads %q, share-1 wrote %q", got, msg)
		}
		k8s.exec(t, "share-2", "echo back > /data/back")
		if got := k8s.exec(t, "share-1", "cat /data/back"); got != "back" {
			t.Errorf("share-1 reads %q of share-2's write", got)
		}
	})

	t.Run("a node plugin restart leaves the volume usable", func(t *testing.T) {
		k8s.k(t, "-n", "csi-ceph", "delete", "pod", "-l", "app.kubernetes.io/component=node", "--wait=true", "--timeout=2m")
		k8s.k(t, "-n", "csi-ceph", "rollout", "status", "daemonset/csi-ceph-node", "--timeout=3m")
		k8s.exec(t, "writer", "echo again >> /data/token; sync")
		if got := k8s.exec(t, "writer", "cat /data/token"); got != token+"\nagain" {
			t.Errorf("after the node plugin's restart the volume reads %q", got)
		}
	})
}

// testProbes: a pod's probe, rewritten to the agent's probe endpoint as
// the README says, passes through the kubelet; a closed port fails it.
func testProbes(t *testing.T) {
	v := newVPC(t, "vpc-pr", "10.63.0.1/24")
	v.eni(t, "10.63.0.41/24")
	k8s.agentCLI(t, "eni", "assign", "default/probed", "--vpc", "vpc-pr")
	// The livenessprobe image listens on --health-port whatever its
	// driver: a TCP port to probe.
	k8s.apply(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: probed
  namespace: default
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false
  containers:
    - name: main
      image: registry.k8s.io/sig-storage/livenessprobe:v2.15.0
      imagePullPolicy: Never
      args: ["--health-port=8080", "--csi-address=/tmp/none"]
      readinessProbe:
        httpGet: {host: 127.0.0.1, port: 9807, path: /probe/default/probed/tcp/8080}
        periodSeconds: 2
    - name: closed
      image: registry.k8s.io/sig-storage/livenessprobe:v2.15.0
      imagePullPolicy: Never
      args: ["--health-port=8081", "--csi-address=/tmp/none"]
      readinessProbe:
        httpGet: {host: 127.0.0.1, port: 9807, path: /probe/default/probed/tcp/8099}
        periodSeconds: 2
`))
	k8s.cleanup(t, "pod", "probed")
	eventually(t, 2*time.Minute, "the probed container Ready", func() error {
		var p struct {
			Status struct {
				ContainerStatuses []struct {
					Name  string `json:"name"`
					Ready bool   `json:"ready"`
				} `json:"containerStatuses"`
			} `json:"status"`
		}
		k8s.jsonOf(t, &p, "-n", "default", "get", "pod", "probed")
		ready := map[string]bool{}
		for _, c := range p.Status.ContainerStatuses {
			ready[c.Name] = c.Ready
		}
		if !ready["main"] {
			return fmt.Errorf("main is not Ready: %+v", p.Status.ContainerStatuses)
		}
		if ready["closed"] {
			t.Errorf("a probe of a closed port passed")
		}
		return nil
	})
}
