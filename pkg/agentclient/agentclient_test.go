package agentclient

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

func TestSocketPath(t *testing.T) {
	t.Setenv(EnvSocket, "")
	if got := SocketPath(""); got != DefaultSocket {
		t.Errorf("no flag, no env: %q", got)
	}
	t.Setenv(EnvSocket, "/env.sock")
	if got := SocketPath(""); got != "/env.sock" {
		t.Errorf("env: %q", got)
	}
	if got := SocketPath("/flag.sock"); got != "/flag.sock" {
		t.Errorf("flag: %q", got)
	}
}

// A call to an absent agent fails with Unavailable, which Unreachable
// turns into an error that names the socket and the reason.
func TestUnreachable(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	cl, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = cl.Status(ctx, &apiv1.StatusRequest{})
	var u *UnreachableError
	if !errors.As(cl.Unreachable(err), &u) || u.Socket != sock || !strings.Contains(u.Error(), sock) ||
		strings.Count(u.Error(), sock) != 1 {
		t.Fatalf("call error %v: Unreachable gave %v", err, cl.Unreachable(err))
	}
	if cl.Unreachable(nil) != nil || cl.Unreachable(status.Error(codes.NotFound, "x")) != nil {
		t.Error("Unreachable of a non-Unavailable error")
	}
}

// An agent that answers, even with an error, is reachable.
func TestReachable(t *testing.T) {
	dir, err := os.MkdirTemp("", "ac")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	apiv1.RegisterENIServiceServer(g, apiv1.UnimplementedENIServiceServer{})
	go g.Serve(lis)
	defer g.Stop()
	cl, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	_, err = cl.Status(context.Background(), &apiv1.StatusRequest{})
	if status.Code(err) != codes.Unimplemented || cl.Unreachable(err) != nil {
		t.Errorf("Status: %v; Unreachable: %v", err, cl.Unreachable(err))
	}
	if _, err := Dial("relative.sock"); err == nil {
		t.Error("relative socket accepted")
	}
}
