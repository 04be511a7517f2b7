package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// stream returns n bytes that show where they come from: a byte lost,
// repeated or reordered changes what Copy returns.
func stream(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "line %06d\n", i)
	}
	return b.Bytes()[:n]
}

// writeChunks writes data to l in chunks of the sizes given, cycling.
func writeChunks(t testing.TB, l *Log, data []byte, sizes []int) {
	t.Helper()
	for i := 0; len(data) > 0; i++ {
		n := min(len(data), max(1, sizes[i%len(sizes)]))
		if w, err := l.Write(data[:n]); err != nil || w != n {
			t.Fatalf("write %d bytes: %d, %v", n, w, err)
		}
		data = data[n:]
	}
}

func readAll(t testing.TB, path string, tail int64) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Copy(context.Background(), path, Options{Tail: tail}, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// checkLog checks the invariants of a log into which data was written:
// each file within its size, the two together the newest bytes of data,
// in order, at least one file's worth (when there was that much).
func checkLog(t testing.TB, path string, fileSize int64, data []byte) {
	t.Helper()
	var total int64
	for _, p := range []string{path, Prev(path)} {
		st, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > fileSize {
			t.Fatalf("%s holds %d bytes, more than the file size %d", filepath.Base(p), st.Size(), fileSize)
		}
		total += st.Size()
	}
	got := readAll(t, path, 0)
	if int64(len(got)) != total || !bytes.HasSuffix(data, got) {
		t.Fatalf("the log (%d bytes) is not the end of what was written (%d bytes)", len(got), len(data))
	}
	if want := min(int64(len(data)), fileSize); total < want {
		t.Fatalf("the log keeps %d bytes, want at least %d", total, want)
	}
}

func TestLogRotates(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fileSize int64
		total    int
		chunks   []int
	}{
		{"one small write", 100, 10, []int{10}},
		{"exactly one file", 100, 100, []int{7}},
		{"one byte over", 100, 101, []int{101}},
		{"many files, small writes", 100, 1234, []int{1, 3, 17}},
		{"writes larger than a file", 100, 1000, []int{250}},
		{"writes across the boundary", 1000, 3500, []int{999, 2, 1000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			l, err := Open(path, tc.fileSize)
			if err != nil {
				t.Fatal(err)
			}
			data := stream(tc.total)
			writeChunks(t, l, data, tc.chunks)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			checkLog(t, path, tc.fileSize, data)
			if l.Dropped() != 0 {
				t.Errorf("dropped %d bytes", l.Dropped())
			}
			if _, err := l.Write([]byte("x")); !errors.Is(err, os.ErrClosed) {
				t.Errorf("write after close: %v", err)
			}
		})
	}
}

// Rotation holds for any file size and any sequence of writes.
func FuzzLogRotation(f *testing.F) {
	f.Add(uint16(100), []byte{10, 200, 1, 99})
	f.Add(uint16(1), []byte{1, 2, 3})
	f.Add(uint16(4096), []byte{255, 255, 255, 0, 7})
	f.Fuzz(func(t *testing.T, fileSize uint16, chunks []byte) {
		if fileSize == 0 || len(chunks) == 0 || len(chunks) > 64 {
			return
		}
		path := filepath.Join(t.TempDir(), "console.log")
		l, err := Open(path, int64(fileSize))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		sizes := make([]int, len(chunks))
		total := 0
		for i, c := range chunks {
			sizes[i] = int(c) * 37 // up to 9 KiB a write
			total += max(1, sizes[i])
		}
		if total/int(fileSize) > 1000 {
			return // a rename and an open per rotation: keep a run short
		}
		data := stream(total)
		writeChunks(t, l, data, sizes)
		checkLog(t, path, int64(fileSize), data)
	})
}

// An agent that restarts appends to the log it left; files an older agent
// let grow without bound are cut to their newest bytes.
func TestLogReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "console.log")
	data := stream(5000)
	if err := os.WriteFile(path, data[1000:], 0o600); err != nil { // 4000 bytes
		t.Fatal(err)
	}
	if err := os.WriteFile(Prev(path), data[:1000], 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Open(path, 300)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, path, 0); !bytes.Equal(got, append(append([]byte{}, data[700:1000]...), data[4700:]...)) {
		t.Fatalf("after trimming: %q", got)
	}
	more := stream(5100)[5000:]
	if _, err := l.Write(more); err != nil {
		t.Fatal(err)
	}
	l.Close()
	// The 300 newest bytes of the current file filled it; what follows
	// starts a new one.
	if got := readAll(t, path, 0); !bytes.Equal(got, append(append([]byte{}, data[4700:]...), more...)) {
		t.Fatalf("after appending: %q", got)
	}
	if _, err := os.Stat(path + ".trim"); !os.IsNotExist(err) {
		t.Errorf("trim left its temporary file: %v", err)
	}
}

// A log whose directory is gone (or whose disk is full) drops what it
// cannot write rather than fail: the console's reader must go on.
func TestLogDropsWhatItCannotWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sandbox")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := Open(filepath.Join(dir, "console.log"), 10)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	// The open file takes 10 bytes; the rotation then fails.
	if n, err := l.Write(stream(25)); n != 25 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if l.Dropped() != 15 {
		t.Errorf("dropped %d, want 15", l.Dropped())
	}
	if n, err := l.ReadFrom(strings.NewReader("more")); n != 4 || err != nil {
		t.Fatalf("ReadFrom: %d, %v", n, err)
	}
	if l.Dropped() != 19 {
		t.Errorf("dropped %d, want 19", l.Dropped())
	}
}

func TestCopyTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	l, err := Open(path, 100)
	if err != nil {
		t.Fatal(err)
	}
	data := stream(250)
	writeChunks(t, l, data, []int{250})
	l.Close()
	kept := data[100:] // 100 in console.log.1, 50 in console.log
	for _, tc := range []struct {
		tail int64
		want []byte
	}{
		{0, kept}, {1, kept[149:]}, {50, kept[100:]}, {51, kept[99:]}, {150, kept}, {1 << 40, kept},
	} {
		if got := readAll(t, path, tc.tail); !bytes.Equal(got, tc.want) {
			t.Errorf("tail %d: %q, want %q", tc.tail, got, tc.want)
		}
	}
	if got := readAll(t, filepath.Join(t.TempDir(), "none.log"), 10); len(got) != 0 {
		t.Errorf("a missing log reads %q", got)
	}
}

// syncBuffer is a bytes.Buffer for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// A follower sees every byte written while it follows, in order, across
// rotations, and what was written before Done closed.
func TestCopyFollowsAcrossRotations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	// The follower starts before the log exists (a sandbox still booting).
	var out syncBuffer
	done := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- Copy(context.Background(), path, Options{Follow: true, Done: done, Poll: time.Millisecond}, &out)
	}()
	time.Sleep(5 * time.Millisecond)
	l, err := Open(path, 64)
	if err != nil {
		t.Fatal(err)
	}
	data := stream(4000)
	// Slow enough for the follower to keep up: at most one rotation per
	// poll would be needed, and each write waits for it.
	for i := 0; i < len(data); i += 16 {
		if _, err := l.Write(data[i:min(i+16, len(data))]); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for len(out.Bytes()) < i && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
	}
	l.Close()
	close(done)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := out.Bytes(); !bytes.Equal(got, data) {
		t.Fatalf("followed %d bytes, want the %d written:\n%q", len(got), len(data), got)
	}
}

// A followed plain file truncated in place (QEMU's log when it starts
// again) is read again from its start; ctx ends a follow.
func TestCopyFollowsTruncation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qemu.log")
	if err := os.WriteFile(path, []byte("first run\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Copy(ctx, path, Options{Follow: true, Poll: time.Millisecond}, &out) }()
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for string(out.Bytes()) != want {
			if time.Now().After(deadline) {
				t.Fatalf("followed %q, want %q", out.Bytes(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor("first run\n")
	if err := os.WriteFile(path, []byte("2\n"), 0o600); err != nil { // truncates in place
		t.Fatal(err)
	}
	waitFor("first run\n2\n")
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("follow ended with %v, want ctx's error", err)
	}
}
