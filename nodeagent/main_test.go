package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/nodeinfra/nodeinfra/nodeagent/daemon"
)

func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"frobnicate"},
		{"serve", "--socket", "relative.sock"},
		{"serve", "--nope"},
		{"serve", "extra"},
	} {
		var out, errb bytes.Buffer
		if code := run(args, strings.NewReader(""), &out, &errb); code != 2 {
			t.Errorf("%q: exit %d, want 2; stderr:\n%s", args, code, errb.String())
		}
	}
}

// `serve --help` lists every flag of the daemon.
func TestServeHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "--help"}, strings.NewReader(""), &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	cfg := daemon.DefaultConfig()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	cfg.BindFlags(fs)
	fs.VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(out.String(), "--"+f.Name+" ") {
			t.Errorf("serve --help lacks --%s:\n%s", f.Name, out.String())
		}
	})
	if strings.Contains(out.String(), "Global Flags") {
		t.Errorf("serve --help shows the CLI's global flags:\n%s", out.String())
	}
}
