package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// commandPaths lists the arguments that name each command of the tree
// under c: [] for the root, ["eni"], ["eni", "add"], ...
func commandPaths(c *cobra.Command, prefix []string) [][]string {
	paths := [][]string{prefix}
	for _, sub := range c.Commands() {
		paths = append(paths, commandPaths(sub, append(append([]string(nil), prefix...), sub.Name()))...)
	}
	return paths
}

// Every command and verb answers --help (and -h, and `help`) with its
// usage on stdout and exit status 0; a group's help lists its verbs.
func TestHelp(t *testing.T) {
	t.Setenv("NODEAGENT_SOCKET", filepath.Join(t.TempDir(), "none.sock")) // no agent is asked
	paths := append(commandPaths(NewRoot(), nil),
		[]string{"completion"}, []string{"completion", "bash"}, []string{"completion", "zsh"}, []string{"completion", "fish"})
	root := NewRoot()
	for _, path := range paths {
		for _, h := range []string{"--help", "-h"} {
			args := append(append([]string(nil), path...), h)
			code, out, errOut := runCaptured(t, "", args...)
			if code != 0 || !strings.Contains(out, "Usage:") || errOut != "" {
				t.Errorf("%q: exit %d, stderr %q, stdout:\n%s", args, code, errOut, out)
			}
			if c, _, err := root.Find(path); err == nil && len(path) > 0 && c != root {
				if !strings.Contains(out, c.UseLine()) {
					t.Errorf("%q: help lacks the use line %q:\n%s", args, c.UseLine(), out)
				}
				for _, sub := range c.Commands() {
					if !strings.Contains(out, "  "+sub.Name()+" ") {
						t.Errorf("%q: help does not list %s:\n%s", args, sub.Name(), out)
					}
				}
			}
		}
		args := append([]string{"help"}, path...)
		if code, out, _ := runCaptured(t, "", args...); code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("%q: exit %d:\n%s", args, code, out)
		}
	}
	// exec's flags may follow its ID; so may --help.
	if code, out, _ := runCaptured(t, "", "sandbox", "exec", "box", "--help"); code != 0 || !strings.Contains(out, "Usage:") {
		t.Errorf("exec ID --help: exit %d:\n%s", code, out)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish"} {
		code, out, errOut := runCaptured(t, "", "completion", shell)
		if code != 0 || !strings.Contains(out, "nodeagent") || errOut != "" {
			t.Errorf("completion %s: exit %d, stderr %q, %d bytes", shell, code, errOut, len(out))
		}
	}
}

// Usage errors exit 2 before any agent is asked (there is none: a call
// would exit 1), with the error and a pointer to --help on stderr.
func TestUsageErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"--nope"},
		{"version", "extra"},
		{"completion"},
		{"completion", "tcsh"},
		{"eni"},
		{"eni", "frobnicate"},
		{"eni", "add"},
		{"eni", "add", "02:00:00:00:00:05"},
		{"eni", "add", "02:00:00:00:00:05", "--vpc", "v", "--ip", "10.0.0.2/24"},
		{"eni", "add", "02:00:00:00:00:05", "02:00:00:00:00:06", "--vpc", "v", "--ip", "10.0.0.2/24", "--gateway", "10.0.0.1"},
		{"eni", "add", "02:00:00:00:00:05", "--vpc", "v", "--ip", "10.0.0.2/24", "--gateway", "10.0.0.1", "--mtu", "-1"},
		{"eni", "add", "02:00:00:00:00:05", "--vpc", "v", "--ip", "10.0.0.2/24", "--gateway", "10.0.0.1", "-o", "xml"},
		{"eni", "assign"},
		{"eni", "assign", "web/frontend"},
		{"eni", "assign", "web/frontend", "--mac", "02:00:00:00:00:05", "--vpc", "v"},
		{"eni", "assign", "frontend", "--vpc", "v"},
		{"eni", "assign", "/frontend", "--vpc", "v"},
		{"eni", "assign", "web/", "--vpc", "v"},
		{"eni", "assign", "web/frontend", "other/pod", "--vpc", "v"},
		{"eni", "assign", "--pod", "web/frontend", "--vpc", "v"}, // the old syntax
		{"eni", "unassign"},
		{"eni", "unassign", "frontend"},
		{"eni", "unassign", "a/b", "c/d"},
		{"eni", "list", "extra"},
		{"eni", "list", "-o", "xml"},
		{"eni", "list", "--output=wide"},
		{"eni", "remove"},
		{"eni", "remove", "--mac", "02:00:00:00:00:05"}, // the old syntax
		{"eni", "remove", "a", "b"},
		{"attachments", "extra"},
		{"attachments", "-o", "xml"},
		{"status", "extra"},
		{"status", "-o", "xml"},
		{"status", "--socket", "relative.sock"},
		{"probe"},
		{"probe", "web/frontend"},
		{"probe", "web/frontend", "--port", "http"},
		{"probe", "web/frontend", "--port", "80", "--timeout", "soon"},
		{"probe", "frontend", "--port", "80"},
		{"probe", "a/b", "c/d", "--port", "80"},
	} {
		if !slices.Contains(args, "--socket") {
			args = append(args, "--socket", sock)
		}
		code, out, errOut := runCaptured(t, "", args...)
		if code != 2 {
			t.Errorf("%q: exit %d, want 2; stderr:\n%s", args, code, errOut)
			continue
		}
		if out != "" || !strings.HasPrefix(errOut, "nodeagent") || !strings.Contains(errOut, "--help' for usage") {
			t.Errorf("%q: stdout %q, stderr %q", args, out, errOut)
		}
	}
}

// An agent that cannot be reached is one line that names the socket and
// how to choose another; exit status 1.
func TestUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nodeagent.sock")
	for _, args := range [][]string{
		{"status"},
		{"eni", "list", "-o", "json"},
		{"eni", "assign", "a/b", "--vpc", "v"},
		{"sandbox", "get", "box"},
		{"sandbox", "events"},
		{"sandbox", "exec", "box", "--", "true"},
	} {
		for _, viaEnv := range []bool{false, true} {
			full := append([]string(nil), args...)
			if viaEnv {
				t.Setenv("NODEAGENT_SOCKET", sock)
			} else {
				t.Setenv("NODEAGENT_SOCKET", "/elsewhere/nodeagent.sock")
				full = append([]string{"--socket", sock}, full...)
			}
			code, out, errOut := runCaptured(t, "", full...)
			if code != 1 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, sock) ||
				!strings.Contains(errOut, "--socket") || !strings.Contains(errOut, "NODEAGENT_SOCKET") {
				t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 1 and one line naming %s, --socket and NODEAGENT_SOCKET",
					full, code, out, errOut, sock)
			}
		}
	}
	// A socket file with no agent behind it.
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := runCaptured(t, "", "status", "--socket", sock)
	if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, sock) {
		t.Errorf("dead socket: exit %d, stderr %q", code, errOut)
	}
}

// -o json and -o yaml print the API's message with protojson's names;
// the table is the default.
func TestOutputFormats(t *testing.T) {
	serveFake(t, &fakeAgent{})
	type eniList struct {
		Enis []struct {
			Config struct {
				Mac       string
				Addresses []string
				Mtu       int
			}
			State       string
			AssignedPod string
		}
	}
	check := func(format string, l eniList) {
		t.Helper()
		if len(l.Enis) != 1 || l.Enis[0].Config.Mac != "02:00:00:00:00:05" || l.Enis[0].Config.Mtu != 1400 ||
			strings.Join(l.Enis[0].Config.Addresses, ",") != "10.10.0.5/24" || l.Enis[0].State != "ENI_STATE_FREE" ||
			l.Enis[0].AssignedPod != "web/frontend" {
			t.Errorf("eni list -o %s: %+v", format, l)
		}
	}

	code, out, errOut := runCaptured(t, "", "eni", "list", "-o", "json")
	var l eniList
	if err := json.Unmarshal([]byte(out), &l); code != 0 || err != nil {
		t.Fatalf("eni list -o json: exit %d, %v, stderr %q:\n%s", code, err, errOut, out)
	}
	check("json", l)

	code, out, errOut = runCaptured(t, "", "eni", "list", "--output", "yaml")
	l = eniList{}
	if err := yaml.Unmarshal([]byte(out), &l); code != 0 || err != nil || strings.HasPrefix(out, "{") {
		t.Fatalf("eni list -o yaml: exit %d, %v, stderr %q:\n%s", code, err, errOut, out)
	}
	check("yaml", l)
	if !strings.Contains(out, "assignedPod: web/frontend") {
		t.Errorf("eni list -o yaml: no assignedPod field:\n%s", out)
	}

	code, out, _ = runCaptured(t, "", "eni", "list")
	if code != 0 || !strings.HasPrefix(out, "MAC ") || !strings.Contains(out, "02:00:00:00:00:05") || !strings.Contains(out, "web/frontend") {
		t.Errorf("eni list: exit %d:\n%s", code, out)
	}

	code, out, _ = runCaptured(t, "", "status", "-o", "yaml")
	var st struct{ Version string }
	if err := yaml.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Version != "v1.2.3" {
		t.Errorf("status -o yaml: exit %d, %v:\n%s", code, err, out)
	}
	code, out, _ = runCaptured(t, "", "status")
	if code != 0 || !strings.HasPrefix(out, "nodeagent v1.2.3: serving for ") || !strings.Contains(out, "sandboxes: ") || !strings.Contains(out, "vpc-a") {
		t.Errorf("status: exit %d:\n%s", code, out)
	}

	code, out, _ = runCaptured(t, "", "sandbox", "get", "box", "-o", "yaml")
	var sb struct {
		Spec  struct{ ID string }
		State string
		Disks []struct{ ID, Path string }
	}
	if err := yaml.Unmarshal([]byte(out), &sb); code != 0 || err != nil || sb.Spec.ID != "box" || sb.State != "READY" ||
		len(sb.Disks) != 1 || sb.Disks[0].Path != "/dev/a" {
		t.Errorf("sandbox get -o yaml: exit %d, %v:\n%s", code, err, out)
	}
}

// The ENI verbs turn their positional arguments and flags into the API's
// requests, and print what the agent answers.
func TestENIRequests(t *testing.T) {
	f := &fakeAgent{}
	serveFake(t, f)
	for _, tc := range []struct {
		args   []string
		method string
		want   proto.Message
		out    string
	}{
		{
			args: []string{"eni", "add", "02:00:00:00:00:05", "--vpc", "vpc-a", "--ip", "10.10.0.5/24", "--ip", "fd00::5/64",
				"--gateway", "10.10.0.1", "--gateway", "fd00::1", "--mtu", "1400", "--route", "10.20.0.0/16"},
			method: "RegisterENI",
			want: &apiv1.RegisterENIRequest{Config: &apiv1.ENIConfig{Mac: "02:00:00:00:00:05", Vpc: "vpc-a",
				Addresses: []string{"10.10.0.5/24", "fd00::5/64"}, Gateways: []string{"10.10.0.1", "fd00::1"}, Mtu: 1400,
				Routes: []string{"10.20.0.0/16"}}},
			out: "02:00:00:00:00:05",
		},
		{
			args:   []string{"eni", "assign", "web/frontend", "--mac", "02:00:00:00:00:05"},
			method: "AssignPod",
			want: &apiv1.AssignPodRequest{Assignment: &apiv1.Assignment{PodNamespace: "web", PodName: "frontend",
				Target: &apiv1.Assignment_Mac{Mac: "02:00:00:00:00:05"}}},
			out: "pod web/frontend assigned to ENI 02:00:00:00:00:05\n",
		},
		{
			args:   []string{"eni", "assign", "--vpc", "vpc-a", "web/frontend"},
			method: "AssignPod",
			want: &apiv1.AssignPodRequest{Assignment: &apiv1.Assignment{PodNamespace: "web", PodName: "frontend",
				Target: &apiv1.Assignment_Vpc{Vpc: "vpc-a"}}},
			out: "pod web/frontend assigned to VPC vpc-a\n",
		},
		{
			// The agent, not the CLI, checks the names.
			args:   []string{"eni", "assign", "Bad/b", "--vpc", "v"},
			method: "AssignPod",
			want: &apiv1.AssignPodRequest{Assignment: &apiv1.Assignment{PodNamespace: "Bad", PodName: "b",
				Target: &apiv1.Assignment_Vpc{Vpc: "v"}}},
			out: "pod Bad/b assigned to VPC v\n",
		},
		{
			args:   []string{"eni", "unassign", "web/frontend"},
			method: "UnassignPod",
			want:   &apiv1.UnassignPodRequest{PodNamespace: "web", PodName: "frontend"},
		},
		{
			args:   []string{"eni", "remove", "02:00:00:00:00:05"},
			method: "RemoveENI",
			want:   &apiv1.RemoveENIRequest{Mac: "02:00:00:00:00:05"},
		},
		{
			args:   []string{"eni", "list", "--vpc", "vpc-a"},
			method: "ListENIs",
			want:   &apiv1.ListENIsRequest{Vpc: "vpc-a"},
			out:    "vpc-a",
		},
		{
			args:   []string{"probe", "web/frontend", "--port", "8080", "--http-path", "/healthz", "--timeout", "2s"},
			method: "Probe",
			want:   &apiv1.ProbeRequest{PodNamespace: "web", PodName: "frontend", Port: 8080, HttpPath: "/healthz", TimeoutMs: 2000},
			out:    "probe succeeded: HTTP 200\n",
		},
	} {
		code, out, errOut := runCaptured(t, "", tc.args...)
		if code != 0 || !strings.Contains(out, tc.out) {
			t.Errorf("%q: exit %d, stderr %q, stdout %q; want it to contain %q", tc.args, code, errOut, out, tc.out)
		}
		if got := f.request(tc.method); !proto.Equal(got, tc.want) {
			t.Errorf("%q: sent %v, want %v", tc.args, got, tc.want)
		}
	}
	code, out, errOut := runCaptured(t, "", "probe", "web/frontend", "--port", "8081")
	if code != 1 || out != "" || errOut != "nodeagent probe: probe failed: connection refused\n" {
		t.Errorf("failed probe: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// The agent's refusals are failures (exit 1) that print its message and
// code: "nodeagent VERB: MESSAGE (CODE)".
func TestAgentErrors(t *testing.T) {
	serveFake(t, &fakeAgent{refuse: true})
	code, out, errOut := runCaptured(t, "", "eni", "add", "zz", "--vpc", "v", "--ip", "10.0.0.2/24", "--gateway", "10.0.0.1")
	if code != 1 || out != "" || errOut != "nodeagent eni add: RegisterENI: refused by the fake agent (InvalidArgument)\n" {
		t.Errorf("eni add: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
