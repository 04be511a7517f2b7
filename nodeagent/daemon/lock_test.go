package daemon

import (
	"strings"
	"testing"
)

func TestLockStateDir(t *testing.T) {
	dir := t.TempDir()
	f, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockStateDir(dir); err == nil || !strings.Contains(err.Error(), "in use by another agent") {
		t.Fatalf("second lock: %v, want in use", err)
	}
	f.Close()
	g, err := lockStateDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	g.Close()
}
