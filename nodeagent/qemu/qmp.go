// Package qemu drives QEMU processes for pod sandboxes. This file is its
// QMP client: one connection per VM, commands with per-call deadlines
// (matched to their answers by id, so calls may overlap), and the VM's
// asynchronous events.
package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Event is an asynchronous QMP event, such as STOP, RESUME or SHUTDOWN.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	Time time.Time       `json:"-"`
}

// Error is an error answer from QEMU.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc) }

// ErrClosed means the QMP connection is gone (QEMU exited or Close).
var ErrClosed = errors.New("qmp: connection closed")

type message struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	ID     string          `json:"id"`
}

// QMP is a connection to one QEMU's monitor.
type QMP struct {
	conn net.Conn
	enc  *json.Encoder

	wmu sync.Mutex // serializes writes

	mu      sync.Mutex
	nextID  int
	pending map[string]chan message
	err     error // set once the reader stops

	events chan Event
	done   chan struct{}
}

// Dial connects to the QMP socket at path, reads QEMU's greeting and
// leaves capabilities negotiation mode. Events are buffered up to
// eventBuffer; when the buffer is full, older events are dropped.
func Dial(ctx context.Context, path string, eventBuffer int) (*QMP, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	r := bufio.NewReader(conn)
	greeting, err := r.ReadBytes('\n')
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting: %w", err)
	}
	var g struct {
		QMP json.RawMessage `json:"QMP"`
	}
	if json.Unmarshal(greeting, &g) != nil || g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: not a QMP greeting: %q", greeting)
	}
	_ = conn.SetReadDeadline(time.Time{})
	if eventBuffer < 1 {
		eventBuffer = 1
	}
	q := &QMP{conn: conn, enc: json.NewEncoder(conn), pending: map[string]chan message{},
		events: make(chan Event, eventBuffer), done: make(chan struct{})}
	go q.read(r)
	if err := q.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		q.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) read(r *bufio.Reader) {
	defer close(q.done)
	dec := json.NewDecoder(r)
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			q.mu.Lock()
			q.err = ErrClosed
			for id, ch := range q.pending {
				close(ch)
				delete(q.pending, id)
			}
			q.mu.Unlock()
			close(q.events)
			return
		}
		if m.Event != "" {
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			select {
			case q.events <- ev:
			default: // full: drop the oldest, keep the newest
				select {
				case <-q.events:
				default:
				}
				q.events <- ev
			}
			continue
		}
		q.mu.Lock()
		ch, ok := q.pending[m.ID]
		delete(q.pending, m.ID)
		q.mu.Unlock()
		if ok {
			ch <- m
		}
	}
}

// Execute runs a QMP command with args (nil for none) and decodes its
// answer into result (nil to ignore it). It returns when QEMU answers,
// when ctx ends, or when the connection closes.
func (q *QMP) Execute(ctx context.Context, command string, args, result any) error {
	return q.execute(ctx, command, args, result, nil)
}

// ExecuteWithFile is Execute with f's descriptor passed along (SCM_RIGHTS),
// as add-fd and getfd take it.
func (q *QMP) ExecuteWithFile(ctx context.Context, command string, args, result any, f *os.File) error {
	return q.execute(ctx, command, args, result, f)
}

func (q *QMP) execute(ctx context.Context, command string, args, result any, f *os.File) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	q.mu.Lock()
	if q.err != nil {
		q.mu.Unlock()
		return q.err
	}
	q.nextID++
	id := strconv.Itoa(q.nextID)
	ch := make(chan message, 1)
	q.pending[id] = ch
	q.mu.Unlock()
	forget := func() {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
	}
	req := struct {
		Execute string `json:"execute"`
		Args    any    `json:"arguments,omitempty"`
		ID      string `json:"id"`
	}{command, args, id}
	// No write deadline: a write cut short would leave half a command in
	// the stream. Commands are small; a hung QEMU shows up as a missing
	// answer, which ctx bounds.
	q.wmu.Lock()
	var err error
	if f == nil {
		err = q.enc.Encode(req)
	} else {
		err = q.sendWithFile(req, f)
	}
	q.wmu.Unlock()
	if err != nil {
		forget()
		return fmt.Errorf("qmp: send %s: %w", command, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp: %s: %w", command, ErrClosed)
		}
		if m.Error != nil {
			return fmt.Errorf("qmp: %s: %w", command, m.Error)
		}
		if result != nil && len(m.Return) > 0 {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("qmp: decode answer to %s: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		forget()
		return fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	}
}

// Events returns the channel of asynchronous events; it is closed when the
// connection closes.
func (q *QMP) Events() <-chan Event { return q.events }

// Done is closed once the connection is gone (for example QEMU exited).
func (q *QMP) Done() <-chan struct{} { return q.done }

// Close closes the connection.
func (q *QMP) Close() error {
	err := q.conn.Close()
	<-q.done
	return err
}

// Status is the answer of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// QueryStatus asks for the VM's run state.
func (q *QMP) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := q.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// sendWithFile writes one command in a single message that carries f's
// descriptor; q.wmu is held.
func (q *QMP) sendWithFile(req any, f *os.File) error {
	uc, ok := q.conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("qmp: passing a file needs a unix socket")
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	n, oobn, err := uc.WriteMsgUnix(b, syscall.UnixRights(int(f.Fd())), nil)
	if err == nil && (n != len(b) || oobn == 0) {
		err = fmt.Errorf("short write")
	}
	return err
}
