package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

// removeCgroupParent removes the agent's --cgroup-parent, and any sandbox
// cgroup left under it, from every hierarchy (v1 controllers and v2). The
// agent must have stopped and no QEMU run.
func (d *demo) removeCgroupParent() error {
	if d.cgroupParent == "" {
		return nil
	}
	_, err := fabric.RemoveCgroup(d.cgroupParent)
	return err
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startAgent runs fabric.StartAgent in the node namespace. That polls the
// socket for up to 15s without noticing a daemon that died meanwhile (as it
// does on a Ctrl-C, which reaches the whole process group): on interruption
// a listener of our own answers the poll so it returns at once, and the
// daemon is killed.
func (d *demo) startAgent(dir string) (*fabric.Agent, error) {
	type started struct {
		a   *fabric.Agent
		err error
	}
	ch := make(chan started, 1)
	go func() {
		a, err := fabric.StartAgent(filepath.Join(d.bin, "nodeagent"), d.f.Node, dir, "--cgroup-parent", d.cgroupParent)
		ch <- started{a, err}
	}()
	select {
	case r := <-ch:
		return r.a, r.err
	case <-d.ctx.Done():
	}
	// The daemon may still remove the socket path as it starts or stops, so
	// put a listener back whenever the path is gone.
	sock := filepath.Join(dir, "agent.sock")
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for {
		if _, err := os.Stat(sock); err != nil {
			if l, err := net.Listen("unix", sock); err == nil {
				ls = append(ls, l)
			}
		}
		select {
		case r := <-ch:
			if r.a != nil {
				r.a.Kill()
			}
			return nil, d.interrupted()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// cli runs a nodeagent client verb against the demo's agent, showing the
// command and, if show, what it printed (stdout and stderr, as a terminal
// would).
func (d *demo) cli(show bool, args ...string) (string, error) {
	if err := d.interrupted(); err != nil {
		return "", err
	}
	fmt.Fprintf(d.out, "  %s\n", d.dim("$ nodeagent "+strings.Join(args, " ")))
	cmd := exec.CommandContext(d.ctx, d.agent.Bin, append(args, "--socket", d.agent.Socket)...)
	b, err := cmd.CombinedOutput()
	out := string(b)
	if e := d.interrupted(); e != nil {
		return out, e
	}
	if show || err != nil {
		d.indent(out)
	}
	if err != nil {
		return out, fmt.Errorf("nodeagent %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// freeENIs counts free ENIs with `nodeagent eni list -o json`.
func (d *demo) freeENIs() (free, total int, err error) {
	out, err := d.agent.CLI("eni", "list", "-o", "json")
	if err != nil {
		return 0, 0, err
	}
	var l struct {
		ENIs []struct {
			State string `json:"state"`
		} `json:"enis"`
	}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		return 0, 0, fmt.Errorf("eni list -o json: %w", err)
	}
	for _, e := range l.ENIs {
		if e.State == "ENI_STATE_FREE" {
			free++
		}
	}
	return free, len(l.ENIs), nil
}

func (d *demo) agentLogTail(w io.Writer, n int) {
	b, err := os.ReadFile(filepath.Join(d.agent.Dir, "agent.log"))
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	fmt.Fprintf(w, "demo: last lines of the nodeagent log:\n%s\n", strings.Join(lines, "\n"))
}
