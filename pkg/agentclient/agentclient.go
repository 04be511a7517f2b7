// Package agentclient dials the node agent's gRPC API over its unix socket.
package agentclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

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
	apiv1.GroupServiceClient
	conn   *grpc.ClientConn
	socket string

	mu      sync.Mutex
	dialErr error // of the last connection attempt; nil once one succeeds
}

// Dial prepares a connection to the agent at socket and starts connecting
// in the background; an absent agent shows up as codes.Unavailable on the
// first call (see Unreachable).
func Dial(socket string) (*Client, error) {
	if !filepath.IsAbs(socket) {
		return nil, fmt.Errorf("agent socket %q must be an absolute path", socket)
	}
	c := &Client{socket: socket}
	conn, err := grpc.NewClient("passthrough:///nodeagent",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "unix", socket)
			c.mu.Lock()
			c.dialErr = err
			c.mu.Unlock()
			return nc, err
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("agent client for %s: %w", socket, err)
	}
	conn.Connect() // start the handshake now, while the caller gets ready
	c.conn = conn
	c.ENIServiceClient = apiv1.NewENIServiceClient(conn)
	c.SandboxServiceClient = apiv1.NewSandboxServiceClient(conn)
	c.GroupServiceClient = apiv1.NewGroupServiceClient(conn)
	return c, nil
}

// UnreachableError says that no agent answers on Socket.
type UnreachableError struct {
	Socket string
	Err    error // why the connection failed, such as "connect: no such file or directory"
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("no agent answers on %s: %v", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Unreachable returns an *UnreachableError when err, a call's error, is
// the Unavailable status of a call that failed because the connection to
// the socket failed; else nil. (The connection is made in the background:
// an absent agent shows up only as a call's Unavailable status, whose
// message is gRPC's, not the reason.)
func (c *Client) Unreachable(err error) error {
	if status.Code(err) != codes.Unavailable {
		return nil
	}
	c.mu.Lock()
	dialErr := c.dialErr
	c.mu.Unlock()
	if dialErr == nil {
		return nil
	}
	var op *net.OpError
	if errors.As(dialErr, &op) && op.Err != nil {
		dialErr = op.Err // "dial unix PATH: " would repeat the socket
	}
	return &UnreachableError{Socket: c.socket, Err: dialErr}
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
