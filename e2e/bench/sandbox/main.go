// Command sandbox is the sandbox benchmark of `make bench` (sandboxbench):
// it measures nodeagent's sandboxes against a bare QEMU in the same run:
// the time from the create call to the guest agent's first answer (ours)
// against a bare qemu-system-x86_64 booting the same kernel and initramfs
// with the same machine to its first guest output, and the idle memory
// (PSS and unique) per VM. 10 sandboxes one after another, then 5 at once.
// It prints a markdown table.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/bench/latency"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

func main() {
	bin := flag.String("bin", "bin", "directory with nodeagent and nodeagent-guest/")
	seq := flag.Int("seq", 10, "sandboxes one after another")
	par := flag.Int("par", 5, "sandboxes at once")
	mem := flag.Uint("memory", 128, "guest memory, MiB")
	idle := flag.Duration("idle", 3*time.Second, "how long a VM idles before its memory is read")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "sandboxbench: needs root")
		os.Exit(2)
	}
	if err := run(*bin, *seq, *par, uint32(*mem), *idle); err != nil {
		fmt.Fprintln(os.Stderr, "sandboxbench:", err)
		os.Exit(1)
	}
}

// sample is one VM: time to ready (or first output) and idle memory.
type sample struct {
	ready     time.Duration
	pss, uniq int64 // KiB
}

type series struct{ seq, par []sample }

func run(bin string, seq, par int, mem uint32, idle time.Duration) error {
	bin, _ = filepath.Abs(bin)
	kernel := filepath.Join(bin, "nodeagent-guest", "vmlinux")
	initrd := filepath.Join(bin, "nodeagent-guest", "initramfs.cpio")
	tmp, err := os.MkdirTemp("", "sandboxbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	accel := qemu.AccelTCG
	if err := qemu.ProbeKVM(context.Background(), "qemu-system-x86_64", kernel); err == nil {
		accel = qemu.AccelKVM
	} else {
		fmt.Fprintf(os.Stderr, "sandboxbench: KVM unusable (%v); measuring under TCG\n", err)
	}

	// The bare boots first, then ours, then the bare ones again, so that a
	// machine that warms up or slows down shows in both columns.
	var bare, ours series
	fmt.Fprintln(os.Stderr, "sandboxbench: bare qemu, sequential")
	if bare.seq, err = bareRuns(tmp, kernel, initrd, accel, mem, seq, 1, idle); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "sandboxbench: bare qemu, parallel")
	if bare.par, err = bareRuns(tmp, kernel, initrd, accel, mem, par, par, idle); err != nil {
		return err
	}
	agent, cl, err := startAgent(tmp, bin, kernel, initrd)
	if err != nil {
		return err
	}
	defer func() { _ = agent.Process.Kill(); _ = agent.Wait() }()
	fmt.Fprintln(os.Stderr, "sandboxbench: nodeagent, sequential")
	if ours.seq, err = agentRuns(cl, "seq", mem, seq, 1, idle); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "sandboxbench: nodeagent, parallel")
	if ours.par, err = agentRuns(cl, "par", mem, par, par, idle); err != nil {
		return err
	}
	printTable(accel, mem, seq, par, bare, ours)
	return nil
}

// startAgent runs `nodeagent serve` with no cgroups (the bare QEMU has
// none either) and no HTTP endpoints.
func startAgent(tmp, bin, kernel, initrd string) (*exec.Cmd, *agentclient.Client, error) {
	sock := filepath.Join(tmp, "agent.sock")
	log, err := os.Create(filepath.Join(tmp, "agent.log"))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(filepath.Join(bin, "nodeagent"), "serve", "--socket", sock, "--state-dir", filepath.Join(tmp, "state"),
		"--metrics-addr", "", "--probe-addr", "", "--cgroup-parent", "", "--guest-kernel", kernel, "--guest-initrd", initrd)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(sock); err == nil {
			cl, err := agentclient.Dial(sock)
			return cmd, cl, err
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	return nil, nil, fmt.Errorf("nodeagent did not start; see %s", log.Name())
}

// agentRuns creates n sandboxes, at most conc at a time, timing each
// create call until Ready (the guest agent's first answer), reads their
// idle memory and deletes them.
func agentRuns(cl *agentclient.Client, prefix string, mem uint32, n, conc int, idle time.Duration) ([]sample, error) {
	ctx := context.Background()
	out := make([]sample, n)
	pids := make([]int, n)
	id := func(i int) string { return fmt.Sprintf("bench-%s-%d", prefix, i) }
	// Deleted whatever happens: QEMU outlives the agent.
	defer func() {
		for i := 0; i < n; i++ {
			_, _ = cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{Id: id(i)})
		}
	}()
	err := inParallel(n, conc, func(i int) error {
		start := time.Now()
		s, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: id(i), Vcpus: 1, MemoryMib: mem}, Wait: true})
		if err != nil {
			return err
		}
		if s.State != apiv1.Sandbox_READY {
			return fmt.Errorf("sandbox %s: %s: %s", id(i), s.State, s.Reason)
		}
		out[i].ready = time.Since(start)
		pids[i] = int(s.Pid)
		return nil
	})
	if err != nil {
		return nil, err
	}
	time.Sleep(idle)
	for i, pid := range pids {
		out[i].pss, out[i].uniq = memory(pid)
	}
	return out, nil
}

// inParallel runs f(0), ..., f(n-1), at most conc at a time (in order
// when conc is 1), and returns the first error.
func inParallel(n, conc int, f func(i int) error) error {
	errs := make(chan error, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if err := f(i); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// bareRuns boots n bare QEMUs (conc at a time) with the sandbox's machine
// and times each from start to the guest's first console output.
func bareRuns(tmp, kernel, initrd, accel string, mem uint32, n, conc int, idle time.Duration) ([]sample, error) {
	out := make([]sample, n)
	cmds := make([]*exec.Cmd, n)
	defer func() {
		for _, c := range cmds {
			if c != nil && c.Process != nil {
				_ = c.Process.Kill()
				_ = c.Wait()
			}
		}
	}()
	err := inParallel(n, conc, func(i int) error {
		dir, err := os.MkdirTemp(tmp, "bare-")
		if err != nil {
			return err
		}
		m := qemu.Machine{Name: fmt.Sprintf("bare-%d", i), Dir: dir, Accel: accel, VCPUs: 1, MemoryMiB: mem, Kernel: kernel, Initrd: initrd}
		args, err := m.Args()
		if err != nil {
			return err
		}
		for j := range args {
			if args[j] == "-serial" {
				args[j+1] = "stdio"
			}
		}
		cmd := exec.Command("qemu-system-x86_64", args...)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		cmds[i] = cmd // each run its own slot; read once all are done
		r := bufio.NewReader(stdout)
		if _, err := r.ReadByte(); err != nil {
			return fmt.Errorf("bare qemu %d: no guest output: %w", i, err)
		}
		out[i].ready = time.Since(start)
		go func() { _, _ = r.WriteTo(io.Discard) }()
		return nil
	})
	if err != nil {
		return nil, err
	}
	time.Sleep(idle)
	for i, c := range cmds {
		out[i].pss, out[i].uniq = memory(c.Process.Pid)
	}
	return out, nil
}

// memory returns a process's PSS and unique (private) memory in KiB.
func memory(pid int) (pss, uniq int64) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "Pss:":
			pss = v
		case "Private_Clean:", "Private_Dirty:":
			uniq += v
		}
	}
	return pss, uniq
}

func durations(s []sample) []time.Duration {
	var d []time.Duration
	for _, x := range s {
		d = append(d, x.ready)
	}
	return d
}

func meanMiB(s []sample, f func(sample) int64) float64 {
	var t int64
	for _, x := range s {
		t += f(x)
	}
	return float64(t) / float64(len(s)) / 1024
}

func printTable(accel string, mem uint32, seq, par int, bare, ours series) {
	fmt.Printf("\n### Sandboxes: nodeagent vs bare QEMU (%s, %d MiB guest, %s)\n\n", strings.ToUpper(accel), mem, time.Now().Format("2006-01-02"))
	fmt.Println("| measure | bare qemu | nodeagent | ratio |")
	fmt.Println("|---|---|---|---|")
	for _, c := range []struct {
		name    string
		b, o    []sample
		p       float64
		pctName string
	}{
		{fmt.Sprintf("%d in a row, to first answer", seq), bare.seq, ours.seq, 0.5, "p50"},
		{fmt.Sprintf("%d in a row, to first answer", seq), bare.seq, ours.seq, 1, "max"},
		{fmt.Sprintf("%d in parallel, to first answer", par), bare.par, ours.par, 0.5, "p50"},
		{fmt.Sprintf("%d in parallel, to first answer", par), bare.par, ours.par, 1, "max"},
	} {
		b, o := latency.Percentile(durations(c.b), c.p), latency.Percentile(durations(c.o), c.p)
		fmt.Printf("| %s %s | %s | %s | %.2f× |\n", c.name, c.pctName, latency.Ms(b), latency.Ms(o), float64(o)/float64(b))
	}
	for _, c := range []struct {
		name string
		b, o []sample
	}{{"in a row", bare.seq, ours.seq}, {"in parallel", bare.par, ours.par}} {
		pss := func(x sample) int64 { return x.pss }
		uniq := func(x sample) int64 { return x.uniq }
		fmt.Printf("| idle PSS per VM, %s | %.1f MiB | %.1f MiB | %.2f× |\n", c.name, meanMiB(c.b, pss), meanMiB(c.o, pss), meanMiB(c.o, pss)/meanMiB(c.b, pss))
		fmt.Printf("| idle unique memory per VM, %s | %.1f MiB | %.1f MiB | %.2f× |\n", c.name, meanMiB(c.b, uniq), meanMiB(c.o, uniq), meanMiB(c.o, uniq)/meanMiB(c.b, uniq))
	}
	fmt.Println("\nbare qemu: the sandbox's own machine and command line, timed from process start to the guest's first console byte;")
	fmt.Println("nodeagent: from the CreateSandbox call (wait) to Ready, i.e. the guest agent's first answer over virtio-serial.")
}
