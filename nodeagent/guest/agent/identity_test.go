//go:build linux

package main

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
	"github.com/nodeinfra/nodeinfra/nodeagent/guest/client"
)

// fakeIdentity records the identitySystem calls; the step named fail
// fails.
type fakeIdentity struct {
	mu    sync.Mutex
	calls []string
	fail  string
}

func (f *fakeIdentity) step(name, arg string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name+" "+arg)
	if name == f.fail {
		return errors.New("injected failure")
	}
	return nil
}

func (f *fakeIdentity) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeIdentity) SetHostname(name string) error  { return f.step("hostname", name) }
func (f *fakeIdentity) WriteMachineID(id string) error { return f.step("machine-id", id) }
func (f *fakeIdentity) AddEntropy(b []byte) error      { return f.step("entropy", hex.EncodeToString(b)) }
func (f *fakeIdentity) SetClock(ns int64) error        { return f.step("clock", fmt.Sprint(ns)) }

func testIdentity() agentproto.Identity {
	id := agentproto.Identity{Hostname: "pod-7", MachineID: "00112233445566778899aabbccddeeff", Entropy: make([]byte, 40), UnixNano: 1700000000123456789}
	for i := range id.Entropy {
		id.Entropy[i] = byte(i)
	}
	return id
}

func TestSetIdentity(t *testing.T) {
	a := testAgent(t)
	fake := a.identity.(*fakeIdentity)
	c := dial(t, serve(t, a))
	id := testIdentity()
	if err := c.SetIdentity(ctxT(t, 5*time.Second), id); err != nil {
		t.Fatal(err)
	}
	want := []string{"clock 1700000000123456789", "entropy " + hex.EncodeToString(id.Entropy), "machine-id " + id.MachineID, "hostname pod-7"}
	if got := fake.recorded(); !reflect.DeepEqual(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	// UnixNano 0 leaves the clock alone.
	id.UnixNano = 0
	if err := c.SetIdentity(ctxT(t, 5*time.Second), id); err != nil {
		t.Fatal(err)
	}
	if got := fake.recorded()[len(want):]; !reflect.DeepEqual(got, want[1:]) {
		t.Fatalf("without a clock: calls %q, want %q", got, want[1:])
	}
}

// rawCall sends one request on a fresh connection, bypassing the client's
// own checks, and returns the agent's answer.
func rawCall(t *testing.T, sock string, req agentproto.Request) agentproto.Response {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	if f, err := agentproto.ReadFrame(r); err != nil || f.Type != agentproto.FrameHello {
		t.Fatalf("hello: %+v, %v", f, err)
	}
	f, err := agentproto.JSONFrame(agentproto.FrameRequest, 1, req)
	if err != nil {
		t.Fatal(err)
	}
	if err := agentproto.WriteFrame(conn, f); err != nil {
		t.Fatal(err)
	}
	f, err = agentproto.ReadFrame(r)
	var resp agentproto.Response
	if err != nil || f.Type != agentproto.FrameResponse || f.ID != 1 || f.DecodeJSON(&resp) != nil {
		t.Fatalf("response: %+v, %v", f, err)
	}
	return resp
}

func TestSetIdentityInvalid(t *testing.T) {
	a := testAgent(t)
	fake := a.identity.(*fakeIdentity)
	sock := serve(t, a)
	params := func(f func(*agentproto.Identity)) json.RawMessage {
		id := testIdentity()
		f(&id)
		b, err := json.Marshal(id)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, tc := range map[string]struct {
		params json.RawMessage
		want   string
	}{
		"missing params": {nil, "missing params"},
		"not JSON":       {json.RawMessage(`[1,2]`), "decode params"},
		"bad hostname":   {params(func(i *agentproto.Identity) { i.Hostname = "a b" }), `hostname "a b"`},
		"uppercase id":   {params(func(i *agentproto.Identity) { i.MachineID = strings.ToUpper(i.MachineID) }), "machine id"},
		"huge entropy":   {params(func(i *agentproto.Identity) { i.Entropy = make([]byte, 600<<10) }), "entropy of 614400 bytes"},
	} {
		resp := rawCall(t, sock, agentproto.Request{Method: agentproto.MethodSetIdentity, Params: tc.params})
		if resp.Code != agentproto.CodeInvalidArgument || !strings.Contains(resp.Error, tc.want) {
			t.Errorf("%s: %+v, want InvalidArgument with %q", name, resp, tc.want)
		}
	}
	if calls := fake.recorded(); len(calls) != 0 {
		t.Fatalf("invalid identities made calls %q", calls)
	}
}

func TestSetIdentityStepFails(t *testing.T) {
	for _, tc := range []struct{ step, msg string }{
		{"clock", "set clock: injected failure"},
		{"entropy", "add entropy: injected failure"},
		{"machine-id", "write machine id: injected failure"},
		{"hostname", `set hostname "pod-7": injected failure`},
	} {
		t.Run(tc.step, func(t *testing.T) {
			a := testAgent(t)
			fake := &fakeIdentity{fail: tc.step}
			a.identity = fake
			c := dial(t, serve(t, a))
			err := c.SetIdentity(ctxT(t, 5*time.Second), testIdentity())
			var re *client.RemoteError
			if !errors.As(err, &re) || re.Code != agentproto.CodeInternal || re.Message != tc.msg {
				t.Fatalf("got %v, want Internal %q", err, tc.msg)
			}
			calls := fake.recorded()
			if last := calls[len(calls)-1]; !strings.HasPrefix(last, tc.step+" ") {
				t.Fatalf("went on after the failure: %q", calls)
			}
		})
	}
}

func TestIdentityWriteMachineID(t *testing.T) {
	dir := t.TempDir()
	s := osIdentity{machineIDPath: filepath.Join(dir, "etc", "machine-id")}
	for _, id := range []string{"00112233445566778899aabbccddeeff", "ffeeddccbbaa99887766554433221100"} {
		if err := s.WriteMachineID(id); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(s.machineIDPath)
		if err != nil || string(b) != id+"\n" {
			t.Fatalf("%q, %v", b, err)
		}
		fi, err := os.Stat(s.machineIDPath)
		if err != nil || fi.Mode().Perm() != 0o444 {
			t.Fatalf("mode %v, %v", fi.Mode(), err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(s.machineIDPath)); len(ents) != 1 {
		t.Fatalf("left behind: %v", ents)
	}
}

func TestIdentityRandPoolInfo(t *testing.T) {
	b := []byte{1, 2, 3, 4, 5}
	info := randPoolInfo(b)
	if len(info) != 13 || binary.NativeEndian.Uint32(info[0:]) != 40 || binary.NativeEndian.Uint32(info[4:]) != 5 || string(info[8:]) != string(b) {
		t.Fatalf("%x", info)
	}
}
