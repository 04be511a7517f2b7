// Package k8s_test drives the suite through a real Kubernetes: the
// single-node cluster of up.sh (kube-apiserver, controller-manager,
// scheduler and kubelet v1.34 with containerd 1.6), the images of `make
// images`, the manifests installed with kustomize as the README tells an
// admin, the run's Ceph cluster. `make e2e-k8s` brings it all up, runs
// these tests and tears it down; without NODEINFRA_K8S_DIR they skip.
package k8s_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cluster is the running cluster of up.sh.
type cluster struct {
	dir string
	env map[string]string // cluster.env
	bin string            // our binaries (NODEINFRA_BIN)
}

var k8s *cluster

func TestMain(m *testing.M) {
	dir := os.Getenv("NODEINFRA_K8S_DIR")
	if dir == "" {
		fmt.Println("SKIP e2e/k8s: needs NODEINFRA_K8S_DIR, a cluster of e2e/k8s/up.sh (make e2e-k8s starts one)")
		os.Exit(0)
	}
	env, err := readEnv(filepath.Join(dir, "cluster.env"))
	if err != nil {
		fmt.Println("e2e/k8s:", err)
		os.Exit(1)
	}
	k8s = &cluster{dir: dir, env: env, bin: os.Getenv("NODEINFRA_BIN")}
	os.Exit(m.Run())
}

// readEnv reads KEY=VALUE lines.
func readEnv(p string) (map[string]string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			out[k] = strings.Trim(v, `"'`)
		}
	}
	return out, sc.Err()
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// kubectl runs kubectl against the cluster with stdin (may be empty).
func (c *cluster) kubectl(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.env["K8S_BIN"], "kubectl"), append([]string{"--kubeconfig", c.env["KUBECONFIG"]}, args...)...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// k runs kubectl and fails the test on error.
func (c *cluster) k(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := c.kubectl(ctx, "", args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// apply applies a YAML document stream.
func (c *cluster) apply(t testing.TB, yaml string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := c.kubectl(ctx, yaml, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

// jsonOf gets an object as JSON into v.
func (c *cluster) jsonOf(t testing.TB, v any, args ...string) {
	t.Helper()
	out := c.k(t, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("kubectl %v: %v", args, err)
	}
}

// eventually polls f until it returns nil or the time is up.
func eventually(t testing.TB, within time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v: %v", what, within, err)
		}
		time.Sleep(time.Second)
	}
}

// debug prints what a failed test needs: the pods, events and the
// suite's logs.
func (c *cluster) debug(t *testing.T, namespaces ...string) {
	if !t.Failed() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, ns := range namespaces {
		out, err := c.kubectl(ctx, "", "-n", ns, "get", "pods", "-o", "wide")
		t.Logf("pods in %s (%v):\n%s", ns, err, out)
		out, err = c.kubectl(ctx, "", "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
		t.Logf("events in %s (%v):\n%s", ns, err, tail(out, 30))
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// agentCLI runs our nodeagent CLI against the agent the DaemonSet runs,
// through its socket on the host.
func (c *cluster) agentCLI(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(c.bin, "nodeagent"), append(args, "--socket", "/run/nodeagent/nodeagent.sock")...).CombinedOutput()
	if err != nil {
		t.Fatalf("nodeagent %v: %v: %s", args, err, out)
	}
	return string(out)
}
