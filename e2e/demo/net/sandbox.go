package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

// sandboxInfo is what the demo reads of `nodeagent sandbox get -o json`.
type sandboxInfo struct {
	State     string   `json:"state"`
	Reason    string   `json:"reason"`
	Pid       int      `json:"pid"`
	Accel     string   `json:"accel"`
	Addresses []string `json:"addresses"`
}

// sandbox runs a pod sandbox, a QEMU VM, in p's namespace, where cni-eni
// put p's ENI as eth0: the guest takes over the ENI's MAC and address,
// reaches peer (a pod of the same VPC) and is reached by it, but not by
// the node; deleting the sandbox gives eth0 its address back. The VM is
// deleted whatever happens, also on an error or Ctrl-C. Without the guest
// files of make build (or without QEMU) the section is skipped.
func (d *demo) sandbox(p, peer *pod) (err error) {
	guest := filepath.Join(d.bin, "nodeagent-guest")
	for _, f := range []string{"vmlinux", "initramfs.cpio"} {
		if _, err := os.Stat(filepath.Join(guest, f)); err != nil {
			fmt.Fprintf(d.out, "  %s\n", d.yellow(fmt.Sprintf("skipped: no guest kernel and initramfs in %s (make build puts them there)", guest)))
			return nil
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		fmt.Fprintf(d.out, "  %s\n", d.yellow("skipped: qemu-system-x86_64 not found in PATH (make prereqs installs it)"))
		return nil
	}
	if err := d.interrupted(); err != nil {
		return err
	}
	id := p.namespace + "-" + p.name
	deleted := false
	defer func() {
		if deleted {
			return
		}
		if e := d.removeSandbox(id); e != nil {
			fmt.Fprintln(os.Stderr, "demo:", e)
			if err == nil {
				err = e
			}
		}
	}()

	fmt.Fprintf(d.out, "  %s\n", d.dim(fmt.Sprintf("# in %s's namespace, where cni-eni put its ENI %s (%s) as eth0", p.ref(), p.eni.MAC, p.ip)))
	start := time.Now()
	if _, err := d.cli(true, "sandbox", "create", id, "--netns", p.NS.Path(), "--wait"); err != nil {
		return err
	}
	took := time.Since(start)
	out, err := d.agent.CLI("sandbox", "get", id, "-o", "json")
	if err != nil {
		return err
	}
	var sb sandboxInfo
	if err := json.Unmarshal([]byte(out), &sb); err != nil {
		return fmt.Errorf("sandbox get %s -o json: %w", id, err)
	}
	if sb.State != "READY" {
		return fmt.Errorf("sandbox %s is %s, not Ready: %s", id, sb.State, sb.Reason)
	}
	fmt.Fprintf(d.out, "  created and Ready in %v (QEMU pid %d, accel %s); the VM took over %s\n",
		took.Round(time.Millisecond), sb.Pid, sb.Accel, orNone(sb.Addresses))
	if _, err := d.cli(true, "sandbox", "list"); err != nil {
		return err
	}
	if _, err := d.podAddrs(p, "host side: eth0 keeps no address, tap0 carries the VM"); err != nil {
		return err
	}

	out, code, err := d.sandboxExec(id, "ip", "addr", "show", "eth0")
	d.indent(out)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit status %d", code)
	}
	if err != nil {
		return fmt.Errorf("sandbox exec %s ip addr show eth0: %w", id, err)
	}
	ok := strings.Contains(out, " "+p.ip+"/24 ") && strings.Contains(out, p.eni.MAC)
	d.verdict(ok, fmt.Sprintf("the guest's eth0 has the ENI's MAC %s and %s's address %s/24: %s", p.eni.MAC, p.ref(), p.ip, okWord(ok, "yes", "NO")))

	out, code, err = d.sandboxExec(id, "ping", "-c", "2", "-W", "2", peer.ip)
	if err != nil {
		d.indent(out)
		return fmt.Errorf("sandbox exec %s ping: %w", id, err)
	}
	d.indent(pingSummary(out))
	label := fmt.Sprintf("the VM (%s) -> %s (same VPC: %s in %s): ", p.ip, peer.ip, peer.ref(), peer.vpc.Name)
	if code == 0 {
		label += okWord(true, "replies", "")
	} else {
		label += okWord(false, "", fmt.Sprintf("NO REPLY (exit status %d)", code))
	}
	d.verdict(code == 0, label)
	if err := d.ping(peer, p.ip, "the VM, in "+p.ref()+"'s namespace", true); err != nil {
		return err
	}
	if err := d.pingIn(fabric.Name(d.f.Node), "the node", fabric.NodeAddr.Addr().String(), p.ip, "the VM", false); err != nil {
		return err
	}

	if _, err := d.cli(true, "sandbox", "delete", id); err != nil {
		return err
	}
	deleted = true
	left := fabric.QEMUPids(id)
	links, err := d.podAddrs(p, "after the delete")
	if err != nil {
		return err
	}
	st, found, err := fabric.FindLink(p.NS, p.eni.MAC)
	if err != nil {
		return err
	}
	var v4 []string // the kernel's IPv6 link-local address is not cni-eni's
	for _, a := range st.Addrs {
		if !strings.Contains(a, ":") {
			v4 = append(v4, a)
		}
	}
	back := found && st.Name == "eth0" && st.Up && len(v4) == 1 && v4[0] == p.ip+"/24"
	tap := strings.Contains(links, "tap0")
	msg := fmt.Sprintf("after the delete no QEMU with sandbox-%s on its command line", id)
	if len(left) > 0 {
		msg = fmt.Sprintf("after the delete QEMU STILL RUNS (pid %v)", left)
	}
	if back {
		msg += fmt.Sprintf(", %s's eth0 has %s/24 back", p.ref(), p.ip)
	} else {
		msg += fmt.Sprintf(", %s's eth0 NOT as cni-eni left it (%s %s, IPv4 addresses %s)", p.ref(), st.Name, upDown(st.Up), orNone(v4))
	}
	if tap {
		msg += ", tap0 LEFT BEHIND"
	} else {
		msg += ", no tap0"
	}
	d.verdict(len(left) == 0 && back && !tap, msg)
	return nil
}

// podAddrs shows `ip -br addr` in p's namespace with a comment, and
// returns it.
func (d *demo) podAddrs(p *pod, comment string) (string, error) {
	if err := d.interrupted(); err != nil {
		return "", err
	}
	args := []string{"netns", "exec", fabric.Name(p.NS), "ip", "-br", "addr"}
	fmt.Fprintf(d.out, "  %s %s\n", d.dim("# "+p.ref()+", "+comment), d.dim("$ ip "+strings.Join(args, " ")))
	out, err := exec.CommandContext(d.ctx, "ip", args...).CombinedOutput()
	d.indent(string(out))
	if e := d.interrupted(); e != nil {
		return "", e
	}
	if err != nil {
		return "", fmt.Errorf("ip -br addr in %s: %w", p.ref(), err)
	}
	return string(out), nil
}

// sandboxExec runs argv in sandbox id through `nodeagent sandbox exec`,
// showing the command, and returns what it printed and its exit status.
func (d *demo) sandboxExec(id string, argv ...string) (string, int, error) {
	if err := d.interrupted(); err != nil {
		return "", 0, err
	}
	fmt.Fprintf(d.out, "  %s\n", d.dim("$ nodeagent sandbox exec "+id+" -- "+strings.Join(argv, " ")))
	args := append([]string{"sandbox", "exec", id, "--socket", d.agent.Socket, "--"}, argv...)
	b, err := exec.CommandContext(d.ctx, d.agent.Bin, args...).CombinedOutput()
	if e := d.interrupted(); e != nil {
		return string(b), 0, e
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(b), ee.ExitCode(), nil
	}
	if err != nil {
		return string(b), 0, err
	}
	return string(b), 0, nil
}

// removeSandbox deletes sandbox id through the agent, on a context of its
// own (the demo's may be cancelled). If the agent does not do it (a Ctrl-C
// reaches the agent too, and QEMU outlives it), the agent is killed, so
// that it starts no other QEMU, and the sandbox's QEMU with it.
func (d *demo) removeSandbox(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.agent.Bin, "sandbox", "delete", id, "--socket", d.agent.Socket).CombinedOutput()
	if err == nil && len(fabric.QEMUPids(id)) == 0 {
		return nil
	}
	switch {
	case err != nil && d.ctx.Err() != nil:
		fmt.Fprintf(os.Stderr, "demo: the agent is gone (a Ctrl-C stops it too); killing the QEMU of sandbox %s\n", id)
	case err != nil:
		fmt.Fprintf(os.Stderr, "demo: nodeagent sandbox delete %s: %v: %s; killing its QEMU\n", id, err, strings.TrimSpace(string(out)))
	}
	d.agent.Kill()
	for _, pid := range fabric.QEMUPids(id) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && len(fabric.QEMUPids(id)) > 0; {
		time.Sleep(50 * time.Millisecond)
	}
	if left := fabric.QEMUPids(id); len(left) > 0 {
		return fmt.Errorf("QEMU of sandbox %s still runs: pid %v", id, left)
	}
	return nil
}
