package sandbox_test

import (
	"os"
	"strconv"
	"strings"
	"testing"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// procStatus reads the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// Each QEMU runs under seccomp, as its own unprivileged uid and gid,
// chrooted into its sandbox dir.
func TestSandboxQEMUConfined(t *testing.T) { testQEMUConfined(t) }

func testQEMUConfined(t *testing.T, flags ...string) {
	e := newScenario(t, true, flags...)
	uids := map[string]bool{}
	for _, id := range []string{"vm-conf-1", "vm-conf-2"} {
		s := e.create(&apiv1.SandboxSpec{Id: id})
		st := procStatus(t, int(s.Pid))
		uid := strings.Fields(st["Uid"])
		gid := strings.Fields(st["Gid"])
		if len(uid) != 4 || uid[0] == "0" || uid[0] != uid[1] || uid[0] != uid[2] || uid[0] != uid[3] {
			t.Errorf("%s: qemu uids %q, want one non-root uid", id, st["Uid"])
		}
		if len(gid) != 4 || gid[0] == "0" || gid[0] != gid[3] {
			t.Errorf("%s: qemu gids %q, want one non-root gid", id, st["Gid"])
		}
		if st["Groups"] != "" && st["Groups"] != gid[0] {
			t.Errorf("%s: qemu keeps supplementary groups %q", id, st["Groups"])
		}
		if st["Seccomp"] != "2" {
			t.Errorf("%s: qemu seccomp mode %q, want 2 (filter)", id, st["Seccomp"])
		}
		if st["CapEff"] != "0000000000000000" {
			t.Errorf("%s: qemu effective capabilities %s, want none", id, st["CapEff"])
		}
		if root, err := os.Readlink("/proc/" + strconv.Itoa(int(s.Pid)) + "/root"); err != nil || root != s.WorkDir {
			t.Errorf("%s: qemu root %q (%v), want its sandbox dir %s", id, root, err, s.WorkDir)
		}
		if len(uid) > 0 {
			uids[uid[0]] = true
		}
		// The guest works as before: exec.
		if out := e.sh(id, "echo confined"); out != "confined\n" {
			t.Errorf("%s: exec: %q", id, out)
		}
	}
	if len(uids) != 2 {
		t.Errorf("two sandboxes share a uid: %v", uids)
	}
}
