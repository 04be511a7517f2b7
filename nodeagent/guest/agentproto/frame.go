// Package agentproto is the wire protocol between the node agent (host) and
// the guest agent of a sandbox VM, carried over a virtio-serial port.
//
// The stream is a sequence of frames. Each frame is a 12-byte header
// followed by its payload:
//
//	offset size
//	0      2    magic 0xA5 0x4E
//	2      1    protocol version (Version)
//	3      1    frame type (FrameType)
//	4      4    id, big-endian: the request id, or the exec's request id
//	8      4    payload length, big-endian (at most MaxPayload)
//
// Control payloads (Hello, Request, Response, Exit, Signal) are JSON; stdio
// payloads are raw bytes; Credit carries a big-endian uint32.
//
// A session starts when the host connects to the port: the guest sends
// Hello (id 0). The host sends Requests with ids of its choosing (unique
// among its outstanding requests and running execs); the guest answers each
// with one Response of the same id. An Exec request that succeeds starts a
// process whose stdio frames carry the request's id, and which ends with an
// Exit frame. Stdio is flow-controlled per exec and direction: a sender may
// have at most Window bytes of stdio payload that the receiver has not given
// back with Credit frames. Within one protocol version the frame types and
// their meaning are fixed; a change needs a new version.
//
// Receivers hold senders to these rules: the host takes a stdio frame over
// MaxChunk or beyond the window it gave, stdio after an Exit, a frame type
// only the host sends, or bytes that are no frame, as a protocol violation
// and ends the connection (nodeagent/guest/client).
package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version this package speaks.
const Version = 1

// Sizes and limits.
const (
	// HeaderSize is the length of a frame header.
	HeaderSize = 12
	// MaxPayload is the largest payload a frame may carry.
	MaxPayload = 1 << 20
	// MaxChunk is the largest stdio payload a sender puts in one frame:
	// a guest frame of at most 32 KiB leaves the guest in one write to the
	// virtio-serial port, so a host that reconnects never starts in the
	// middle of one.
	MaxChunk = 32<<10 - HeaderSize
	// Window is how many bytes of one exec's stdio, per direction, a
	// sender may have outstanding before the receiver returns Credit.
	Window = 256 << 10
)

// Magic starts every frame header.
var Magic = [2]byte{0xA5, 0x4E}

// FrameType says what a frame carries.
type FrameType uint8

// Frame types. "host→guest" and "guest→host" say who sends them.
const (
	// FrameHello (guest→host, id 0, JSON Hello) opens a session.
	FrameHello FrameType = iota + 1
	// FrameRequest (host→guest, JSON Request) calls a method.
	FrameRequest
	// FrameResponse (guest→host, JSON Response) answers the request of
	// the same id.
	FrameResponse
	// FrameStdin (host→guest, raw) is data for an exec's stdin.
	FrameStdin
	// FrameStdinClose (host→guest, empty) closes an exec's stdin once the
	// data before it has been written.
	FrameStdinClose
	// FrameStdout (guest→host, raw) is data an exec wrote to stdout.
	FrameStdout
	// FrameStderr (guest→host, raw) is data an exec wrote to stderr.
	FrameStderr
	// FrameExit (guest→host, JSON ExitStatus) ends an exec; no stdio
	// frame of that exec follows it.
	FrameExit
	// FrameSignal (host→guest, JSON Signal) signals a running exec's
	// process group.
	FrameSignal
	// FrameCredit (both ways, uint32) gives back stdio window: the
	// receiver has consumed that many bytes of the exec's stdio.
	FrameCredit

	maxFrameType = FrameCredit
)

var frameTypeNames = [...]string{
	FrameHello: "hello", FrameRequest: "request", FrameResponse: "response",
	FrameStdin: "stdin", FrameStdinClose: "stdin-close", FrameStdout: "stdout",
	FrameStderr: "stderr", FrameExit: "exit", FrameSignal: "signal", FrameCredit: "credit",
}

func (t FrameType) String() string {
	if t >= 1 && t <= maxFrameType {
		return frameTypeNames[t]
	}
	return fmt.Sprintf("frame-type-%d", uint8(t))
}

// Errors of the frame codec. A stream that produced one of them is out of
// step: the reader cannot find the next frame.
var (
	ErrBadMagic           = errors.New("agentproto: bad frame magic")
	ErrUnsupportedVersion = errors.New("agentproto: unsupported protocol version")
	ErrUnknownFrameType   = errors.New("agentproto: unknown frame type")
	ErrFrameTooLarge      = errors.New("agentproto: frame payload too large")
	ErrBadPayload         = errors.New("agentproto: bad payload")
)

// Header is a decoded frame header.
type Header struct {
	Type   FrameType
	ID     uint32
	Length uint32
}

// ParseHeader decodes and checks a frame header; b must hold HeaderSize
// bytes.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, io.ErrUnexpectedEOF
	}
	if b[0] != Magic[0] || b[1] != Magic[1] {
		return Header{}, fmt.Errorf("%w: %#02x %#02x", ErrBadMagic, b[0], b[1])
	}
	if b[2] != Version {
		return Header{}, fmt.Errorf("%w: %d (want %d)", ErrUnsupportedVersion, b[2], Version)
	}
	h := Header{Type: FrameType(b[3]), ID: binary.BigEndian.Uint32(b[4:8]), Length: binary.BigEndian.Uint32(b[8:12])}
	if h.Type < 1 || h.Type > maxFrameType {
		return Header{}, fmt.Errorf("%w: %d", ErrUnknownFrameType, b[3])
	}
	if h.Length > MaxPayload {
		return Header{}, fmt.Errorf("%w: %d bytes (max %d)", ErrFrameTooLarge, h.Length, MaxPayload)
	}
	return h, nil
}

// Frame is one protocol message.
type Frame struct {
	Type    FrameType
	ID      uint32
	Payload []byte
}

// AppendFrame appends f's encoding to dst.
func AppendFrame(dst []byte, f Frame) ([]byte, error) {
	if f.Type < 1 || f.Type > maxFrameType {
		return dst, fmt.Errorf("%w: %d", ErrUnknownFrameType, uint8(f.Type))
	}
	if len(f.Payload) > MaxPayload {
		return dst, fmt.Errorf("%w: %d bytes (max %d)", ErrFrameTooLarge, len(f.Payload), MaxPayload)
	}
	dst = append(dst, Magic[0], Magic[1], Version, byte(f.Type))
	dst = binary.BigEndian.AppendUint32(dst, f.ID)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Payload)))
	return append(dst, f.Payload...), nil
}

// WriteFrame writes f with a single Write call (so that writers that
// share w under a lock never interleave frames).
func WriteFrame(w io.Writer, f Frame) error {
	b, err := AppendFrame(make([]byte, 0, HeaderSize+len(f.Payload)), f)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ReadFrame reads one frame. It returns io.EOF when r ends cleanly between
// frames and io.ErrUnexpectedEOF when it ends inside one.
func ReadFrame(r io.Reader) (Frame, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	h, err := ParseHeader(hdr[:])
	if err != nil {
		return Frame{}, err
	}
	f := Frame{Type: h.Type, ID: h.ID}
	if h.Length > 0 {
		f.Payload = make([]byte, h.Length)
		if _, err := io.ReadFull(r, f.Payload); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
	return f, nil
}

// JSONFrame builds a frame whose payload is v in JSON.
func JSONFrame(t FrameType, id uint32, v any) (Frame, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return Frame{}, fmt.Errorf("encode %s payload: %w", t, err)
	}
	if len(b) > MaxPayload {
		return Frame{}, fmt.Errorf("encode %s payload: %w: %d bytes", t, ErrFrameTooLarge, len(b))
	}
	return Frame{Type: t, ID: id, Payload: b}, nil
}

// DecodeJSON decodes f's JSON payload into v.
func (f Frame) DecodeJSON(v any) error {
	if err := json.Unmarshal(f.Payload, v); err != nil {
		return fmt.Errorf("%w: %s frame: %v", ErrBadPayload, f.Type, err)
	}
	return nil
}

// CreditFrame gives back n bytes of exec id's stdio window.
func CreditFrame(id, n uint32) Frame {
	return Frame{Type: FrameCredit, ID: id, Payload: binary.BigEndian.AppendUint32(nil, n)}
}

// Credit decodes a FrameCredit payload.
func (f Frame) Credit() (uint32, error) {
	if len(f.Payload) != 4 {
		return 0, fmt.Errorf("%w: credit frame of %d bytes", ErrBadPayload, len(f.Payload))
	}
	return binary.BigEndian.Uint32(f.Payload), nil
}
