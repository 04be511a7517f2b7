package probe

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/k8sname"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Handler serves kubelet probes rewritten to the agent:
//
//	GET /probe/{namespace}/{name}/tcp/{port}
//	GET /probe/{namespace}/{name}/http/{port}/{path...}   (query kept)
//
// It answers 200 when the probe passes, the pod's own status for a failing
// HTTP probe, 503 when the pod cannot be reached and 404 for an unknown
// pod. An optional ?timeout=DURATION bounds the probe (default 1s).
func Handler(t Targets) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /probe/{namespace}/{name}/tcp/{port}", func(w http.ResponseWriter, r *http.Request) {
		serve(t, w, r, "")
	})
	mux.HandleFunc("GET /probe/{namespace}/{name}/http/{port}/{path...}", func(w http.ResponseWriter, r *http.Request) {
		path := "/" + r.PathValue("path")
		if r.URL.RawQuery != "" {
			path += "?" + r.URL.RawQuery
		}
		serve(t, w, r, path)
	})
	return mux
}

func serve(t Targets, w http.ResponseWriter, r *http.Request, path string) {
	port, err := strconv.Atoi(r.PathValue("port"))
	if err != nil {
		http.Error(w, fmt.Sprintf("port %q is not a number", r.PathValue("port")), http.StatusBadRequest)
		return
	}
	req, err := Prepare(t, k8sname.Pod{Namespace: r.PathValue("namespace"), Name: r.PathValue("name")}, port, path)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	case err != nil:
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if t := r.URL.Query().Get("timeout"); t != "" && path == "" {
		if d, err := time.ParseDuration(t); err == nil {
			req.Timeout = d
		}
	}
	res := Run(r.Context(), req)
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
