// Package probe runs kubelet-style TCP and HTTP probes against a pod from
// inside the pod's network namespace. The node keeps no route into tenant
// networks; the socket is created in the pod's namespace instead, so only
// the prober can reach the pod, and only at the pod's own address. A
// Prober bounds what the pods' probes may cost the agent (Limits), and no
// probe holds an OS thread while it waits for the pod.
package probe

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

// Request is one probe.
type Request struct {
	Netns string
	Addr  netip.Addr
	Port  int
	// HTTPPath, when set, makes it an HTTP GET of that path (with query).
	HTTPPath string
	Timeout  time.Duration
}

// Result is the outcome: success means connected (TCP) or a status in
// 200-399 (HTTP), as the kubelet judges it.
type Result struct {
	Success    bool
	HTTPStatus int
	Message    string
}

// Targets finds where a pod's probes go: its netns and its own address
// (eni.Inventory does, from the pod's attachment).
type Targets interface {
	ProbeTarget(pod k8sname.Pod) (netns string, addr netip.Addr, err error)
}

// Prepare checks a probe of pod's port (and HTTP path, if any) and finds
// its target.
func Prepare(t Targets, pod k8sname.Pod, port int, path string) (Request, error) {
	if port < 1 || port > 65535 {
		return Request{}, fmt.Errorf("probe port %d out of range 1-65535: %w", port, errdefs.ErrInvalidArgument)
	}
	if path != "" && path[0] != '/' {
		return Request{}, fmt.Errorf("probe path %q must start with '/': %w", path, errdefs.ErrInvalidArgument)
	}
	netns, addr, err := t.ProbeTarget(pod)
	if err != nil {
		return Request{}, err
	}
	return Request{Netns: netns, Addr: addr, Port: port, HTTPPath: path}, nil
}

// Run runs the probe. Its time is bounded by req.Timeout (DefaultTimeout
// when 0) and ctx; a Prober caps the timeout and the probes in flight.
func Run(ctx context.Context, req Request) Result {
	if req.Timeout <= 0 {
		req.Timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, req.Timeout)
	defer cancel()
	target := net.JoinHostPort(req.Addr.String(), strconv.Itoa(req.Port))
	if req.HTTPPath == "" {
		c, err := DialInNetns(ctx, req.Netns, target)
		if err != nil {
			return Result{Message: err.Error()}
		}
		c.Close()
		return Result{Success: true, Message: "connected to " + target}
	}
	client := &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return DialInNetns(ctx, req.Netns, addr)
			},
			DisableKeepAlives: true,
			// The pod writes the answer: keep what the agent reads small.
			MaxResponseHeaderBytes: 16 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+req.HTTPPath, nil)
	if err != nil {
		return Result{Message: fmt.Sprintf("build request: %v", err)}
	}
	hreq.Header.Set("User-Agent", "kube-probe/nodeagent")
	resp, err := client.Do(hreq)
	if err != nil {
		return Result{Message: err.Error()}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 10<<10))
	ok := resp.StatusCode >= 200 && resp.StatusCode < 400
	return Result{Success: ok, HTTPStatus: resp.StatusCode, Message: resp.Status}
}
