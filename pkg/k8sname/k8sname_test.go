package k8sname

import (
	"strings"
	"testing"
)

func TestNames(t *testing.T) {
	for s, want := range map[string]bool{
		"a": true, "default": true, "kube-system": true, "0a": true, "a0": true,
		"": false, "-a": false, "a-": false, "A": false, "a_b": false, "a.b": false,
		strings.Repeat("a", 63): true, strings.Repeat("a", 64): false,
	} {
		if got := IsDNSLabel(s); got != want {
			t.Errorf("IsDNSLabel(%q) = %v, want %v", s, got, want)
		}
	}
	for s, want := range map[string]bool{
		"web": true, "web.v1": true, "coredns-7d8f-x2": true, "a.b.c": true,
		"a..b": false, ".a": false, "a.": false, "a-.b": false, "a.-b": false, "A.b": false,
		strings.Repeat("a", 253): true, strings.Repeat("a", 254): false,
	} {
		if got := IsDNSSubdomain(s); got != want {
			t.Errorf("IsDNSSubdomain(%q) = %v, want %v", s, got, want)
		}
	}
}

func FuzzNames(f *testing.F) {
	for _, s := range []string{"a", "a.b", "a..b", "-", "A"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if IsDNSLabel(s) && !IsDNSSubdomain(s) {
			t.Fatalf("%q is a label but not a subdomain", s)
		}
		if IsDNSSubdomain(s) && (strings.HasPrefix(s, ".") || strings.Contains(s, "..") || strings.ToLower(s) != s) {
			t.Fatalf("accepted %q", s)
		}
	})
}
