package manifests

// The cni-eni conflist and its installer.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	sigsjson "sigs.k8s.io/json"
)

// cniNetConf is cni-eni's network configuration (cni-eni/config.go), the
// fields of one plugin entry of a conflist; the runtime adds name and
// cniVersion.
type cniNetConf struct {
	Type        string `json:"type"`
	AgentSocket string `json:"agentSocket,omitempty"`
	Timeout     string `json:"timeout,omitempty"`
	LogFile     string `json:"logFile,omitempty"`
	LogLevel    string `json:"logLevel,omitempty"`
}

// cniNameRe is the CNI spec's network name.
var cniNameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// parseCNIConflist parses a conflist as libcni (the runtime's loader)
// does, then cni-eni's entry strictly, and checks what cni-eni's
// parseConfig checks. It returns the socket cni-eni will dial.
func parseCNIConflist(b []byte) (string, error) {
	// libcni re-encodes what it reads (a duplicated key vanishes): decode
	// the text strictly first.
	var top struct {
		CNIVersion             string            `json:"cniVersion"`
		CNIVersions            []string          `json:"cniVersions"`
		Name                   string            `json:"name"`
		Plugins                []json.RawMessage `json:"plugins"`
		DisableCheck           bool              `json:"disableCheck"`
		DisableGC              bool              `json:"disableGC"`
		LoadOnlyInlinedPlugins bool              `json:"loadOnlyInlinedPlugins"`
	}
	strict, err := sigsjson.UnmarshalStrict(b, &top, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return "", err
	}
	if len(strict) > 0 {
		return "", fmt.Errorf("conflist: %w", errors.Join(strict...))
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return "", err
	}
	if list.CNIVersion != "1.0.0" {
		return "", fmt.Errorf("cniVersion %q: want 1.0.0 (containerd 1.6 refuses 1.1.0 results)", list.CNIVersion)
	}
	if !cniNameRe.MatchString(list.Name) {
		return "", fmt.Errorf("network name %q", list.Name)
	}
	if len(list.Plugins) != 1 {
		return "", fmt.Errorf("%d plugins, want cni-eni alone", len(list.Plugins))
	}
	var nc cniNetConf
	strict, err = sigsjson.UnmarshalStrict(top.Plugins[0], &nc, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return "", err
	}
	if len(strict) > 0 {
		return "", fmt.Errorf("plugin entry: %w", errors.Join(strict...))
	}
	if nc.Type != cniPluginType {
		return "", fmt.Errorf("plugin type %q, want %s", nc.Type, cniPluginType)
	}
	if nc.AgentSocket == "" {
		nc.AgentSocket = agentSocket
	}
	if !path.IsAbs(nc.AgentSocket) {
		return "", fmt.Errorf("agentSocket %q is not absolute", nc.AgentSocket)
	}
	if nc.Timeout != "" {
		if d, err := time.ParseDuration(nc.Timeout); err != nil || d <= 0 || d > 5*time.Minute {
			return "", fmt.Errorf("timeout %q: want a Go duration in (0, 5m]", nc.Timeout)
		}
	}
	if nc.LogFile != "" && !path.IsAbs(nc.LogFile) {
		return "", fmt.Errorf("logFile %q is not absolute", nc.LogFile)
	}
	if nc.LogLevel != "" && !slices.Contains([]string{"debug", "info", "warn", "error"}, nc.LogLevel) {
		return "", fmt.Errorf("logLevel %q", nc.LogLevel)
	}
	return nc.AgentSocket, nil
}

func TestParseCNIConflistRejects(t *testing.T) {
	const valid = `{"cniVersion": "1.0.0", "name": "eni", "plugins": [{"type": "cni-eni", "agentSocket": "/run/x.sock", "timeout": "10s"}]}`
	if sock, err := parseCNIConflist([]byte(valid)); err != nil || sock != "/run/x.sock" {
		t.Fatalf("valid conflist: %q, %v", sock, err)
	}
	for _, bad := range []string{
		strings.Replace(valid, `"1.0.0"`, `"1.1.0"`, 1),
		strings.Replace(valid, `"eni"`, `"-eni"`, 1),
		strings.Replace(valid, `"cni-eni"`, `"bridge"`, 1),
		strings.Replace(valid, `"agentSocket"`, `"agentsocket"`, 1),
		strings.Replace(valid, `"agentSocket"`, `"socket"`, 1),
		strings.Replace(valid, `"/run/x.sock"`, `"run/x.sock"`, 1),
		strings.Replace(valid, `"10s"`, `"10"`, 1),
		strings.Replace(valid, `"plugins"`, `"plugin"`, 1),
		strings.Replace(valid, `"timeout": "10s"`, `"timeout": "10s", "timeout": "5s"`, 1),
		strings.Replace(valid, `}]}`, `}, {"type": "portmap"}]}`, 1),
		strings.Replace(valid, `"name": "eni"`, `"name": "eni", "name": "x"`, 1),
		strings.Replace(valid, `"name": "eni"`, `"name": "eni", "mtu": 1500`, 1),
		`{"cniVersion": "1.0.0", "name": "eni", "type": "cni-eni"}`,
	} {
		if _, err := parseCNIConflist([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// shellVars collects the NAME=value lines of a script.
var shellAssign = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*)=(\S+)$`)

// shellWords splits a script's line into words, expanding $VAR and ${VAR}
// from vars and dropping double quotes (enough for a plain install script).
func shellWords(line string, vars map[string]string) []string {
	var out []string
	for _, w := range strings.Fields(line) {
		w = strings.ReplaceAll(w, `"`, "")
		for k, v := range vars {
			w = strings.ReplaceAll(w, "${"+k+"}", v)
			w = strings.ReplaceAll(w, "$"+k, v)
		}
		out = append(out, w)
	}
	return out
}

// installStep is a file the installer puts on the host: copied to tmp,
// then renamed to target.
type installStep struct{ from, tmp, target string }

// installSteps reads `cp FROM TMP` and `mv [-f] TMP TARGET` pairs from a
// shell script.
func installSteps(script string) []installStep {
	vars := map[string]string{}
	copies := map[string]string{}
	var steps []installStep
	for _, line := range strings.Split(script, "\n") {
		line = strings.TrimSpace(line)
		if m := shellAssign.FindStringSubmatch(line); m != nil {
			vars[m[1]] = strings.Trim(m[2], `"`)
			continue
		}
		w := shellWords(line, vars)
		if len(w) == 0 {
			continue
		}
		args := slices.DeleteFunc(slices.Clone(w[1:]), func(a string) bool { return strings.HasPrefix(a, "-") })
		switch {
		case w[0] == "cp" && len(args) == 2:
			copies[args[1]] = args[0]
		case w[0] == "mv" && len(args) == 2:
			steps = append(steps, installStep{from: copies[args[0]], tmp: args[0], target: args[1]})
		}
	}
	return steps
}

func TestCNIEniInstall(t *testing.T) {
	objs := load(t)
	ds, agentC := agent(t, objs)
	s := &ds.Spec.Template.Spec
	_, hostSock := agentSocketPaths(t, s, agentC)

	// The installer: an init container of the agent's pod whose script
	// copies each file next to its target and renames it over.
	var inst *corev1.Container
	var steps []installStep
	for i := range s.InitContainers {
		c := &s.InitContainers[i]
		st := installSteps(strings.Join(commandLine(c), "\n"))
		if slices.ContainsFunc(st, func(st installStep) bool { return path.Base(st.target) == cniPluginType }) {
			inst, steps = c, st
		}
	}
	if inst == nil {
		t.Fatalf("DaemonSet %s: no init container installs %s (cp to a temporary name, then mv)", agentDaemonSet, cniPluginType)
	}
	who := fmt.Sprintf("DaemonSet %s: init container %s", agentDaemonSet, inst.Name)
	if repo, _ := imageRepo(inst.Image); inst.Image != agentC.Image || repo != agentImageRepo {
		t.Errorf("%s: image %s, want the agent's %s (plugin and agent speak one API version)", who, inst.Image, agentC.Image)
	}
	var conflistFrom string
	for _, want := range []struct{ hostPath, what string }{
		{path.Join(cniBinDir, cniPluginType), "the plugin"},
		{path.Join(cniConfDir, cniConflist), "the conflist"},
	} {
		i := slices.IndexFunc(steps, func(st installStep) bool {
			h, ok := hostPathOf(s, inst, st.target)
			return ok && h == want.hostPath
		})
		if i < 0 {
			t.Errorf("%s: no `mv TMP TARGET` puts %s at host path %s", who, want.what, want.hostPath)
			continue
		}
		st := steps[i]
		// Atomic, and noticed by containerd: a rename within the folder,
		// from a name libcni does not load.
		if path.Dir(st.tmp) != path.Dir(st.target) {
			t.Errorf("%s: %s is renamed from %s: the temporary file must be in the target's folder", who, want.what, st.tmp)
		}
		if ext := path.Ext(st.tmp); ext == ".conf" || ext == ".conflist" || ext == ".json" {
			t.Errorf("%s: temporary file %s has an extension the runtime loads", who, st.tmp)
		}
		if st.from == "" {
			t.Errorf("%s: nothing is copied to %s before the rename", who, st.tmp)
		}
		if want.what == "the conflist" {
			conflistFrom = st.from
		}
	}

	// The conflist comes from the ConfigMap...
	var conflist []byte
	if conflistFrom != "" {
		m, rel, ok := mountFor(inst, conflistFrom)
		var v *corev1.Volume
		if ok {
			v = volumeNamed(s, m.Name)
		}
		if v == nil || v.ConfigMap == nil || !generatedFrom(v.ConfigMap.Name, cniConfigMap) {
			t.Errorf("%s: the conflist is copied from %s, not from ConfigMap %s", who, conflistFrom, cniConfigMap)
		} else {
			key := rel
			for _, it := range v.ConfigMap.Items {
				if path.Clean(it.Path) == rel {
					key = it.Key
				}
			}
			if key != cniConflist {
				t.Errorf("%s: the conflist is key %q of ConfigMap %s, want %s", who, key, cniConfigMap, cniConflist)
			}
		}
	}
	var cm *corev1.ConfigMap
	each(objs, func(o *object, c *corev1.ConfigMap) {
		if o.ns() == agentNamespace && generatedFrom(o.name(), cniConfigMap) {
			cm = c
		}
	})
	if cm == nil || !configMapHasKey(cm, cniConflist) {
		t.Fatalf("ConfigMap %s/%s with key %s is not in the manifests", agentNamespace, cniConfigMap, cniConflist)
	}
	conflist = []byte(cm.Data[cniConflist])

	// ...parses as the runtime and cni-eni parse it, and points at the
	// agent's socket as the host sees it.
	sock, err := parseCNIConflist(conflist)
	if err != nil {
		t.Fatalf("ConfigMap %s key %s: %v", cniConfigMap, cniConflist, err)
	}
	if sock != hostSock {
		t.Errorf("ConfigMap %s: agentSocket %s, but the agent listens on host path %s", cniConfigMap, sock, hostSock)
	}

	// It is the conflist file of the component, as it is.
	ex, err := os.ReadFile(cniConflistFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(ex) != string(conflist) {
		t.Errorf("ConfigMap %s differs from %s", cm.Name, cniConflistFile)
	}
}

// generatedFrom reports whether name is base, or what kustomize's
// generators make of it: base-<10-character content hash>.
func generatedFrom(name, base string) bool {
	suffix, ok := strings.CutPrefix(name, base+"-")
	return name == base || ok && len(suffix) == 10 && !strings.Contains(suffix, "-")
}
