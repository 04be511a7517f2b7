package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

// connectivity pings within and across the VPCs and to the node (section
// 7).
func (d *demo) connectivity() error {
	d.section("7. Who can talk to whom (ping -c 2 -i 0.2 -W 1)")
	blueWeb, blueDB, greenWeb, greenCache := d.pods[0], d.pods[1], d.pods[2], d.pods[3]
	node := fabric.NodeAddr.Addr().String()
	for _, c := range []struct {
		from  *pod
		to    string
		what  string
		reach bool
	}{
		{blueWeb, blueDB.ip, "same VPC: " + blueDB.ref() + " in vpc-blue", true},
		{greenWeb, greenCache.ip, "same VPC: " + greenCache.ref() + " in vpc-green", true},
		{blueWeb, greenCache.ip, "other VPC: exists only in vpc-green", false},
		{greenWeb, blueDB.ip, "other VPC: exists only in vpc-blue", false},
		{blueWeb, node, "the node's management address", false},
		{greenWeb, node, "the node's management address", false},
	} {
		if err := d.ping(c.from, c.to, c.what, c.reach); err != nil {
			return err
		}
	}
	return nil
}

// probes probes a pod through the agent, on a port with a listener and on
// one without (section 8).
func (d *demo) probes() error {
	blueDB := d.pods[1]
	d.section("8. Probes go through the agent (the node itself has no route to pods)")
	accepted, closeListener, err := listenIn(blueDB, probePort)
	if err != nil {
		return err
	}
	defer closeListener()
	fmt.Fprintf(d.out, "  TCP listener on :%d inside %s (netns %s)\n", probePort, blueDB.ref(), fabric.Name(blueDB.NS))
	out, err := d.cli(true, "probe", blueDB.ref(), "--port", fmt.Sprint(probePort))
	if e := d.interrupted(); e != nil {
		return e
	}
	ok := err == nil && strings.Contains(out, "succeeded")
	from := "the listener saw no connection"
	select {
	case a := <-accepted:
		from = "the listener saw a connection from " + a
	case <-time.After(time.Second):
	}
	d.verdict(ok, fmt.Sprintf("probe of %s port %d through the agent: %s; %s", blueDB.ref(), probePort, okWord(ok, "succeeded", "FAILED"), from))
	_, err = d.cli(true, "probe", blueDB.ref(), "--port", fmt.Sprint(probePort+1))
	if e := d.interrupted(); e != nil {
		return e
	}
	d.verdict(err != nil, fmt.Sprintf("probe of %s port %d (nothing listens there): %s", blueDB.ref(), probePort+1, okWord(err != nil, "fails", "SUCCEEDED")))
	closeListener()
	return nil
}

// ping pings to from inside p and judges the outcome.
func (d *demo) ping(p *pod, to, what string, wantReach bool) error {
	return d.pingIn(fabric.Name(p.NS), p.ref(), p.ip, to, what, wantReach)
}

// pingIn pings to from the namespace netns, that of who (whose address is
// from), and judges the outcome.
func (d *demo) pingIn(netns, who, from, to, what string, wantReach bool) error {
	if err := d.interrupted(); err != nil {
		return err
	}
	args := []string{"netns", "exec", netns, "ping", "-c", "2", "-i", "0.2", "-W", "1", to}
	fmt.Fprintf(d.out, "  %s\n", d.dim("$ ip "+strings.Join(args, " ")+"   # from "+who))
	out, err := exec.CommandContext(d.ctx, "ip", args...).CombinedOutput()
	if e := d.interrupted(); e != nil {
		return e
	}
	reached := err == nil
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && (ee.ExitCode() == 1 || ee.ExitCode() == 2):
		// 1: no reply; 2: an error such as "Network is unreachable".
	default:
		d.indent(string(out))
		return fmt.Errorf("ping from %s: %w", who, err)
	}
	d.indent(pingSummary(string(out)))
	label := fmt.Sprintf("%s (%s) -> %s (%s): ", who, from, to, what)
	if reached {
		label += okWord(wantReach, "replies", "REPLIES")
	} else {
		label += okWord(!wantReach, "no reply", "NO REPLY")
	}
	d.verdict(reached == wantReach, label)
	return nil
}

// pingSummary keeps ping's statistics line and any error it printed.
func pingSummary(out string) string {
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "", strings.HasPrefix(l, "PING "), strings.HasPrefix(l, "---"), strings.HasPrefix(l, "rtt "),
			strings.HasPrefix(l, "round-trip "), // busybox's, in the sandbox
			strings.Contains(l, " bytes from "):
		default:
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// listenIn starts a TCP listener inside p's namespace; accepted reports the
// peer address of each connection.
func listenIn(p *pod, port int) (accepted <-chan string, closeFn func(), err error) {
	var l net.Listener
	err = p.NS.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("listen in %s: %w", p.ref(), err)
	}
	ch := make(chan string, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case ch <- c.RemoteAddr().String():
			default:
			}
			_, _ = io.WriteString(c, p.ref()+"\n")
			c.Close()
		}
	}()
	return ch, func() { l.Close() }, nil
}
