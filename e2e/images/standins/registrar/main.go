// Command registrar stands in for the CSI node-driver-registrar in the
// test cluster of e2e/k8s, whose module proxy cannot serve the upstream
// one (its v2 tags carry a go.mod without /v2, so the go command cannot
// fetch them). It does what the kubelet needs of it, with the upstream
// flags the manifests pass: it asks the driver its name over
// --csi-address, serves the kubelet's plugin registration API on
// /registration/<driver>-reg.sock, and names --kubelet-registration-path
// as the driver's endpoint. make k8s-images packs it under the manifests'
// image name only when the upstream module cannot be built.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type server struct {
	registerapi.UnimplementedRegistrationServer
	driver, endpoint string
}

func (s *server) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: s.driver, Endpoint: s.endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

func (s *server) NotifyRegistrationStatus(_ context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !st.PluginRegistered {
		log.Printf("the kubelet refused %s: %s", s.driver, st.Error)
	} else {
		log.Printf("registered %s with the kubelet (endpoint %s)", s.driver, s.endpoint)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

func main() {
	csiAddr := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket in this container")
	regPath := flag.String("kubelet-registration-path", "", "the driver's CSI socket as the kubelet sees it")
	regDir := flag.String("plugin-registration-path", "/registration", "the kubelet's plugin registration folder in this container")
	_ = flag.Int("v", 0, "ignored (upstream's log level)")
	_ = flag.Duration("timeout", time.Second, "ignored")
	_ = flag.String("http-endpoint", "", "ignored")
	flag.Parse()
	if *regPath == "" {
		log.Fatal("--kubelet-registration-path is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	driver, err := driverName(ctx, *csiAddr)
	if err != nil {
		log.Fatal(err)
	}
	sock := filepath.Join(*regDir, driver+"-reg.sock")
	_ = os.Remove(sock)
	lis, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	g := grpc.NewServer()
	registerapi.RegisterRegistrationServer(g, &server{driver: driver, endpoint: *regPath})
	go func() { <-ctx.Done(); g.Stop(); _ = os.Remove(sock) }()
	log.Printf("serving registration of %s on %s", driver, sock)
	if err := g.Serve(lis); err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

// driverName asks the driver its name, waiting for its socket.
func driverName(ctx context.Context, addr string) (string, error) {
	conn, err := grpc.NewClient("unix://"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	for {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := csi.NewIdentityClient(conn).GetPluginInfo(c, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			return info.GetName(), nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("the driver at %s did not answer: %w", addr, err)
		case <-time.After(time.Second):
		}
	}
}
