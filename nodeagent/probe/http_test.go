package probe

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

// fakeTargets knows the pods of namespace web but web/other, whose
// netns does not exist.
type fakeTargets struct{}

func (fakeTargets) ProbeTarget(pod k8sname.Pod) (string, netip.Addr, error) {
	if err := pod.Validate(); err != nil {
		return "", netip.Addr{}, err
	}
	if pod.Namespace != "web" || pod.Name == "other" {
		return "", netip.Addr{}, fmt.Errorf("pod %s has no attached ENI: %w", pod, errdefs.ErrNotFound)
	}
	return "/nonexistent/netns", netip.MustParseAddr("10.1.0.11"), nil
}

func TestHandlerCodes(t *testing.T) {
	h := Handler(New(fakeTargets{}, DefaultLimits()))
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/probe/web/frontend/tcp/8080", http.StatusServiceUnavailable},
		{"/probe/web/frontend/http/8080/healthz?x=1", http.StatusServiceUnavailable},
		{"/probe/web/other/tcp/8080", http.StatusNotFound},
		{"/probe/web/frontend/tcp/port", http.StatusBadRequest},
		{"/probe/web/frontend/tcp/0", http.StatusBadRequest},
		{"/probe/Web/frontend/tcp/80", http.StatusBadRequest},
		{"/probe/web/frontend/udp/80", http.StatusNotFound},
		{"/probe/web/frontend/tcp/80?timeout=soon", http.StatusBadRequest},
		{"/probe/web/frontend/tcp/80?timeout=-1s", http.StatusBadRequest},
		{"/probe/web/frontend/tcp/80?timeout=1h", http.StatusServiceUnavailable},
		// An HTTP probe's query is the pod's.
		{"/probe/web/frontend/http/80/x?timeout=soon", http.StatusServiceUnavailable},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
		if rec.Code != tc.code {
			t.Errorf("GET %s: %d, want %d (%s)", tc.path, rec.Code, tc.code, rec.Body)
		}
	}
}

func TestPrepare(t *testing.T) {
	r, err := Prepare(fakeTargets{}, k8sname.Pod{Namespace: "web", Name: "frontend"}, 8080, "/healthz")
	if err != nil || r.Netns != "/nonexistent/netns" || r.Addr.String() != "10.1.0.11" || r.Port != 8080 || r.HTTPPath != "/healthz" {
		t.Fatalf("Prepare = %+v, %v", r, err)
	}
	for _, bad := range []struct {
		port int
		path string
	}{{0, ""}, {65536, ""}, {80, "healthz"}} {
		if _, err := Prepare(fakeTargets{}, k8sname.Pod{Namespace: "web", Name: "frontend"}, bad.port, bad.path); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Prepare(%d, %q) = %v, want invalid argument", bad.port, bad.path, err)
		}
	}
}
