package manifests

// manifests/monitoring: the PrometheusRule (its alerts pass `promtool
// check rules` and the unit tests of testdata/rules_test.yaml under
// `promtool test rules`, and each has a runbook in the README), the
// PodMonitors (they select the workloads defined here, by their named
// ports), and the Grafana dashboard (well-formed, every panel queried).
// That every metric the rules and the dashboard name exists in a real
// scrape is e2e/monitoring's test.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// The prometheus-operator kinds, as far as these manifests use them
// (decoded strictly like the others: a field not here is refused).
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []ruleGroup `json:"groups"`
	} `json:"spec"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type podMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path,omitempty"`
			Interval    string `json:"interval,omitempty"`
			Relabelings []struct {
				TargetLabel string `json:"targetLabel"`
				Replacement string `json:"replacement"`
				Action      string `json:"action,omitempty"`
			} `json:"relabelings,omitempty"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

func init() {
	kinds[gvk{"monitoring.coreos.com/v1", "PrometheusRule"}] = kindInfo{func() any { return &prometheusRule{} }, true}
	kinds[gvk{"monitoring.coreos.com/v1", "PodMonitor"}] = kindInfo{func() any { return &podMonitor{} }, true}
}

// promtool finds Debian's promtool: $NODEINFRA_PROMTOOL (make test sets
// it, see e2e/setup/promtool.sh), else the PATH.
func promtool(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("NODEINFRA_PROMTOOL"); p != "" {
		return p
	}
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("needs promtool: make test provides it (NODEINFRA_PROMTOOL), or install Debian's prometheus package")
	}
	return p
}

func TestPrometheusRule(t *testing.T) {
	var rules []*prometheusRule
	each(load(t), func(_ *object, v *prometheusRule) { rules = append(rules, v) })
	if len(rules) != 1 {
		t.Fatalf("want one PrometheusRule, got %d", len(rules))
	}
	pr := rules[0]
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	anchors := readmeAnchors(string(readme))
	var alerts []string
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts = append(alerts, r.Alert)
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("alert %s: severity %q", r.Alert, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[a] == "" {
					t.Errorf("alert %s has no %s", r.Alert, a)
				}
			}
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], "https://github.com/nodeinfra/nodeinfra#")
			if !ok || anchor != strings.ToLower(r.Alert) || !anchors[anchor] {
				t.Errorf("alert %s: runbook_url %q: want the README's #%s section", r.Alert, r.Annotations["runbook_url"], strings.ToLower(r.Alert))
			}
		}
	}
	// What an on-call needs (issue 13): agent down, no free ENI with pods
	// waiting, ENI missing, sandbox failures, CNI p99, CSI error ratio,
	// volume abnormal.
	for _, want := range []string{"NodeAgentDown", "NodeAgentNoFreeENI", "NodeAgentENIMissing", "NodeAgentSandboxFailures",
		"NodeAgentCNISlow", "CSICephErrorRatio", "CSICephVolumeAbnormal"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}

	// promtool reads the groups as Prometheus does: the spec's groups in a
	// rule file, with the unit tests beside it.
	tool := promtool(t)
	dir := t.TempDir()
	groups, err := yaml.Marshal(map[string]any{"groups": pr.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), groups, 0o644); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile("monitoring/testdata/rules_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules_test.yaml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "rules", "rules.yaml"}, {"test", "rules", "rules_test.yaml"}} {
		cmd := exec.Command(tool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		} else {
			t.Logf("promtool %s: %s", strings.Join(args, " "), strings.Join(strings.Fields(string(out)), " "))
		}
	}
	// Every alert has a unit test.
	for _, a := range alerts {
		if !strings.Contains(string(tests), "alertname: "+a+"\n") {
			t.Errorf("alert %s has no promtool unit test", a)
		}
	}
}

// readmeAnchors are the GitHub anchors of the README's headings.
func readmeAnchors(md string) map[string]bool {
	out := map[string]bool{}
	strip := regexp.MustCompile(`[^a-z0-9 _-]`)
	for _, l := range strings.Split(md, "\n") {
		if h, ok := strings.CutPrefix(l, "#"); ok {
			h = strings.TrimLeft(h, "#")
			a := strip.ReplaceAllString(strings.ToLower(strings.TrimSpace(h)), "")
			out[strings.ReplaceAll(a, " ", "-")] = true
		}
	}
	return out
}

func TestPodMonitors(t *testing.T) {
	objs := load(t)
	var mons []*podMonitor
	each(objs, func(_ *object, v *podMonitor) { mons = append(mons, v) })
	if len(mons) == 0 {
		t.Fatal("no PodMonitor")
	}
	jobs := map[string]bool{}
	for _, m := range mons {
		sel, err := metav1.LabelSelectorAsSelector(&m.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Errorf("PodMonitor %s: selector %v: %v", m.Name, m.Spec.Selector, err)
			continue
		}
		// The pods it selects: those of the workloads defined here, in the
		// namespaces it watches.
		var pods []corev1.PodTemplateSpec
		for _, w := range workloads(objs) {
			if slices.Contains(m.Spec.NamespaceSelector.MatchNames, w.o.ns()) && sel.Matches(labels.Set(w.tmpl.Labels)) {
				pods = append(pods, *w.tmpl)
			}
		}
		if len(pods) == 0 {
			t.Errorf("PodMonitor %s selects no workload of manifests/", m.Name)
		}
		for _, ep := range m.Spec.PodMetricsEndpoints {
			for _, p := range pods {
				found := false
				for _, c := range p.Spec.Containers {
					for _, cp := range c.Ports {
						found = found || cp.Name == ep.Port
					}
				}
				if !found {
					t.Errorf("PodMonitor %s: endpoint port %q is no named port of the pods it selects", m.Name, ep.Port)
				}
			}
			job := ""
			for _, r := range ep.Relabelings {
				if r.TargetLabel == "job" {
					job = r.Replacement
				}
			}
			if job == "" {
				t.Errorf("PodMonitor %s: port %s sets no job label (the rules and the dashboard select on it)", m.Name, ep.Port)
			}
			jobs[job] = true
		}
	}
	if !jobs["nodeagent"] {
		t.Error(`no PodMonitor endpoint with job "nodeagent" (the rules' NodeAgentDown selects it)`)
	}
}

func TestDashboard(t *testing.T) {
	b, err := os.ReadFile("monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	exprs, err := DashboardExprs(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(exprs) < 10 {
		t.Errorf("the dashboard has only %d queries", len(exprs))
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID    int    `json:"id"`
			Type  string `json:"type"`
			Title string `json:"title"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
	}
	if d.UID == "" {
		t.Error("the dashboard has no uid")
	}
}

// DashboardExprs returns the PromQL of every panel target of a Grafana
// dashboard; a panel without a query is an error.
func DashboardExprs(b []byte) ([]string, error) {
	var d struct {
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	var out []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			return nil, fmt.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				return nil, fmt.Errorf("panel %q has an empty query", p.Title)
			}
			out = append(out, tg.Expr)
		}
	}
	return out, nil
}
