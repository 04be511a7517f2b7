// Command sandbox is the sandbox benchmark of `make bench` (sandboxbench):
// it measures nodeagent's sandboxes against a bare QEMU in the same run:
// the time from the create call to the guest agent's first answer (ours)
// against a bare qemu-system-x86_64 booting the same kernel and initramfs
// with the same machine to its first guest output, and the idle memory
// (PSS and unique) per VM. 10 sandboxes one after another, then 5 at once.
// It prints a markdown table.
//
// Then, in the same run, it compares the agent's ways of starting a
// sandbox: a cold boot (the agent above, --fast-start off) against a VM
// taken from a warm pool (a second agent, --fast-start pool, its pool as
// big as the burst and full before each) and a restore from a VM template
// (a third agent, --fast-start template): create call to Ready, 10 in a
// row and 5 at once, and the idle memory per sandbox with 10 running (for
// the pool, its refilled idle VMs apart), against the targets (ready ≤ 150
// ms median for both; unique memory ≤ 32 MiB for the template); it prints
// where the time of a start goes, from the steps the agent logs for each
// sandbox (fast.go).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	fastSeq := flag.Int("fast-seq", 10, "template-started sandboxes one after another")
	fastPar := flag.Int("fast-par", 5, "template-started sandboxes at once")
	memCount := flag.Int("fast-mem-count", 10, "sandboxes running, in each start mode (cold, pool, template), when their idle memory is read")
	accel := flag.String("accel", "auto", "auto (KVM where it works, else TCG), kvm or tcg: for the bare QEMU and the agents")
	tmplTimeout := flag.Duration("template-timeout", 3*time.Minute, "how long the agent may take to build the VM template")
	poolSeq := flag.Int("pool-seq", 10, "sandboxes taken from the warm pool one after another")
	poolPar := flag.Int("pool-par", 5, "sandboxes taken from the warm pool at once")
	poolTimeout := flag.Duration("pool-timeout", 3*time.Minute, "how long the agent may take to fill (or refill) its warm pool")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "sandboxbench: needs root")
		os.Exit(2)
	}
	if *seq < 1 || *par < 1 || *fastSeq < 1 || *fastPar < 1 || *memCount < 1 || *poolSeq < 1 || *poolPar < 1 {
		fmt.Fprintln(os.Stderr, "sandboxbench: --seq, --par, --fast-seq, --fast-par, --fast-mem-count, --pool-seq and --pool-par must be at least 1")
		os.Exit(2)
	}
	if *accel != "auto" && *accel != qemu.AccelKVM && *accel != qemu.AccelTCG {
		fmt.Fprintf(os.Stderr, "sandboxbench: --accel %q: want auto, kvm or tcg\n", *accel)
		os.Exit(2)
	}
	// A signal cancels the run, whose deferred clean-up deletes the
	// sandboxes and stops the agents; later signals are ignored meanwhile.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c := config{bin: *bin, seq: *seq, par: *par, mem: uint32(*mem), idle: *idle, accel: *accel,
		fastSeq: *fastSeq, fastPar: *fastPar, memCount: *memCount, tmplTimeout: *tmplTimeout,
		poolSeq: *poolSeq, poolPar: *poolPar, poolTimeout: *poolTimeout}
	if n := c.poolSize(); n > maxPoolSize {
		fmt.Fprintf(os.Stderr, "sandboxbench: the warm pool would need %d VMs (the largest of --pool-seq, --pool-par and --fast-mem-count); the agent allows at most %d\n", n, maxPoolSize)
		os.Exit(2)
	}
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "sandboxbench:", err)
		os.Exit(1)
	}
}

type config struct {
	bin              string
	seq, par         int
	mem              uint32
	idle             time.Duration
	accel            string
	fastSeq, fastPar int
	memCount         int
	tmplTimeout      time.Duration
	poolSeq, poolPar int
	poolTimeout      time.Duration
}

// sample is one VM: time to ready (or first output) and idle memory.
type sample struct {
	pid       int
	ready     time.Duration
	pss, uniq int64 // KiB
	// shmem is its Pss_Shmem, shared its Shared_Clean+Shared_Dirty (KiB):
	// for a template's clone, mostly the template's memory.
	shmem, shared int64
}

type series struct{ seq, par []sample }

func run(ctx context.Context, c config) error {
	bin, _ := filepath.Abs(c.bin)
	kernel := filepath.Join(bin, "nodeagent-guest", "vmlinux")
	initrd := filepath.Join(bin, "nodeagent-guest", "initramfs.cpio")
	tmp, err := os.MkdirTemp("", "sandboxbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	defer reap(tmp) // runs first: whatever QEMU of this run is left

	accel, whyNotKVM := c.accel, ""
	if accel == "auto" {
		accel = qemu.AccelTCG
		if err := qemu.ProbeKVM(ctx, "qemu-system-x86_64", kernel); err == nil {
			accel = qemu.AccelKVM
		} else {
			whyNotKVM = err.Error()
			fmt.Fprintf(os.Stderr, "sandboxbench: KVM unusable (%v); measuring under TCG\n", err)
		}
	}
	seq, par, mem, idle := c.seq, c.par, c.mem, c.idle

	// The bare boots first, then ours (cold boots, which are also the cold
	// column of the fast start table), then the fast starts.
	var bare, ours series
	fmt.Fprintln(os.Stderr, "sandboxbench: bare qemu, sequential")
	if bare.seq, err = bareRuns(ctx, tmp, kernel, initrd, accel, mem, seq, 1, idle); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "sandboxbench: bare qemu, parallel")
	if bare.par, err = bareRuns(ctx, tmp, kernel, initrd, accel, mem, par, par, idle); err != nil {
		return err
	}

	cold, err := startAgent(ctx, tmp, "cold", bin, kernel, initrd, accel, "--fast-start", "off")
	if err != nil {
		return err
	}
	defer cold.stop()
	var coldMem []sample
	fmt.Fprintln(os.Stderr, "sandboxbench: nodeagent, sequential")
	// Topped up to --fast-mem-count sandboxes before the memory is read.
	ours.seq, coldMem, err = agentRuns(ctx, cold.cl, runOpts{prefix: "seq", mem: mem, n: seq, conc: 1,
		total: max(seq, c.memCount), idle: idle, start: "cold"})
	if err != nil {
		return cold.failed(err)
	}
	fmt.Fprintln(os.Stderr, "sandboxbench: nodeagent, parallel")
	if ours.par, _, err = agentRuns(ctx, cold.cl, runOpts{prefix: "par", mem: mem, n: par, conc: par, total: par, idle: idle, start: "cold"}); err != nil {
		return cold.failed(err)
	}
	cold.stop()

	fast, err := fastRuns(ctx, c, tmp, bin, kernel, initrd, accel)
	if err != nil {
		return err
	}
	pool, err := poolRuns(ctx, c, tmp, bin, kernel, initrd, accel)
	if err != nil {
		return err
	}
	printTable(accel, mem, seq, par, bare, ours)
	coldSteps, err := readySteps(cold.log, "bench-seq-", "cold")
	if err != nil {
		return err
	}
	printFastTable(c, accel, whyNotKVM, ours, coldMem, coldSteps, pool, fast)
	return nil
}

// agent is a running `nodeagent serve` of this benchmark.
type agent struct {
	name     string
	stateDir string
	cmd      *exec.Cmd
	cl       *agentclient.Client
	log      string        // its stderr and stdout
	done     chan struct{} // closed once it exited
	once     sync.Once
}

// startAgent runs `nodeagent serve` with no cgroups (the bare QEMU has
// none either), no HTTP endpoints and its own socket, state and log file
// (named for name) in tmp; args are more flags.
func startAgent(ctx context.Context, tmp, name, bin, kernel, initrd, accel string, args ...string) (*agent, error) {
	sock := filepath.Join(tmp, name+".sock")
	stateDir := filepath.Join(tmp, "state-"+name)
	log, err := os.Create(filepath.Join(tmp, "agent-"+name+".log"))
	if err != nil {
		return nil, err
	}
	defer log.Close() // the agent has its own descriptor
	args = append([]string{"serve", "--socket", sock, "--state-dir", stateDir,
		"--metrics-addr", "", "--probe-addr", "", "--cgroup-parent", "", "--guest-kernel", kernel, "--guest-initrd", initrd,
		"--accel", accel}, args...)
	cmd := exec.Command(filepath.Join(bin, "nodeagent"), args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a := &agent{name: name, stateDir: stateDir, cmd: cmd, log: log.Name(), done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(a.done) }()
	for i := 0; i < 500; i++ {
		if _, err := os.Stat(sock); err == nil {
			if a.cl, err = agentclient.Dial(sock); err != nil {
				a.stop()
				return nil, err
			}
			return a, nil
		}
		select {
		case <-a.done:
			return nil, a.failed(fmt.Errorf("nodeagent (%s) exited at start: %s", name, cmd.ProcessState))
		case <-ctx.Done():
			a.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	a.stop()
	return nil, a.failed(fmt.Errorf("nodeagent (%s) did not start", name))
}

// stop ends the agent (SIGTERM, SIGKILL after 15 s) and waits for it;
// its sandboxes must be deleted first, as QEMU outlives the agent.
func (a *agent) stop() {
	a.once.Do(func() {
		if a.cl != nil {
			_ = a.cl.Close()
		}
		_ = a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(15 * time.Second):
			_ = a.cmd.Process.Kill()
			<-a.done
		}
	})
}

// failed adds the end of the agent's log to err.
func (a *agent) failed(err error) error {
	b, _ := os.ReadFile(a.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return fmt.Errorf("%w\n--- the end of the %s agent's log ---\n%s", err, a.name, strings.Join(lines, "\n"))
}

// runOpts is one batch of sandboxes through the agent.
type runOpts struct {
	prefix  string // of the sandbox IDs, bench-PREFIX-I
	mem     uint32
	n, conc int // timed sandboxes, and how many at a time
	// total is how many run when their idle memory is read: the n timed
	// ones and total-n more, created after them one at a time, untimed
	// (IDs bench-PREFIXx-I). 0 reads no memory (and does not idle).
	total int
	idle  time.Duration
	start string // what each sandbox's Start must be: "cold", "pool" or "template"
	// settle, if set, runs once all total sandboxes were created, before
	// they idle.
	settle func() error
	// atIdle, if set, runs once the sandboxes idled and their memory was
	// read, all still running; all are the total sandboxes.
	atIdle func(all []sample) error
}

// agentRuns creates o.n sandboxes, at most o.conc at a time, timing each
// create call until Ready (the guest agent's first answer), checks that
// each started as o.start says, tops them up to o.total, reads their idle
// memory and deletes them. It returns the timed sandboxes and the memory
// of all o.total.
func agentRuns(ctx context.Context, cl *agentclient.Client, o runOpts) (timed, all []sample, _ error) {
	total := o.total
	if total > 0 && total < o.n {
		total = o.n
	}
	samples := make([]sample, max(total, o.n))
	id := func(i int) string {
		if i >= o.n {
			return fmt.Sprintf("bench-%sx-%d", o.prefix, i-o.n)
		}
		return fmt.Sprintf("bench-%s-%d", o.prefix, i)
	}
	// Deleted whatever happens (also when ctx is cancelled): QEMU
	// outlives the agent.
	defer func() {
		for i := range samples {
			dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_, derr := cl.DeleteSandbox(dctx, &apiv1.DeleteSandboxRequest{Id: id(i)})
			cancel()
			if derr != nil && status.Code(derr) != codes.NotFound {
				fmt.Fprintf(os.Stderr, "sandboxbench: delete %s: %v\n", id(i), derr)
			}
		}
	}()
	create := func(i int) error {
		start := time.Now()
		s, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: id(i), Vcpus: 1, MemoryMib: o.mem}, Wait: true})
		if err != nil {
			return fmt.Errorf("sandbox %s: %w", id(i), err)
		}
		if s.State != apiv1.Sandbox_READY {
			return fmt.Errorf("sandbox %s: %s: %s", id(i), s.State, s.Reason)
		}
		samples[i].ready = time.Since(start)
		samples[i].pid = int(s.Pid)
		if s.Start != o.start {
			return fmt.Errorf("sandbox %s started %q, not %q: the bench would measure the wrong thing (why: the agent's log)", id(i), s.Start, o.start)
		}
		return nil
	}
	if err := inParallel(o.n, o.conc, create); err != nil {
		return nil, nil, err
	}
	if total == 0 {
		return samples, nil, nil
	}
	for i := o.n; i < total; i++ {
		if err := create(i); err != nil {
			return nil, nil, err
		}
	}
	if o.settle != nil {
		if err := o.settle(); err != nil {
			return nil, nil, err
		}
	}
	if err := sleep(ctx, o.idle); err != nil {
		return nil, nil, err
	}
	for i := range samples {
		samples[i].pss, samples[i].uniq, samples[i].shmem, samples[i].shared = memory(samples[i].pid)
	}
	if o.atIdle != nil {
		if err := o.atIdle(samples); err != nil {
			return nil, nil, err
		}
	}
	return samples[:o.n], samples, nil
}

// sleep waits d, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// inParallel runs f(0), ..., f(n-1), at most conc at a time (in order
// when conc is 1), and returns the first error; none starts after one
// failed.
func inParallel(n, conc int, f func(i int) error) error {
	errs := make(chan error, n)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		if len(errs) > 0 {
			<-sem
			break
		}
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
func bareRuns(ctx context.Context, tmp, kernel, initrd, accel string, mem uint32, n, conc int, idle time.Duration) ([]sample, error) {
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
	if err := sleep(ctx, idle); err != nil {
		return nil, err
	}
	for i, c := range cmds {
		out[i].pss, out[i].uniq, out[i].shmem, out[i].shared = memory(c.Process.Pid)
	}
	return out, nil
}

// memory returns a process's PSS, unique (private) memory, Pss_Shmem and
// shared memory in KiB.
func memory(pid int) (pss, uniq, shmem, shared int64) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, 0, 0, 0
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
		case "Pss_Shmem:":
			shmem = v
		case "Shared_Clean:", "Shared_Dirty:":
			shared += v
		}
	}
	return pss, uniq, shmem, shared
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
