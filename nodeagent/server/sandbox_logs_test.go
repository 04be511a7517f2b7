package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/sandbox"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

// fakeLog is every sandbox's console log in the fake: more than two
// chunks of SandboxLogs.
var fakeLog = bytes.Repeat([]byte("console line\n"), 6000)

// Logs writes fakeLog (its tail), or "qemu log\n" for QEMU's.
func (f *fakeSandboxes) Logs(_ context.Context, id string, req sandbox.LogRequest, w io.Writer) error {
	if err := req.Validate(); err != nil {
		return err
	}
	if _, err := f.Get(id); err != nil {
		return err
	}
	data := fakeLog
	if req.Source == sandbox.LogQEMU {
		data = []byte("qemu log\n")
	}
	if req.TailBytes > 0 && req.TailBytes < int64(len(data)) {
		data = data[int64(len(data))-req.TailBytes:]
	}
	_, err := w.Write(data)
	return err
}

// readLogs reads a SandboxLogs stream to its end; it checks each chunk's
// size.
func readLogs(ctx context.Context, cl *agentclient.Client, req *apiv1.SandboxLogsRequest) ([]byte, error) {
	st, err := cl.SandboxLogs(ctx, req)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return b.Bytes(), nil
		}
		if err != nil {
			return b.Bytes(), err
		}
		if len(m.GetData()) > execChunk {
			return nil, fmt.Errorf("a chunk of %d bytes", len(m.GetData()))
		}
		b.Write(m.GetData())
	}
}

// SandboxLogs streams the domain's log in chunks and translates the
// request (source, tail); the domain's refusals get their codes.
func TestSandboxLogs(t *testing.T) {
	svc := newFake()
	cl := startSandboxServer(t, svc)
	ctx := testContext(t)
	if _, err := svc.Create(ctx, sandbox.Spec{ID: "box"}, false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		req  *apiv1.SandboxLogsRequest
		want []byte
		code codes.Code
	}{
		{req: &apiv1.SandboxLogsRequest{Id: "box"}, want: fakeLog},
		{req: &apiv1.SandboxLogsRequest{Id: "box", Source: apiv1.SandboxLogsRequest_CONSOLE, TailBytes: 13}, want: []byte("console line\n")},
		{req: &apiv1.SandboxLogsRequest{Id: "box", TailBytes: 1 << 63}, want: fakeLog},
		{req: &apiv1.SandboxLogsRequest{Id: "box", Source: apiv1.SandboxLogsRequest_QEMU, Follow: true}, want: []byte("qemu log\n")},
		{req: &apiv1.SandboxLogsRequest{Id: "box", Source: 7}, code: codes.InvalidArgument},
		{req: &apiv1.SandboxLogsRequest{Id: "nope"}, code: codes.NotFound},
		{req: &apiv1.SandboxLogsRequest{Id: "../x"}, code: codes.InvalidArgument},
	} {
		got, err := readLogs(ctx, cl, tc.req)
		if status.Code(err) != tc.code || (tc.code == codes.OK && !bytes.Equal(got, tc.want)) {
			t.Errorf("%v: %d bytes, %v; want %d bytes, %v", tc.req, len(got), err, len(tc.want), tc.code)
		}
	}
}
