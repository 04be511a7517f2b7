package cli

import (
	"os/exec"
	"strings"
	"testing"
)

// The CLI speaks only the agent's API: it never imports the daemon's
// domain packages or its adapters.
func TestCLIDependsOnlyOnTheAPI(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v (no Go toolchain?)", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"/nodeagent/server", "/nodeagent/sandbox", "/nodeagent/eni", "/nodeagent/daemon"} {
			if strings.HasSuffix(dep, banned) || strings.Contains(dep, banned+"/") {
				t.Errorf("nodeagent/cli depends on %s", dep)
			}
		}
	}
}
