// Package k8sname checks Kubernetes object names without regexps (the CNI
// plugin runs once per pod sandbox, and compiling regexps at start-up cost
// it about 0.6 ms).
package k8sname

import (
	"fmt"
	"strings"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// IsDNSLabel reports whether s is an RFC 1123 label, as namespace names
// are: lower-case alphanumerics and '-', starting and ending with an
// alphanumeric, at most 63 characters.
func IsDNSLabel(s string) bool { return label(s, 63) }

// IsDNSSubdomain reports whether s is an RFC 1123 subdomain, as pod names
// are: such labels joined by '.', at most 253 characters in all.
func IsDNSSubdomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if !label(part, 253) {
			return false
		}
	}
	return true
}

func label(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// Pod names a pod: its namespace and its name.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// Validate checks p against Kubernetes naming rules.
func (p Pod) Validate() error {
	if !IsDNSLabel(p.Namespace) {
		return fmt.Errorf("invalid pod namespace %q: %w", p.Namespace, errdefs.ErrInvalidArgument)
	}
	if !IsDNSSubdomain(p.Name) {
		return fmt.Errorf("invalid pod name %q: %w", p.Name, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ParsePod parses and validates "namespace/name".
func ParsePod(s string) (Pod, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok {
		return Pod{}, fmt.Errorf("pod %q: want NAMESPACE/NAME: %w", s, errdefs.ErrInvalidArgument)
	}
	p := Pod{Namespace: ns, Name: name}
	return p, p.Validate()
}
