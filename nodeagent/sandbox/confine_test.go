package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMonHost(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ conf, want string }{
		{"[global]\nfsid = x\nmon host = [v2:10.0.0.1:3300,v1:10.0.0.1:6789]\nkeyring = /etc/ceph/k\n", "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]"},
		{"[global]\n\tmon_host = 10.0.0.1,10.0.0.2\n", "10.0.0.1,10.0.0.2"},
	} {
		p := filepath.Join(dir, "ceph.conf")
		os.WriteFile(p, []byte(tc.conf), 0o600)
		if got, err := monHost(p); err != nil || got != tc.want {
			t.Errorf("monHost(%q) = %q, %v; want %q", tc.conf, got, err, tc.want)
		}
	}
	p := filepath.Join(dir, "empty.conf")
	os.WriteFile(p, []byte("[global]\nfsid = x\n"), 0o600)
	if _, err := monHost(p); err == nil {
		t.Error("a conf without monitors was accepted")
	}
}

// The chroot's ceph.conf carries the monitors and nothing else of the
// node's (no keyring, log or socket paths).
func TestRBDInChrootConf(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "node.conf")
	os.WriteFile(conf, []byte("[global]\nmon host = 127.0.0.1:6789\nkeyring = /secret/k\nlog file = /var/log/x\n"), 0o600)
	root := filepath.Join(dir, "sb")
	os.Mkdir(root, 0o700)
	if _, err := rbdInChroot(root, conf); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, chrootCephConf))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b); got != "[global]\nmon host = 127.0.0.1:6789\n" || strings.Contains(got, "secret") {
		t.Errorf("chroot ceph.conf:\n%s", got)
	}
}
