// Package monitoring_test scrapes a real nodeagent and a real csi-ceph
// after real work (CNI commands through libcni, a sandbox under QEMU, a
// host group, a CSI volume on the run's Ceph cluster, calls that fail) and
// checks that the families the README promises are there with sane values,
// and that every metric the Grafana dashboard and the alert rules of
// manifests/monitoring name is in those scrapes.
package monitoring_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"sigs.k8s.io/yaml"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

var binDir string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("SKIP e2e/monitoring: needs root (network namespaces, cgroups)")
		os.Exit(0)
	}
	binDir = os.Getenv("NODEINFRA_BIN")
	if binDir == "" {
		fmt.Println("SKIP e2e/monitoring: needs NODEINFRA_BIN with the binaries of `make build` (make test sets it)")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// scrape is one /metrics body: its samples by series (name{labels}).
type scrape map[string]float64

// names are the metric names in the scrape.
func (s scrape) names() map[string]bool {
	out := map[string]bool{}
	for k := range s {
		name, _, _ := strings.Cut(k, "{")
		out[name] = true
	}
	return out
}

// value is the sample of the series with exactly these labels (in the
// exposition's order), and whether it is there.
func (s scrape) value(series string) (float64, bool) {
	v, ok := s[series]
	return v, ok
}

// sum adds the samples of name whose series contains every one of parts.
func (s scrape) sum(name string, parts ...string) float64 {
	var t float64
	for k, v := range s {
		n, _, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(k, p)
		}
		if ok {
			t += v
		}
	}
	return t
}

func parseScrape(body string) (scrape, error) {
	out := scrape{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndex(l, " ")
		if i < 0 {
			return nil, fmt.Errorf("bad line %q", l)
		}
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("bad value in %q", l)
		}
		out[l[:i]] = v
	}
	return out, sc.Err()
}

// get scrapes url from inside network namespace n (nil: this one).
func get(n ns.NetNS, url string) (scrape, error) {
	code, body, err := fabric.HTTPGet(n, url)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d", url, code)
	}
	return parseScrape(body)
}

// The agent after CNI ADD, CHECK and DEL of one pod, a failed ADD, a
// probe, a sandbox boot and a host group: every family is there and
// counts what happened.
func scrapeAgent(t *testing.T) scrape {
	t.Helper()
	parent := "/nodeinfra-e2e-mon-" + randHex(4)
	t.Cleanup(func() {
		if left, err := fabric.RemoveCgroup(parent); err != nil || len(left) > 0 {
			t.Errorf("cgroups left under %s: %v %v", parent, left, err)
		}
	})
	n := fabric.NewTestNode(t, filepath.Join(binDir, "nodeagent"), "--cgroup-parent", parent)
	n.LogLines = 40
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rt, err := fabric.NewRuntime(n.Fabric.Node, binDir, t.TempDir(), fabric.Conflist("1.1.0", n.Agent.Socket))
	if err != nil {
		t.Fatal(err)
	}
	v := n.VPC("vpc-mon", "10.77.0.1/24")
	eni := n.ENI(v, "10.77.0.5/24")
	n.ENI(v, "10.77.0.6/24")
	p := n.Pod("default", "scraped")
	n.CLI("eni", "assign", "default/scraped", "--mac", eni.MAC)
	if _, err := rt.Add(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := rt.Check(ctx, p); err != nil {
		t.Fatal(err)
	}
	// A probe of a closed port: it runs and fails.
	if _, err := n.Agent.CLI("probe", "default/scraped", "--port", "1"); err == nil {
		t.Error("probe of a closed port succeeded")
	}
	if err := rt.Del(ctx, p, true); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Add(ctx, n.Pod("default", "unassigned")); err == nil {
		t.Fatal("ADD of a pod without an ENI succeeded")
	}

	cl, err := agentclient.Dial(n.Agent.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := cl.DeleteSandbox(context.Background(), &apiv1.DeleteSandboxRequest{Id: "vm-mon"}); err != nil {
			t.Errorf("delete sandbox: %v", err)
		}
		cl.Close()
	})
	disk := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	sb, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: "vm-mon",
		Disks: []*apiv1.Disk{{Id: "data", Source: &apiv1.Disk_Path{Path: disk}}}}, Wait: true})
	if err != nil || sb.State != apiv1.Sandbox_READY {
		t.Fatalf("sandbox: %v %v", sb, err)
	}
	if _, err := cl.GetSandbox(ctx, &apiv1.GetSandboxRequest{Id: "nope"}); err == nil {
		t.Fatal("GetSandbox of an unknown ID succeeded")
	}
	n.CLI("group", "create", "mon", "--cpus", "0.5")
	t.Cleanup(func() { _, _ = n.Agent.CLI("group", "delete", "mon", "--force") })

	s, err := get(n.Fabric.Node, "http://"+n.Agent.MetricsAddr+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]float64{
		`nodeagent_cni_duration_seconds_count{code="0",command="ADD"}`:   1,
		`nodeagent_cni_duration_seconds_count{code="100",command="ADD"}`: 1,
		`nodeagent_cni_duration_seconds_count{code="0",command="CHECK"}`: 1,
		`nodeagent_cni_duration_seconds_count{code="0",command="DEL"}`:   1,
		`nodeagent_sandbox_boot_duration_seconds_count`:                  1,
		`nodeagent_sandboxes{state="Ready"}`:                             1,
		`nodeagent_eni_pool_size{state="free",vpc="vpc-mon"}`:            2,
		`nodeagent_probes_total{kind="tcp",result="failure"}`:            1,
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetSandbox",grpc_service="nodeinfra.nodeagent.v1.SandboxService",grpc_type="unary"}`: 1,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="CreateGroup",grpc_service="nodeinfra.nodeagent.v1.GroupService",grpc_type="unary"}`:        1,
	} {
		if got, ok := s.value(series); !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	for _, name := range []string{"nodeagent_sandbox_cpu_seconds_total", "nodeagent_sandbox_memory_bytes", "nodeagent_sandbox_memory_limit_bytes",
		"nodeagent_sandbox_disk_read_bytes_total"} {
		if v := s.sum(name, `sandbox="vm-mon"`); v <= 0 {
			t.Errorf("%s{sandbox=\"vm-mon\"} = %v, want > 0", name, v)
		}
	}
	if s.sum("nodeagent_build_info", `accel="tcg"`)+s.sum("nodeagent_build_info", `accel="kvm"`) != 1 {
		t.Errorf("nodeagent_build_info does not name the accelerator: %v", s.sum("nodeagent_build_info"))
	}
	if b, ok := s.value(`nodeagent_sandbox_boot_duration_seconds_sum`); !ok || b <= 0 || b > 60 {
		t.Errorf("boot duration sum %v", b)
	}
	return s
}

// exprNames returns the metric names a PromQL expression selects: what
// is left once strings, label matchers, ranges, grouping clauses and
// function calls are taken out.
func exprNames(expr string) []string {
	for _, re := range []string{`\b\d+(?:ms|s|m|h|d|w|y)\b`, `"(?:[^"\\]|\\.)*"`, `'(?:[^'\\]|\\.)*'`, `\{[^}]*\}`, `\[[^\]]*\]`,
		`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`} {
		expr = regexp.MustCompile(re).ReplaceAllString(expr, " ")
	}
	keywords := map[string]bool{"and": true, "or": true, "unless": true, "offset": true, "bool": true, "by": true,
		"without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
	var out []string
	tok := regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
	for _, m := range tok.FindAllString(expr, -1) {
		if strings.HasSuffix(m, "(") || keywords[strings.ToLower(m)] {
			continue // a function or an aggregation
		}
		out = append(out, m)
	}
	return out
}

func TestExprNames(t *testing.T) {
	got := exprNames(`histogram_quantile(0.99, sum by (command, le) (rate(nodeagent_cni_duration_seconds_bucket{code="0",x=~"a|b"}[5m]))) > 1 and on (vpc) sum(up{job="x"}) == 0 unless foo_total offset 5m`)
	want := []string{"nodeagent_cni_duration_seconds_bucket", "up", "foo_total"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("exprNames = %v, want %v", got, want)
	}
}

// monitoredNames are the metric names the dashboard and the rules use.
func monitoredNames(t *testing.T) map[string][]string {
	t.Helper()
	users := map[string][]string{}
	b, err := os.ReadFile("../../manifests/monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			for _, n := range exprNames(tg.Expr) {
				users[n] = append(users[n], "dashboard panel "+p.Title)
			}
		}
	}
	b, err = os.ReadFile("../../manifests/monitoring/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert string `json:"alert"`
					Expr  string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	for _, g := range r.Spec.Groups {
		for _, rule := range g.Rules {
			for _, n := range exprNames(rule.Expr) {
				users[n] = append(users[n], "alert "+rule.Alert)
			}
		}
	}
	if len(users) < 10 {
		t.Fatalf("only %d metric names found in the dashboard and rules: %v", len(users), users)
	}
	return users
}

func TestMonitoringMatchesScrapes(t *testing.T) {
	agent := scrapeAgent(t)
	csi := scrapeCSI(t)
	have := agent.names()
	for n := range csi.names() {
		have[n] = true
	}
	// Prometheus makes `up` itself for every target.
	have["up"] = true
	var missing []string
	for name, users := range monitoredNames(t) {
		if !have[name] {
			missing = append(missing, fmt.Sprintf("%s (used by %s)", name, strings.Join(users, ", ")))
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("no scrape has %s", m)
	}
}
