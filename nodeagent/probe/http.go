package probe

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

// Handler serves kubelet probes rewritten to the agent:
//
//	GET /probe/{namespace}/{name}/tcp/{port}[?timeout=DURATION]
//	GET /probe/{namespace}/{name}/http/{port}/{path...}   (query kept)
//
// It answers 200 when the probe passes, the pod's own status for a failing
// HTTP probe, 503 when the pod cannot be reached, 404 for an unknown pod,
// 400 for a bad request and, at once, 429 when the node or the pod has too
// many probes in flight (see Limits). A TCP probe's ?timeout (default 1s)
// longer than the limit (10s) is cut to it; an HTTP probe's query is the
// pod's, so it runs with the default timeout.
func Handler(p *Prober) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /probe/{namespace}/{name}/tcp/{port}", func(w http.ResponseWriter, r *http.Request) {
		serve(p, w, r, "")
	})
	mux.HandleFunc("GET /probe/{namespace}/{name}/http/{port}/{path...}", func(w http.ResponseWriter, r *http.Request) {
		path := "/" + r.PathValue("path")
		if r.URL.RawQuery != "" {
			path += "?" + r.URL.RawQuery
		}
		serve(p, w, r, path)
	})
	return mux
}

func serve(p *Prober, w http.ResponseWriter, r *http.Request, path string) {
	port, err := strconv.Atoi(r.PathValue("port"))
	if err != nil {
		http.Error(w, fmt.Sprintf("port %q is not a number", r.PathValue("port")), http.StatusBadRequest)
		return
	}
	var timeout time.Duration
	if t := r.URL.Query().Get("timeout"); t != "" && path == "" {
		if timeout, err = time.ParseDuration(t); err != nil || timeout < 0 {
			http.Error(w, fmt.Sprintf("timeout %q: want a Go duration such as 1s (at most %v is used)", t, p.limits.MaxTimeout), http.StatusBadRequest)
			return
		}
	}
	res, err := p.Probe(r.Context(), k8sname.Pod{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}, port, path, timeout)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	case errors.Is(err, errdefs.ErrResourceExhausted):
		w.Header().Set("Retry-After", "1")
		http.Error(w, err.Error(), http.StatusTooManyRequests)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch {
	case res.Success:
		w.WriteHeader(http.StatusOK)
	case res.HTTPStatus != 0:
		w.WriteHeader(res.HTTPStatus)
	default:
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, res.Message)
}
