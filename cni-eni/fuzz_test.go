package main

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

// Every input either parses into a config with an absolute socket and a
// positive timeout, or fails with a *types.Error: never a panic.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"n","type":"cni-eni"}`,
		`{"cniVersion":"1.0.0","name":"n","agentSocket":"/a","timeout":"3s","logLevel":"warn"}`,
		`{"cniVersion":"1.1.0","name":"n","prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.2/24"}]}}`,
		`{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"c","ifname":"eth0"}]}`,
		`{`, `null`, `[]`, `{"timeout":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseConfig(b)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("error %T is not a CNI error", err)
			}
			return
		}
		if c.AgentSocket == "" || c.AgentSocket[0] != '/' || c.timeout <= 0 || c.Name == "" {
			t.Fatalf("accepted an invalid config: %+v", c)
		}
	})
}

func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{
		"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c",
		"", ";;", "=", "a=b=c", "K8S_POD_NAME=x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args, err := parseArgs(s)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidEnvironmentVariables {
				t.Fatalf("parseArgs error %v", err)
			}
			return
		}
		p, err := podFromArgs(args)
		if err != nil {
			return
		}
		if !k8sname.IsDNSLabel(p.Namespace) || !k8sname.IsDNSSubdomain(p.Name) {
			t.Fatalf("accepted pod %+v", p)
		}
	})
}
