// Package agentclient dials the node agent's gRPC API over its unix socket.
package agentclient

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// DefaultSocket is the agent's default socket path.
const DefaultSocket = "/run/nodeagent/nodeagent.sock"

// EnvSocket names the environment variable that overrides DefaultSocket.
const EnvSocket = "NODEAGENT_SOCKET"

// SocketPath returns flagValue, else $NODEAGENT_SOCKET, else DefaultSocket.
func SocketPath(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if s := os.Getenv(EnvSocket); s != "" {
		return s
	}
	return DefaultSocket
}

// Client is a connection to the agent, with a client of each of its
// services.
type Client struct {
	apiv1.ENIServiceClient
	apiv1.SandboxServiceClient
	conn *grpc.ClientConn
}

// Dial prepares a connection to the agent at socket and starts connecting
// in the background; an absent agent shows up as codes.Unavailable on the
// first call.
func Dial(socket string) (*Client, error) {
	if !filepath.IsAbs(socket) {
		return nil, fmt.Errorf("agent socket %q must be an absolute path", socket)
	}
	conn, err := grpc.NewClient("passthrough:///nodeagent",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("agent client for %s: %w", socket, err)
	}
	conn.Connect() // start the handshake now, while the caller gets ready
	return &Client{
		ENIServiceClient:     apiv1.NewENIServiceClient(conn),
		SandboxServiceClient: apiv1.NewSandboxServiceClient(conn),
		conn:                 conn,
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
