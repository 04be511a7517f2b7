package probe

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

// The limits a node's probes run within (see Limits).
const (
	// DefaultTimeout is a probe's timeout when the request sets none (the
	// kubelet's default).
	DefaultTimeout = time.Second
	// MaxTimeout caps a probe's timeout: a longer one is cut to it.
	MaxTimeout = 10 * time.Second
	// MaxInFlight bounds the probes running at once on the node.
	MaxInFlight = 64
	// MaxInFlightPerPod bounds the probes of one pod running at once.
	MaxInFlightPerPod = 8
)

// Limits bound what probes cost the agent, which also serves every CNI
// call on the node. A pod decides how long its own probes take (a port
// that drops SYNs makes each one last its whole timeout), and the kubelet
// asks for as many as the pods' specs say; a probe beyond a limit is
// refused at once rather than queued.
type Limits struct {
	// MaxTimeout caps a probe's timeout; a longer one is cut to it.
	MaxTimeout time.Duration
	// MaxInFlight bounds the probes running at once; MaxInFlightPerPod
	// those of one pod, so that one pod's slow probes cannot use up the
	// node's share.
	MaxInFlight, MaxInFlightPerPod int
}

// DefaultLimits are the node's limits: a 10 s timeout at most, 64 probes
// in flight, 8 of them for one pod.
func DefaultLimits() Limits {
	return Limits{MaxTimeout: MaxTimeout, MaxInFlight: MaxInFlight, MaxInFlightPerPod: MaxInFlightPerPod}
}

// Prober runs probes within Limits, for the HTTP endpoint and the Probe
// RPC together. It is safe for concurrent use.
type Prober struct {
	targets Targets
	limits  Limits
	run     func(context.Context, Request) Result // Run; tests replace it
	// Observe, if set, learns each probe's kind (tcp, http) and outcome
	// (success, failure, refused, error), for the metrics.
	Observe func(kind, outcome string)

	mu       sync.Mutex
	inFlight int
	perPod   map[k8sname.Pod]int
}

// New returns a Prober that finds pods through t.
func New(t Targets, l Limits) *Prober {
	return &Prober{targets: t, limits: l, run: Run, perPod: map[k8sname.Pod]int{}}
}

// Probe probes pod's port from inside the pod's namespace: a TCP connect,
// or an HTTP GET of path when path is set. A timeout of 0 is
// DefaultTimeout; a longer one than the limit is cut to it, a negative one
// is refused. The error wraps errdefs.ErrInvalidArgument for a bad
// request, errdefs.ErrNotFound for a pod without an attached ENI, and
// errdefs.ErrResourceExhausted when the node or the pod has too many
// probes in flight (at once, without waiting). A probe that runs and
// fails is a Result, not an error.
func (p *Prober) Probe(ctx context.Context, pod k8sname.Pod, port int, path string, timeout time.Duration) (r Result, err error) {
	if p.Observe != nil {
		defer func() { p.Observe(kindOf(path), outcome(r, err)) }()
	}
	if timeout < 0 {
		return Result{}, fmt.Errorf("probe timeout %v is negative: %w", timeout, errdefs.ErrInvalidArgument)
	}
	req, err := Prepare(p.targets, pod, port, path)
	if err != nil {
		return Result{}, err
	}
	req.Timeout = p.Timeout(timeout)
	release, err := p.acquire(pod)
	if err != nil {
		return Result{}, err
	}
	defer release()
	return p.run(ctx, req), nil
}

// Timeout is the timeout a probe asking for d gets.
func (p *Prober) Timeout(d time.Duration) time.Duration {
	switch {
	case d <= 0:
		d = DefaultTimeout
	case d > p.limits.MaxTimeout:
		d = p.limits.MaxTimeout
	}
	return d
}

// acquire takes a slot for a probe of pod, or fails at once.
func (p *Prober) acquire(pod k8sname.Pod) (func(), error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inFlight >= p.limits.MaxInFlight {
		return nil, fmt.Errorf("probe %s: %d probes in flight on this node: %w", pod, p.inFlight, errdefs.ErrResourceExhausted)
	}
	if n := p.perPod[pod]; n >= p.limits.MaxInFlightPerPod {
		return nil, fmt.Errorf("probe %s: %d probes of this pod in flight: %w", pod, n, errdefs.ErrResourceExhausted)
	}
	p.inFlight++
	p.perPod[pod]++
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.inFlight--
			if p.perPod[pod]--; p.perPod[pod] == 0 {
				delete(p.perPod, pod)
			}
		})
	}, nil
}

func kindOf(path string) string {
	if path == "" {
		return "tcp"
	}
	return "http"
}

// outcome names a probe's end for Observe.
func outcome(r Result, err error) string {
	switch {
	case errors.Is(err, errdefs.ErrResourceExhausted):
		return "refused"
	case err != nil:
		return "error"
	case r.Success:
		return "success"
	}
	return "failure"
}
