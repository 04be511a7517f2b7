// Command livenessprobe stands in for the CSI livenessprobe sidecar in
// the test cluster of e2e/k8s, whose module proxy cannot serve the
// upstream one (its v2 tags carry a go.mod without /v2). With the upstream
// flags the manifests pass, it serves GET /healthz on --health-port: 200
// when the driver's Probe over --csi-address answers ready, 500 otherwise.
// make k8s-images packs it under the manifests' image name only when the
// upstream module cannot be built.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	csiAddr := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket")
	port := flag.Int("health-port", 9808, "the port of /healthz")
	addr := flag.String("http-endpoint", "", "HOST:PORT of /healthz (instead of --health-port)")
	timeout := flag.Duration("probe-timeout", time.Second, "how long a Probe may take")
	_ = flag.Int("v", 0, "ignored (upstream's log level)")
	flag.Parse()
	conn, err := grpc.NewClient("unix://"+*csiAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	id := csi.NewIdentityClient(conn)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		switch {
		case err != nil:
			http.Error(w, "probe: "+err.Error(), http.StatusInternalServerError)
		case resp.GetReady() != nil && !resp.GetReady().GetValue():
			http.Error(w, "driver not ready", http.StatusInternalServerError)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	listen := *addr
	if listen == "" {
		listen = fmt.Sprintf(":%d", *port)
	}
	log.Printf("serving /healthz on %s for %s", listen, *csiAddr)
	log.Fatal(http.ListenAndServe(listen, nil))
}
