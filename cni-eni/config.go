package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
)

// CodePluginNotAvailable is the spec's code 50 for STATUS: the plugin
// cannot serve ADDs (the cni module has no constant for it).
const CodePluginNotAvailable = 50

// Plugin-specific CNI error codes (100 and up belong to the plugin).
const (
	// CodeNoENI: the pod has no ENI on this node (no assignment, or the
	// assigned ENI is not registered).
	CodeNoENI = 100
	// CodeLinkNotFound: the ENI's link is neither in the node's nor in the
	// pod's network namespace.
	CodeLinkNotFound = 101
	// CodeDrift: CHECK found the pod's link differing from its ENI.
	CodeDrift = 102
)

const (
	defaultTimeout = 10 * time.Second
	maxTimeout     = 5 * time.Minute
)

// NetConf is cni-eni's network configuration.
type NetConf struct {
	types.PluginConf
	// AgentSocket is the node agent's unix socket.
	AgentSocket string `json:"agentSocket,omitempty"`
	// Timeout bounds every call to the agent (Go duration, default 10s).
	Timeout string `json:"timeout,omitempty"`
	// LogFile receives the plugin's JSON logs (default: stderr, warnings only).
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"logLevel,omitempty"`

	timeout time.Duration
}

// parseConfig decodes and validates stdin. Errors are *types.Error with
// the CNI code that fits.
func parseConfig(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "cannot decode network configuration", err.Error())
	}
	if conf.CNIVersion == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", "cniVersion is required")
	}
	if conf.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", "name is required")
	}
	if conf.AgentSocket == "" {
		conf.AgentSocket = agentclient.DefaultSocket
	}
	if !filepath.IsAbs(conf.AgentSocket) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration",
			fmt.Sprintf("agentSocket %q must be an absolute path", conf.AgentSocket))
	}
	conf.timeout = defaultTimeout
	if conf.Timeout != "" {
		d, err := time.ParseDuration(conf.Timeout)
		if err != nil || d <= 0 || d > maxTimeout {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration",
				fmt.Sprintf("timeout %q: want a Go duration in (0, %v]", conf.Timeout, maxTimeout))
		}
		conf.timeout = d
	}
	if conf.LogFile != "" && !filepath.IsAbs(conf.LogFile) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration",
			fmt.Sprintf("logFile %q must be an absolute path", conf.LogFile))
	}
	if _, err := logging.ParseLevel(conf.LogLevel); err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", err.Error())
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "cannot decode prevResult", err.Error())
		}
	}
	return conf, nil
}

// logger returns the plugin's logger and a function that closes its file.
func (c *NetConf) logger(args map[string]string) (*slog.Logger, func()) {
	level, _ := logging.ParseLevel(c.LogLevel)
	var w io.Writer = os.Stderr
	closeFn := func() {}
	if c.LogFile != "" {
		if f, err := os.OpenFile(c.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			w = f
			closeFn = func() { f.Close() }
		}
	} else if c.LogLevel == "" {
		level = slog.LevelWarn
	}
	l := logging.NewJSON(w, level).With("plugin", "cni-eni", "network", c.Name)
	for k, v := range args {
		l = l.With(k, v)
	}
	return l, closeFn
}

// The validator below is hand-written rather than a regexp: compiling
// regexps at start-up costs the plugin about 0.6 ms on every call.

// validArgKey reports whether k is a CNI_ARGS key: [A-Za-z_][A-Za-z0-9_]*.
func validArgKey(k string) bool {
	if k == "" {
		return false
	}
	for i, r := range k {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// parseArgs parses CNI_ARGS ("K1=V1;K2=V2"), in any order, with unknown
// keys ignored as runtimes expect (they pass IgnoreUnknown=1 or not).
func parseArgs(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, pair := range strings.Split(s, ";") {
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok || !validArgKey(k) {
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS",
				fmt.Sprintf("%q is not KEY=VALUE", pair))
		}
		out[k] = v
	}
	return out, nil
}

// podFromArgs returns the pod named by K8S_POD_NAMESPACE and K8S_POD_NAME.
func podFromArgs(args map[string]string) (k8sname.Pod, error) {
	p := k8sname.Pod{Namespace: args["K8S_POD_NAMESPACE"], Name: args["K8S_POD_NAME"]}
	if p.Namespace == "" || p.Name == "" {
		return p, types.NewError(types.ErrInvalidEnvironmentVariables, "pod identity missing",
			"CNI_ARGS must carry K8S_POD_NAMESPACE and K8S_POD_NAME")
	}
	if p.Validate() != nil {
		return p, types.NewError(types.ErrInvalidEnvironmentVariables, "invalid pod identity",
			fmt.Sprintf("K8S_POD_NAMESPACE=%q K8S_POD_NAME=%q are not valid Kubernetes names", p.Namespace, p.Name))
	}
	return p, nil
}
