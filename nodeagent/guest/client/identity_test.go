package client

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// SetIdentity sends the identity whole; the guest's refusal comes back as
// InvalidArgument, and so does an identity the host itself finds invalid,
// which is never sent.
func TestSetIdentity(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	got := make(chan agentproto.Identity, 10)
	fakeGuest(t, sock, func(conn net.Conn, r *bufio.Reader) {
		sendJSON(t, conn, agentproto.FrameHello, 0, agentproto.Hello{ProtocolVersion: agentproto.Version})
		for {
			id, req, ok := readRequest(t, r)
			if !ok {
				return
			}
			if req.Method != agentproto.MethodSetIdentity {
				continue // Dial's ping, unanswered
			}
			var ident agentproto.Identity
			if err := json.Unmarshal(req.Params, &ident); err != nil {
				t.Errorf("params %s: %v", req.Params, err)
			}
			got <- ident
			resp := agentproto.Response{}
			if ident.Hostname == "refused" {
				resp = agentproto.Response{Error: "hostname \"refused\": no", Code: agentproto.CodeInvalidArgument}
			}
			sendJSON(t, conn, agentproto.FrameResponse, id, resp)
		}
	})
	c, err := Dial(testCtx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	want := agentproto.Identity{Hostname: "pod-1", MachineID: "0123456789abcdef0123456789abcdef", Entropy: make([]byte, 64), UnixNano: time.Now().UnixNano()}
	for i := range want.Entropy {
		want.Entropy[i] = byte(i)
	}
	if err := c.SetIdentity(testCtx(t), want); err != nil {
		t.Fatal(err)
	}
	if ident := <-got; !reflect.DeepEqual(ident, want) {
		t.Fatalf("the guest got %+v, want %+v", ident, want)
	}

	refused := want
	refused.Hostname = "refused"
	err = c.SetIdentity(testCtx(t), refused)
	var re *RemoteError
	if !errors.As(err, &re) || re.Method != agentproto.MethodSetIdentity || !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("refused by the guest: %v", err)
	}
	<-got

	invalid := want
	invalid.MachineID = "not hex"
	if err := c.SetIdentity(testCtx(t), invalid); !errors.Is(err, errdefs.ErrInvalidArgument) || errors.As(err, &re) {
		t.Fatalf("invalid identity: %v", err)
	}
	// Requests arrive in order: what the guest gets next is this one.
	if err := c.SetIdentity(testCtx(t), want); err != nil {
		t.Fatal(err)
	}
	if ident := <-got; ident.MachineID != want.MachineID {
		t.Fatalf("an invalid identity was sent: %+v", ident)
	}
}
