package k8s_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// testDatabase: a database-style StatefulSet on an RBD PVC writes, its
// pod is deleted and made again, and it reads what it wrote.
func testDatabase(t *testing.T) {
	v := newVPC(t, "vpc-db", "10.61.0.1/24")
	v.eni(t, "10.61.0.21/24")
	k8s.agentCLI(t, "eni", "assign", "default/db-0", "--vpc", "vpc-db")
	token := "written-" + randHex(6)
	k8s.apply(t, fmt.Sprintf(`apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: default
spec:
  serviceName: db
  replicas: 1
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      terminationGracePeriodSeconds: 1
      automountServiceAccountToken: false
      containers:
        - name: db
          image: %s
          imagePullPolicy: Never
          command: ["sh", "-c", "test -f /data/token || echo %s > /data/token; sync; exec sleep infinity"]
          volumeMounts:
            - {name: data, mountPath: /data}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: ceph-rbd
        resources:
          requests:
            storage: 64Mi
`, tenantImage, token))
	t.Cleanup(func() {
		k8s.k(t, "-n", "default", "delete", "statefulset", "db", "--wait=true", "--ignore-not-found")
		k8s.k(t, "-n", "default", "delete", "pod", "db-0", "--wait=true", "--ignore-not-found", "--timeout=2m")
		k8s.k(t, "-n", "default", "delete", "pvc", "data-db-0", "--wait=true", "--ignore-not-found", "--timeout=2m")
	})
	start := time.Now()
	eventually(t, 4*time.Minute, "db-0 Running", func() error {
		p := k8s.pod(t, "db-0")
		if p.Status.Phase != "Running" || len(p.Status.ContainerStatuses) == 0 || !p.Status.ContainerStatuses[0].Ready {
			return fmt.Errorf("db-0 is %s", p.Status.Phase)
		}
		return nil
	})
	t.Logf("db-0 Running on its RBD volume in %v", time.Since(start).Round(time.Millisecond))
	read := func() string {
		return strings.TrimSpace(k8s.k(t, "-n", "default", "exec", "db-0", "--", "cat", "/data/token"))
	}
	if got := read(); got != token {
		t.Fatalf("db-0 reads %q, wrote %q", got, token)
	}
	uid := k8s.k(t, "-n", "default", "get", "pod", "db-0", "-o", "jsonpath={.metadata.uid}")
	k8s.k(t, "-n", "default", "delete", "pod", "db-0", "--wait=true", "--timeout=2m")
	start = time.Now()
	eventually(t, 4*time.Minute, "db-0 made again and Running", func() error {
		p := k8s.pod(t, "db-0")
		now := k8s.k(t, "-n", "default", "get", "pod", "db-0", "-o", "jsonpath={.metadata.uid}")
		if now == uid || p.Status.Phase != "Running" || len(p.Status.ContainerStatuses) == 0 || !p.Status.ContainerStatuses[0].Ready {
			return fmt.Errorf("db-0 is %s (uid %s)", p.Status.Phase, now)
		}
		return nil
	})
	t.Logf("db-0 back in %v", time.Since(start).Round(time.Millisecond))
	if got := read(); got != token {
		t.Fatalf("after its rescheduling db-0 reads %q, wrote %q", got, token)
	}
}
