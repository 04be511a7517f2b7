package agentproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func header(magic0, magic1, version, typ byte, id, length uint32) []byte {
	b := []byte{magic0, magic1, version, typ}
	b = binary.BigEndian.AppendUint32(b, id)
	return binary.BigEndian.AppendUint32(b, length)
}

func TestFrameRoundTrip(t *testing.T) {
	hello, err := JSONFrame(FrameHello, 0, Hello{ProtocolVersion: Version, AgentVersion: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	frames := []Frame{
		hello,
		{Type: FrameRequest, ID: 1, Payload: []byte(`{"method":"Ping"}`)},
		{Type: FrameStdinClose, ID: 0xFFFFFFFF},
		{Type: FrameStdout, ID: 7, Payload: bytes.Repeat([]byte{0, 0xA5, 0x4E}, 1000)},
		{Type: FrameStderr, ID: 7, Payload: make([]byte, MaxPayload)},
		CreditFrame(7, Window),
	}
	var buf bytes.Buffer
	for _, f := range frames {
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatalf("write %s: %v", f.Type, err)
		}
	}
	for _, want := range frames {
		got, err := ReadFrame(&buf)
		if err != nil {
			t.Fatalf("read %s: %v", want.Type, err)
		}
		if got.Type != want.Type || got.ID != want.ID || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("got %s/%d/%d bytes, want %s/%d/%d bytes", got.Type, got.ID, len(got.Payload), want.Type, want.ID, len(want.Payload))
		}
	}
	if _, err := ReadFrame(&buf); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
	var h Hello
	if err := hello.DecodeJSON(&h); err != nil || h.ProtocolVersion != Version || h.AgentVersion != "v1" {
		t.Fatalf("hello: %+v, %v", h, err)
	}
	if n, err := CreditFrame(3, 12345).Credit(); err != nil || n != 12345 {
		t.Fatalf("credit: %d, %v", n, err)
	}
}

func TestReadFrameErrors(t *testing.T) {
	ok := header(0xA5, 0x4E, Version, byte(FrameStdout), 1, 3)
	for _, tc := range []struct {
		name  string
		input []byte
		want  error
	}{
		{"empty", nil, io.EOF},
		{"short header", ok[:7], io.ErrUnexpectedEOF},
		{"short payload", append(append([]byte{}, ok...), 'a', 'b'), io.ErrUnexpectedEOF},
		{"header only", ok, io.ErrUnexpectedEOF},
		{"bad magic", header('N', 'I', Version, byte(FrameStdout), 1, 0), ErrBadMagic},
		{"version 0", header(0xA5, 0x4E, 0, byte(FrameStdout), 1, 0), ErrUnsupportedVersion},
		{"version 2", header(0xA5, 0x4E, 2, byte(FrameStdout), 1, 0), ErrUnsupportedVersion},
		{"type 0", header(0xA5, 0x4E, Version, 0, 1, 0), ErrUnknownFrameType},
		{"type 200", header(0xA5, 0x4E, Version, 200, 1, 0), ErrUnknownFrameType},
		{"oversize", header(0xA5, 0x4E, Version, byte(FrameStdout), 1, MaxPayload+1), ErrFrameTooLarge},
		{"huge", header(0xA5, 0x4E, Version, byte(FrameRequest), 1, 0xFFFFFFFF), ErrFrameTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(tc.input))
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestWriteFrameErrors(t *testing.T) {
	if err := WriteFrame(io.Discard, Frame{Type: FrameStdout, Payload: make([]byte, MaxPayload+1)}); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversize: %v", err)
	}
	if err := WriteFrame(io.Discard, Frame{Type: 0}); !errors.Is(err, ErrUnknownFrameType) {
		t.Fatalf("type 0: %v", err)
	}
	if _, err := JSONFrame(FrameRequest, 1, Request{Method: "x", Params: []byte(`"` + strings.Repeat("a", MaxPayload) + `"`)}); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversize json: %v", err)
	}
	if _, err := (Frame{Type: FrameCredit, Payload: []byte{1}}).Credit(); !errors.Is(err, ErrBadPayload) {
		t.Fatalf("short credit: %v", err)
	}
	if err := (Frame{Type: FrameExit, Payload: []byte("{")}).DecodeJSON(&ExitStatus{}); !errors.Is(err, ErrBadPayload) {
		t.Fatalf("bad json: %v", err)
	}
}

func TestFrameTypeString(t *testing.T) {
	if s := FrameStdinClose.String(); s != "stdin-close" {
		t.Fatal(s)
	}
	if s := FrameType(99).String(); s != "frame-type-99" {
		t.Fatal(s)
	}
}

// FuzzReadFrame feeds arbitrary streams to the decoder: it must not panic,
// must not allocate more than MaxPayload for a frame, and what it accepts
// must encode back to the same bytes.
func FuzzReadFrame(f *testing.F) {
	var seed bytes.Buffer
	_ = WriteFrame(&seed, Frame{Type: FrameRequest, ID: 1, Payload: []byte(`{"method":"Ping"}`)})
	_ = WriteFrame(&seed, CreditFrame(1, 4096))
	f.Add(seed.Bytes())
	f.Add(header(0xA5, 0x4E, Version, byte(FrameStdout), 9, MaxPayload+1))
	f.Add(header(0xA5, 0x4E, 9, byte(FrameStdout), 9, 0))
	f.Add([]byte{0xA5})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		consumed := 0
		for {
			fr, err := ReadFrame(r)
			if err != nil {
				return
			}
			if len(fr.Payload) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(fr.Payload))
			}
			enc, err := AppendFrame(nil, fr)
			if err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			if !bytes.Equal(enc, data[consumed:consumed+len(enc)]) {
				t.Fatalf("re-encoding differs at offset %d", consumed)
			}
			consumed += len(enc)
			switch fr.Type {
			case FrameCredit:
				_, _ = fr.Credit()
			case FrameHello, FrameRequest, FrameResponse, FrameExit, FrameSignal:
				var v map[string]any
				_ = fr.DecodeJSON(&v)
			}
		}
	})
}
