package probe

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

func web(name string) k8sname.Pod { return k8sname.Pod{Namespace: "web", Name: name} }

func TestTimeoutCap(t *testing.T) {
	p := New(fakeTargets{}, DefaultLimits())
	for in, want := range map[time.Duration]time.Duration{
		0: time.Second, 300 * time.Millisecond: 300 * time.Millisecond, 10 * time.Second: 10 * time.Second,
		11 * time.Second: 10 * time.Second, 1000 * time.Hour: 10 * time.Second,
	} {
		if got := p.Timeout(in); got != want {
			t.Errorf("Timeout(%v) = %v, want %v", in, got, want)
		}
	}
	// The probe runs with the cut timeout, through the API and the endpoint.
	var got []time.Duration
	p.run = func(_ context.Context, r Request) Result {
		got = append(got, r.Timeout)
		return Result{Success: true}
	}
	if _, err := p.Probe(context.Background(), web("a"), 80, "", 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Probe(context.Background(), web("a"), 80, "", -time.Second); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("negative timeout: %v", err)
	}
	rec := httptest.NewRecorder()
	Handler(p).ServeHTTP(rec, httptest.NewRequest("GET", "/probe/web/a/tcp/80?timeout=87600h", nil))
	if rec.Code != http.StatusOK || len(got) != 2 || got[0] != MaxTimeout || got[1] != MaxTimeout {
		t.Fatalf("timeouts %v (HTTP %d), want two of %v", got, rec.Code, MaxTimeout)
	}
}

// blocked is a Prober whose probes run until release is closed.
type blocked struct {
	*Prober
	started chan k8sname.Pod
	release chan struct{}
}

func newBlocked(l Limits) *blocked {
	b := &blocked{Prober: New(fakeTargets{}, l), started: make(chan k8sname.Pod, 100), release: make(chan struct{})}
	b.run = func(ctx context.Context, r Request) Result {
		b.started <- k8sname.Pod{}
		<-b.release
		return Result{Success: true}
	}
	return b
}

// Probes beyond the node's or the pod's bound are refused at once, with
// ResourceExhausted (HTTP 429); the others run, and once they end there is
// room again.
func TestInFlightBound(t *testing.T) {
	b := newBlocked(Limits{MaxTimeout: MaxTimeout, MaxInFlight: 3, MaxInFlightPerPod: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	start := func(pod k8sname.Pod) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.Probe(context.Background(), pod, 80, "", 0)
			errs <- err
		}()
		<-b.started
	}
	refused := func(pod k8sname.Pod, why string) {
		t.Helper()
		begin := time.Now()
		_, err := b.Probe(context.Background(), pod, 80, "", time.Hour)
		if !errors.Is(err, errdefs.ErrResourceExhausted) || time.Since(begin) > time.Second {
			t.Fatalf("%s: Probe(%s) = %v after %v, want ResourceExhausted at once", why, pod, err, time.Since(begin))
		}
	}
	start(web("a"))
	start(web("a"))
	refused(web("a"), "pod a at its bound")
	start(web("b"))
	refused(web("c"), "node at its bound")
	rec := httptest.NewRecorder()
	Handler(b.Prober).ServeHTTP(rec, httptest.NewRequest("GET", "/probe/web/c/tcp/80?timeout=1h", nil))
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Errorf("endpoint over the bound: %d %q", rec.Code, rec.Body)
	}
	// Refusals hold no slot; invalid requests and unknown pods take none.
	if _, err := b.Probe(context.Background(), web("other"), 80, "", 0); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("unknown pod at the bound: %v", err)
	}
	close(b.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("admitted probe: %v", err)
		}
	}
	b.release = make(chan struct{})
	close(b.release)
	for _, pod := range []k8sname.Pod{web("a"), web("a"), web("c")} {
		if _, err := b.Probe(context.Background(), pod, 80, "", 0); err != nil {
			t.Errorf("after the others ended: %v", err)
		}
	}
	if b.inFlight != 0 || len(b.perPod) != 0 {
		t.Errorf("slots left: %d, %v", b.inFlight, b.perPod)
	}
}
