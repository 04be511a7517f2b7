package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		stdin string
		code  uint // 0: valid
		check func(*testing.T, *NetConf)
	}{
		{name: "minimal", stdin: `{"cniVersion":"1.1.0","name":"n","type":"cni-eni"}`, check: func(t *testing.T, c *NetConf) {
			if c.AgentSocket != "/run/nodeagent/nodeagent.sock" || c.timeout != defaultTimeout {
				t.Errorf("defaults not applied: %+v", c)
			}
		}},
		{name: "all fields", stdin: `{"cniVersion":"1.0.0","name":"n","type":"cni-eni","agentSocket":"/tmp/a.sock","timeout":"2s","logFile":"/var/log/cni-eni.log","logLevel":"debug"}`,
			check: func(t *testing.T, c *NetConf) {
				if c.AgentSocket != "/tmp/a.sock" || c.timeout != 2*time.Second || c.LogFile != "/var/log/cni-eni.log" {
					t.Errorf("fields not read: %+v", c)
				}
			}},
		{name: "prevResult", stdin: `{"cniVersion":"1.1.0","name":"n","prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/run/netns/x"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}}`,
			check: func(t *testing.T, c *NetConf) {
				if c.PrevResult == nil {
					t.Error("prevResult not parsed")
				}
			}},
		{name: "valid attachments", stdin: `{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}`,
			check: func(t *testing.T, c *NetConf) {
				if len(c.ValidAttachments) != 1 || c.ValidAttachments[0].ContainerID != "c1" {
					t.Errorf("valid attachments: %+v", c.ValidAttachments)
				}
			}},
		{name: "not json", stdin: `{`, code: types.ErrDecodingFailure},
		{name: "wrong type", stdin: `{"cniVersion":"1.1.0","name":"n","timeout":5}`, code: types.ErrDecodingFailure},
		{name: "no version", stdin: `{"name":"n"}`, code: types.ErrInvalidNetworkConfig},
		{name: "no name", stdin: `{"cniVersion":"1.1.0"}`, code: types.ErrInvalidNetworkConfig},
		{name: "relative socket", stdin: `{"cniVersion":"1.1.0","name":"n","agentSocket":"a.sock"}`, code: types.ErrInvalidNetworkConfig},
		{name: "bad timeout", stdin: `{"cniVersion":"1.1.0","name":"n","timeout":"fast"}`, code: types.ErrInvalidNetworkConfig},
		{name: "negative timeout", stdin: `{"cniVersion":"1.1.0","name":"n","timeout":"-1s"}`, code: types.ErrInvalidNetworkConfig},
		{name: "huge timeout", stdin: `{"cniVersion":"1.1.0","name":"n","timeout":"1h"}`, code: types.ErrInvalidNetworkConfig},
		{name: "relative log file", stdin: `{"cniVersion":"1.1.0","name":"n","logFile":"x.log"}`, code: types.ErrInvalidNetworkConfig},
		{name: "bad log level", stdin: `{"cniVersion":"1.1.0","name":"n","logLevel":"loud"}`, code: types.ErrInvalidNetworkConfig},
		{name: "bad prevResult", stdin: `{"cniVersion":"1.1.0","name":"n","prevResult":{"cniVersion":"1.1.0","ips":"x"}}`, code: types.ErrDecodingFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig([]byte(tc.stdin))
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				if tc.check != nil {
					tc.check(t, c)
				}
				return
			}
			if got := cniCode(err); got != tc.code {
				t.Fatalf("error %v has code %d, want %d", err, got, tc.code)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	args, err := parseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-7d8f;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1-2")
	if err != nil {
		t.Fatal(err)
	}
	p, err := podFromArgs(args)
	if err != nil || p.Namespace != "kube-system" || p.Name != "coredns-7d8f" {
		t.Fatalf("pod = %+v, %v", p, err)
	}
	// Any order, empty pairs tolerated.
	args, err = parseArgs("K8S_POD_NAME=web.v1;;K8S_POD_NAMESPACE=default;")
	if err != nil {
		t.Fatal(err)
	}
	if p, err := podFromArgs(args); err != nil || p.Name != "web.v1" {
		t.Fatalf("pod = %+v, %v", p, err)
	}
	for _, bad := range []string{"novalue", "=x", "1KEY=v", "K-Y=v"} {
		if _, err := parseArgs(bad); cniCode(err) != types.ErrInvalidEnvironmentVariables {
			t.Errorf("parseArgs(%q) = %v, want code 4", bad, err)
		}
	}
	for _, bad := range []string{"", "K8S_POD_NAME=x", "K8S_POD_NAMESPACE=Default;K8S_POD_NAME=x",
		"K8S_POD_NAMESPACE=a;K8S_POD_NAME=-x", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=x_y",
		"K8S_POD_NAMESPACE=" + strings.Repeat("a", 64) + ";K8S_POD_NAME=x"} {
		args, err := parseArgs(bad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := podFromArgs(args); cniCode(err) != types.ErrInvalidEnvironmentVariables {
			t.Errorf("podFromArgs(%q) = %v, want code 4", bad, err)
		}
	}
}
