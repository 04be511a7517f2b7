package probe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// podNS is a namespace with lo up, standing in for a pod's.
func podNS(t *testing.T) ns.NetNS {
	t.Helper()
	n := testutil.NewNS(t)
	testutil.Do(t, n, func() error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

// dropSYNs listens on 127.0.0.1:port in n with an accept queue of one that
// it fills and never drains: the kernel drops every later SYN, as a port
// behind a silent firewall does.
func dropSYNs(t *testing.T, n ns.NetNS, port int) {
	t.Helper()
	var fd int
	testutil.Do(t, n, func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		if err := unix.Listen(fd, 0); err != nil {
			return err
		}
		// Fill the queue (with syncookies off even this one is dropped).
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 500*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return nil
	})
	t.Cleanup(func() { unix.Close(fd) })
}

// threads is the number of OS threads of this process.
func threads(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads line in /proc/self/status")
	return 0
}

func TestDialInNetns(t *testing.T) {
	n := podNS(t)
	var l net.Listener
	testutil.Do(t, n, func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "hello")
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialInNetns(ctx, n.Path(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(b) != "hello" || c.RemoteAddr().String() != l.Addr().String() {
		t.Fatalf("read %q, %v from %v", b, err, c.RemoteAddr())
	}
	// The socket is in the pod's namespace: this process's own has no
	// listener there.
	if c, err := net.DialTimeout("tcp", l.Addr().String(), 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("reached the pod's listener from the test's namespace")
	}
	// A closed port fails at once; a missing namespace too.
	_, err = DialInNetns(ctx, n.Path(), "127.0.0.1:1")
	if !errors.Is(err, unix.ECONNREFUSED) {
		t.Errorf("closed port: %v, want connection refused", err)
	}
	if _, err := DialInNetns(ctx, "/nonexistent/netns", "127.0.0.1:1"); err == nil {
		t.Error("dialed in a missing namespace")
	}
	if _, err := DialInNetns(ctx, n.Path(), "localhost:80"); err == nil {
		t.Error("dialed a host name")
	}
	// And an HTTP probe through it.
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.Error(w, "no", http.StatusTeapot)
		}
	})}
	var hl net.Listener
	testutil.Do(t, n, func() error {
		var err error
		hl, err = net.Listen("tcp", "127.0.0.1:8080")
		return err
	})
	go func() { _ = srv.Serve(hl) }()
	defer srv.Close()
	req := Request{Netns: n.Path(), Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080, HTTPPath: "/healthz"}
	if r := Run(ctx, req); !r.Success || r.HTTPStatus != 200 {
		t.Errorf("HTTP probe: %+v", r)
	}
	req.HTTPPath = "/other"
	if r := Run(ctx, req); r.Success || r.HTTPStatus != http.StatusTeapot {
		t.Errorf("failing HTTP probe: %+v", r)
	}
}

// Many probes of a port that drops SYNs wait out their timeout without an
// OS thread each: the process's thread count stays where it was.
func TestDialHoldsNoThread(t *testing.T) {
	n := podNS(t)
	dropSYNs(t, n, 81)
	const probes = 100
	base := threads(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, probes)
	begin := time.Now()
	for i := 0; i < probes; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := DialInNetns(ctx, n.Path(), "127.0.0.1:81")
			if err == nil {
				c.Close()
			}
			errs <- err
		}()
	}
	peak := base
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(20 * time.Millisecond):
			peak = max(peak, threads(t))
		}
	}
	close(errs)
	took := time.Since(begin)
	for err := range errs {
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("probe of a SYN-dropping port: %v, want the deadline", err)
			break
		}
	}
	t.Logf("%d probes waited %v; threads: %d before, %d at most", probes, took, base, peak)
	if took < 1900*time.Millisecond || took > 5*time.Second {
		t.Errorf("probes ended after %v, want about their 2s timeout", took)
	}
	if peak-base > 10 {
		t.Errorf("threads grew from %d to %d during %d probes: a probe holds a thread", base, peak, probes)
	}
}
