package cni_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

// dropSYNs makes addr:port in n a port that never answers: a listener
// with an accept queue of one, filled and never drained, so the kernel
// drops every later SYN (a pod can do this to its own probes).
func dropSYNs(t *testing.T, n ns.NetNS, addr string, port int) {
	t.Helper()
	ip := net.ParseIP(addr).To4()
	var fd int
	err := n.Do(func(ns.NetNS) error {
		var err error
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port, Addr: [4]byte(ip)}); err != nil {
			return err
		}
		if err := unix.Listen(fd, 0); err != nil {
			return err
		}
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", addr, port), 500*time.Millisecond); err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
}

// nodeClient is an HTTP client whose connections start in the node's
// namespace (where the agent's endpoints listen on loopback).
func nodeClient(node ns.NetNS) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := node.Do(func(ns.NetNS) error {
				var d net.Dialer
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
}

// 200 probes at once, with a huge timeout, of ports that drop SYNs: the
// agent refuses what exceeds its bounds at once (429), cuts the timeout of
// the rest to 10 s (503 then), keeps its thread count bounded (no thread
// waits on a probe) and serves a CNI ADD in the middle as usual.
func TestProbeLoadKeepsTheAgentServing(t *testing.T) {
	const (
		pods     = 10
		requests = 200
		// The agent's limits (nodeagent/probe).
		maxInFlight = 64
		maxTimeout  = 10 * time.Second
	)
	e := newEnv(t)
	e.LogLines = 40
	v := e.VPC("vpc-p", "10.30.0.1/24")
	var targets []*fabric.Pod
	for i := 0; i < pods; i++ {
		addr := fmt.Sprintf("10.30.0.%d", 10+i)
		n := e.ENI(v, addr+"/24")
		p := e.Pod("slow", fmt.Sprintf("p%d", i))
		e.CLI("eni", "assign", "slow/"+p.Name, "--mac", n.MAC)
		e.add(e.rt, p)
		dropSYNs(t, p.NS, addr, 81)
		targets = append(targets, p)
	}
	late := e.Pod("slow", "late")
	lateENI := e.ENI(v, "10.30.0.99/24")
	e.CLI("eni", "assign", "slow/late", "--mac", lateENI.MAC)

	base, err := e.Agent.Threads()
	if err != nil {
		t.Fatal(err)
	}
	client := nodeClient(e.Fabric.Node)
	type answer struct {
		code int
		took time.Duration
		err  error
	}
	answers := make([]answer, requests)
	var wg sync.WaitGroup
	begin := time.Now()
	for i := 0; i < requests; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			url := fmt.Sprintf("http://%s/probe/slow/%s/tcp/81?timeout=87600h", e.Agent.ProbeAddr, targets[i%pods].Name)
			start := time.Now()
			resp, err := client.Get(url)
			if err != nil {
				answers[i] = answer{err: err, took: time.Since(start)}
				return
			}
			resp.Body.Close()
			answers[i] = answer{code: resp.StatusCode, took: time.Since(start)}
		}(i)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	// In the middle of it, threads stay bounded and a pod starts.
	time.Sleep(time.Second)
	peak := base
	sample := func() {
		if n, err := e.Agent.Threads(); err == nil {
			peak = max(peak, n)
		}
	}
	sample()
	addStart := time.Now()
	if _, err := e.rt.Add(e.ctx, late); err != nil {
		t.Errorf("ADD during the probe load: %v", err)
	}
	addTook := time.Since(addStart)
	if err := e.rt.Check(e.ctx, late); err != nil {
		t.Errorf("CHECK during the probe load: %v", err)
	}
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(100 * time.Millisecond):
			sample()
		}
	}
	total := time.Since(begin)

	codes := map[int]int{}
	var slowest429, fastest503 time.Duration
	fastest503 = time.Hour
	for i, a := range answers {
		if a.err != nil {
			if codes[0] == 0 {
				t.Errorf("probe %d: %v after %v", i, a.err, a.took)
			}
		}
		codes[a.code]++
		switch a.code {
		case http.StatusTooManyRequests:
			slowest429 = max(slowest429, a.took)
		case http.StatusServiceUnavailable:
			fastest503 = min(fastest503, a.took)
		}
	}
	var summary []string
	for c, n := range codes {
		summary = append(summary, fmt.Sprintf("%d×%d", n, c)) // 0: no answer
	}
	sort.Strings(summary)
	t.Logf("%d probes in %v: %v; threads %d before, %d at most; ADD in the middle took %v",
		requests, total.Round(time.Millisecond), summary, base, peak, addTook.Round(time.Millisecond))
	if codes[http.StatusTooManyRequests]+codes[http.StatusServiceUnavailable] != requests {
		t.Errorf("answers %v: want only 429 (refused) and 503 (unreachable)", codes)
	}
	if n := codes[http.StatusServiceUnavailable]; n > maxInFlight || n == 0 {
		t.Errorf("%d probes ran, want at most %d and some", n, maxInFlight)
	}
	if slowest429 > 2*time.Second {
		t.Errorf("a refusal took %v: want it at once", slowest429)
	}
	if fastest503 < maxTimeout-500*time.Millisecond || total > maxTimeout+10*time.Second {
		t.Errorf("probes ran %v to %v: want their timeout cut to %v", fastest503, total, maxTimeout)
	}
	if peak >= 60 {
		t.Errorf("agent threads reached %d under probe load (from %d): want < 60", peak, base)
	}
	if addTook > 5*time.Second {
		t.Errorf("ADD during the probe load took %v", addTook)
	}
	// The agent is still there, and probes work again.
	serveIdentity(t, targets[0].NS, 7000, "alive")
	if code, _, err := httpGet(e.Fabric.Node, "http://"+e.Agent.ProbeAddr+"/probe/slow/p0/tcp/7000"); err != nil || code != 200 {
		t.Errorf("probe after the load: %d, %v", code, err)
	}
}
