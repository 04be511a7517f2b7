package main

// The fast start half of the benchmark: an agent with --fast-start
// template and one with --fast-start pool, their sandboxes timed and
// measured like the cold ones, the template's own memory, the pool's idle
// VMs, the agent's per-step timings and the cold-vs-pool-vs-template
// table.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"

	"github.com/nodeinfra/nodeinfra/e2e/bench/latency"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

// The targets for fast starts.
const (
	targetReady = 150 * time.Millisecond // median, create call to Ready, in a row (pool and template)
	targetUniq  = 32.0                   // MiB of unique memory per idle sandbox (template only)
)

// maxPoolSize is the largest --fast-start-pool-size the agent takes.
const maxPoolSize = 64

// fastResult is what the template agent's run measured.
type fastResult struct {
	seq, par []sample
	mem      []sample          // the --fast-mem-count sandboxes, idle
	tmpl     *apiv1.VMTemplate // as Status showed it once ready
	ram      memfdInfo         // the template's memory, with mem idle
	steps    []readyLine       // the timed sandboxes in a row
}

// fastRuns starts an agent with --fast-start template for the bench's
// size, waits for its template and times and measures template starts;
// any sandbox that does not start from the template fails the run.
func fastRuns(ctx context.Context, c config, tmp, bin, kernel, initrd, accel string) (*fastResult, error) {
	class := fmt.Sprintf("1x%d", c.mem)
	a, err := startAgent(ctx, tmp, "template", bin, kernel, initrd, accel, "--fast-start", "template", "--fast-start-classes", class)
	if err != nil {
		return nil, err
	}
	defer a.stop()
	fmt.Fprintf(os.Stderr, "sandboxbench: nodeagent --fast-start template, waiting for template %s\n", class)
	var r fastResult
	if r.tmpl, err = waitTemplate(ctx, a.cl, class, c.tmplTimeout); err != nil {
		return nil, a.failed(err)
	}
	fmt.Fprintf(os.Stderr, "sandboxbench: template %s ready (built in %.2f s); nodeagent fast start, sequential\n", class, r.tmpl.BuildSeconds)
	pid := a.cmd.Process.Pid
	r.seq, r.mem, err = agentRuns(ctx, a.cl, runOpts{prefix: "tseq", mem: c.mem, n: c.fastSeq, conc: 1,
		total: max(c.fastSeq, c.memCount), idle: c.idle, start: "template",
		atIdle: func([]sample) error {
			var err error
			r.ram, err = templateMemory(pid, class)
			return err
		}})
	if err != nil {
		return nil, a.failed(err)
	}
	fmt.Fprintln(os.Stderr, "sandboxbench: nodeagent fast start, parallel")
	if r.par, _, err = agentRuns(ctx, a.cl, runOpts{prefix: "tpar", mem: c.mem, n: c.fastPar, conc: c.fastPar, start: "template"}); err != nil {
		return nil, a.failed(err)
	}
	a.stop()
	if r.steps, err = readySteps(a.log, "bench-tseq-", "template"); err != nil {
		return nil, err
	}
	return &r, nil
}

// waitTemplate polls the agent's Status until class's template is ready;
// a failed build or the timeout is an error.
func waitTemplate(ctx context.Context, cl *agentclient.Client, class string, timeout time.Duration) (*apiv1.VMTemplate, error) {
	deadline := time.Now().Add(timeout)
	last := "not listed"
	for {
		resp, err := cl.Status(ctx, &apiv1.StatusRequest{})
		if err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil {
			if resp.FastStart != "template" {
				return nil, fmt.Errorf("the agent's fast start is %q, not template", resp.FastStart)
			}
			for _, t := range resp.Templates {
				if t.Class != class {
					continue
				}
				switch last = t.State; t.State {
				case "ready":
					return t, nil
				case "failed":
					return nil, fmt.Errorf("VM template %s failed to build: %s", class, t.Error)
				}
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				last += "; Status: " + err.Error()
			}
			return nil, fmt.Errorf("VM template %s not ready after %s (%s)", class, timeout, last)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// poolResult is what the pool agent's run measured.
type poolResult struct {
	class    string
	size     int
	seq, par []sample
	mem      []sample      // the --fast-mem-count taken sandboxes, idle
	idleVMs  []sample      // the pool's own idle VMs (refilled), meanwhile
	tbMiB    int           // a pool VM's TCG translation cache (tb-size), 0 under KVM
	fill     time.Duration // from the agent's start until all size VMs were ready
	refill   time.Duration // from the last take in a row until the pool was full again
	steps    []readyLine   // the timed sandboxes in a row
}

// poolSize is the warm pool's size: as big as the largest burst taken
// from it, so that every sandbox of the bench is a take.
func (c config) poolSize() int { return max(c.poolSeq, c.poolPar, c.memCount) }

// poolRuns starts an agent with --fast-start pool for the bench's size
// and a pool as big as the largest burst, waits until the pool is full,
// takes sandboxes one after another (topped up to --fast-mem-count), waits
// until it is full again to read the idle memory of the taken sandboxes
// and of the pool's own idle VMs, and takes sandboxes at once; any sandbox
// that is not a take from the pool fails the run. One agent serves both
// runs: filling the pool is most of this part's time.
func poolRuns(ctx context.Context, c config, tmp, bin, kernel, initrd, accel string) (*poolResult, error) {
	r := poolResult{class: fmt.Sprintf("1x%d", c.mem), size: c.poolSize()}
	a, err := startAgent(ctx, tmp, "pool", bin, kernel, initrd, accel, "--fast-start", "pool",
		"--fast-start-classes", r.class, "--fast-start-pool-size", strconv.Itoa(r.size))
	if err != nil {
		return nil, err
	}
	defer discardPool(a) // after the stop: whatever it left
	defer a.stop()
	fmt.Fprintf(os.Stderr, "sandboxbench: nodeagent --fast-start pool, waiting for %d idle VMs of %s\n", r.size, r.class)
	t0 := time.Now()
	if err := waitPool(ctx, a.cl, r.class, r.size, c.poolTimeout); err != nil {
		return nil, a.failed(err)
	}
	r.fill = time.Since(t0)
	fmt.Fprintf(os.Stderr, "sandboxbench: warm pool full (%.1f s); nodeagent pool takes, sequential\n", r.fill.Seconds())
	r.seq, r.mem, err = agentRuns(ctx, a.cl, runOpts{prefix: "pseq", mem: c.mem, n: c.poolSeq, conc: 1,
		total: max(c.poolSeq, c.memCount), idle: c.idle, start: "pool",
		settle: func() error {
			// The refills boot meanwhile: their memory is read idle.
			t0 := time.Now()
			if err := waitPool(ctx, a.cl, r.class, r.size, c.poolTimeout); err != nil {
				return err
			}
			r.refill = time.Since(t0)
			return nil
		},
		atIdle: func(all []sample) error {
			taken := map[int]bool{}
			for _, s := range all {
				taken[s.pid] = true
			}
			for _, q := range poolVMs(tmp, r.class) {
				r.tbMiB = q.tbMiB
				if !taken[q.pid] {
					s := sample{pid: q.pid}
					s.pss, s.uniq, s.shmem, s.shared = memory(q.pid)
					r.idleVMs = append(r.idleVMs, s)
				}
			}
			return nil
		}})
	if err != nil {
		return nil, a.failed(err)
	}
	fmt.Fprintln(os.Stderr, "sandboxbench: nodeagent pool takes, parallel (once the pool is full)")
	if err := waitPool(ctx, a.cl, r.class, r.size, c.poolTimeout); err != nil {
		return nil, a.failed(err)
	}
	if r.par, _, err = agentRuns(ctx, a.cl, runOpts{prefix: "ppar", mem: c.mem, n: c.poolPar, conc: c.poolPar, start: "pool"}); err != nil {
		return nil, a.failed(err)
	}
	// Stopped once full: the agent removes its idle pool VMs at shutdown,
	// not those still booting.
	if err := waitPool(ctx, a.cl, r.class, r.size, c.poolTimeout); err != nil {
		return nil, a.failed(err)
	}
	a.stop()
	if r.steps, err = readySteps(a.log, "bench-pseq-", "pool"); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "sandboxbench: warm pool part done in %.1f s\n", time.Since(t0).Seconds())
	return &r, nil
}

// waitPool polls the agent's Status until class's pool has size idle VMs
// ready; a pool VM that failed to boot or the timeout is an error.
func waitPool(ctx context.Context, cl *agentclient.Client, class string, size int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "not listed"
	for {
		resp, err := cl.Status(ctx, &apiv1.StatusRequest{})
		if err != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil {
			if resp.FastStart != "pool" {
				return fmt.Errorf("the agent's fast start is %q, not pool", resp.FastStart)
			}
			for _, p := range resp.Pool {
				if p.Class != class {
					continue
				}
				if p.Error != "" {
					return fmt.Errorf("warm pool %s: a VM failed to boot (%d ready, %d booting): %s", class, p.Ready, p.Booting, p.Error)
				}
				if int(p.Ready) >= size {
					return nil
				}
				last = fmt.Sprintf("%d of %d ready, %d booting", p.Ready, size, p.Booting)
			}
		}
		if time.Now().After(deadline) {
			if err != nil {
				last += "; Status: " + err.Error()
			}
			return fmt.Errorf("warm pool %s not full after %s (%s)", class, timeout, last)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// poolVMs returns the QEMUs of this run (tmp) that were booted for
// class's pool: named sandbox-_pool-CLASS-HEX, a name a taken one keeps.
func poolVMs(tmp, class string) []qemuProc {
	var out []qemuProc
	for _, q := range qemus(tmp) {
		if strings.HasPrefix(q.name, "sandbox-_pool-"+class+"-") {
			out = append(out, q)
		}
	}
	return out
}

// discardPool, once the pool agent a stopped, ends what it left: the
// agent removes its idle pool VMs at shutdown, but one still booting
// outlives it (for the next agent to remove), and so do sandboxes it lets
// go of (when a Ctrl-C reached it too, before the bench deleted them).
// Their QEMUs are killed (all of the agent's are orphans now) and their
// held taps deleted: a pool VM's tap, persistent, in this namespace, is a
// sandbox's still when it has no pod network. Normally nothing is left:
// the bench stops the agent with its pool full and no sandbox.
func discardPool(a *agent) {
	for _, q := range qemus(a.stateDir + "/") {
		fmt.Fprintf(os.Stderr, "sandboxbench: QEMU pid %d (%s) outlived the pool agent; killing it\n", q.pid, q.name)
		_ = syscall.Kill(q.pid, syscall.SIGKILL)
	}
	dir := filepath.Join(a.stateDir, "sandboxes")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "sandbox.json"))
		if err != nil {
			continue
		}
		var rec struct {
			PoolTap string `json:"poolTap"`
		}
		if json.Unmarshal(b, &rec) != nil || rec.PoolTap == "" {
			continue
		}
		if _, err := net.InterfaceByName(rec.PoolTap); err != nil {
			continue // gone with its VM
		}
		if err := podnet.DeleteHeldTap(rec.PoolTap); err != nil {
			fmt.Fprintf(os.Stderr, "sandboxbench: %s: delete its held tap %s: %v\n", e.Name(), rec.PoolTap, err)
		} else {
			fmt.Fprintf(os.Stderr, "sandboxbench: %s outlived the pool agent; deleted its held tap %s\n", e.Name(), rec.PoolTap)
		}
	}
}

// memfdInfo is a template's guest memory: the memfd the agent holds.
type memfdInfo struct {
	size, resident int64 // bytes
}

// templateMemory finds class's template memfd among the agent's open
// files and reads its size and how much of it is in memory.
func templateMemory(pid int, class string) (memfdInfo, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return memfdInfo{}, err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if l, _ := os.Readlink(p); !strings.HasPrefix(l, "/memfd:nodeinfra-template-"+class+" ") {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			return memfdInfo{}, err
		}
		st := fi.Sys().(*syscall.Stat_t)
		return memfdInfo{size: fi.Size(), resident: st.Blocks * 512}, nil
	}
	return memfdInfo{}, fmt.Errorf("the agent (pid %d) holds no memfd of template %s", pid, class)
}

// readyLine is the agent's "sandbox ready" log line of one sandbox.
type readyLine struct {
	id    string
	boot  float64 // seconds, in the agent
	start string
	steps []stepTime
}

type stepTime struct {
	name string
	ms   float64
}

var stepRE = regexp.MustCompile(`([^=\s][^=]*?)=([0-9.]+)ms`)

// readySteps reads the "sandbox ready" lines of the sandboxes whose ID
// starts with prefix and that started as start says from an agent's JSON
// log (a pool VM's own boot logs one with no start: not a sandbox's).
func readySteps(log, prefix, start string) ([]readyLine, error) {
	f, err := os.Open(log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []readyLine
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l struct {
			Msg         string  `json:"msg"`
			Sandbox     string  `json:"sandbox"`
			BootSeconds float64 `json:"bootSeconds"`
			Start       string  `json:"start"`
			Steps       string  `json:"steps"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Msg != "sandbox ready" || !strings.HasPrefix(l.Sandbox, prefix) || l.Start != start {
			continue
		}
		r := readyLine{id: l.Sandbox, boot: l.BootSeconds, start: l.Start}
		for _, m := range stepRE.FindAllStringSubmatch(l.Steps, -1) {
			ms, _ := strconv.ParseFloat(m[2], 64)
			r.steps = append(r.steps, stepTime{m[1], ms})
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// medianSteps formats the median of each step (in the order the agent
// runs them) and of the whole boot.
func medianSteps(lines []readyLine) string {
	var order []string
	ms := map[string][]float64{}
	var boot []float64
	for _, l := range lines {
		boot = append(boot, l.boot*1000)
		for _, s := range l.steps {
			if _, ok := ms[s.name]; !ok {
				order = append(order, s.name)
			}
			ms[s.name] = append(ms[s.name], s.ms)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%.0f ms in the agent:", median(boot))
	for _, n := range order {
		fmt.Fprintf(&b, " %s=%s", n, fmtMs(median(ms[n])))
	}
	return b.String()
}

func fmtSteps(steps []stepTime) string {
	var f []string
	for _, s := range steps {
		f = append(f, s.name+"="+fmtMs(s.ms))
	}
	return strings.Join(f, " ")
}

func fmtMs(ms float64) string {
	if ms < 10 {
		return fmt.Sprintf("%.1fms", ms)
	}
	return fmt.Sprintf("%.0fms", ms)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func sumKiB(s []sample, f func(sample) int64) int64 {
	var t int64
	for _, x := range s {
		t += f(x)
	}
	return t
}

// printFastTable prints cold boots against pool takes and template
// starts, the pool's idle VMs, the template's memory, the targets and
// where a start's time goes.
func printFastTable(c config, accel, whyNotKVM string, cold series, coldMem []sample, coldSteps []readyLine, pool *poolResult, fast *fastResult) {
	fmt.Printf("\n### Sandboxes: cold boot vs fast start, from a warm pool and from a VM template (%s, %d MiB guest, %s)\n\n", strings.ToUpper(accel), c.mem, time.Now().Format("2006-01-02"))
	fmt.Println("| measure | cold boot | pool | template | pool / cold | template / cold |")
	fmt.Println("|---|---|---|---|---|---|")
	count := func(cold, pool, tmpl int) string {
		if cold == pool && cold == tmpl {
			return strconv.Itoa(cold)
		}
		return fmt.Sprintf("%d cold / %d pool / %d template", cold, pool, tmpl)
	}
	for _, r := range []struct {
		name    string
		c, p, t []sample
		pct     float64
		pctName string
	}{
		{count(c.seq, c.poolSeq, c.fastSeq) + " in a row, create to Ready", cold.seq, pool.seq, fast.seq, 0.5, "p50"},
		{count(c.seq, c.poolSeq, c.fastSeq) + " in a row, create to Ready", cold.seq, pool.seq, fast.seq, 0.9, "p90"},
		{count(c.seq, c.poolSeq, c.fastSeq) + " in a row, create to Ready", cold.seq, pool.seq, fast.seq, 1, "max"},
		{count(c.par, c.poolPar, c.fastPar) + " in parallel, create to Ready", cold.par, pool.par, fast.par, 0.5, "p50"},
		{count(c.par, c.poolPar, c.fastPar) + " in parallel, create to Ready", cold.par, pool.par, fast.par, 1, "max"},
	} {
		cv := latency.Percentile(durations(r.c), r.pct)
		pv := latency.Percentile(durations(r.p), r.pct)
		tv := latency.Percentile(durations(r.t), r.pct)
		fmt.Printf("| %s %s | %s | %s | %s | %.2f× | %.2f× |\n", r.name, r.pctName, latency.Ms(cv), latency.Ms(pv), latency.Ms(tv),
			float64(pv)/float64(cv), float64(tv)/float64(cv))
	}
	pss := func(x sample) int64 { return x.pss }
	uniq := func(x sample) int64 { return x.uniq }
	running := count(len(coldMem), len(pool.mem), len(fast.mem)) + " running"
	for _, m := range []struct {
		name string
		f    func(sample) int64
	}{{"idle PSS", pss}, {"idle unique memory", uniq}} {
		cm, pm, tm := meanMiB(coldMem, m.f), meanMiB(pool.mem, m.f), meanMiB(fast.mem, m.f)
		fmt.Printf("| %s per sandbox, %s, mean | %.1f MiB | %.1f MiB | %.1f MiB | %.2f× | %.2f× |\n", m.name, running, cm, pm, tm, pm/cm, tm/cm)
	}

	mib := func(kib int64) float64 { return float64(kib) / 1024 }
	idlePSS := sumKiB(pool.idleVMs, pss)
	fmt.Printf("\nWarm pool %s, %d VMs: full %.1f s after the agent started (its VMs boot at once), full again %.1f s after the last of the %d takes in a row.\n",
		pool.class, pool.size, pool.fill.Seconds(), pool.refill.Seconds(), len(pool.mem))
	fmt.Printf("pool overhead: %d idle VMs, %.1f MiB PSS", len(pool.idleVMs), mib(idlePSS))
	if len(pool.idleVMs) > 0 {
		fmt.Printf(" (%.1f MiB PSS, %.1f MiB unique per VM, mean)", meanMiB(pool.idleVMs, pss), meanMiB(pool.idleVMs, uniq))
	}
	fmt.Println(": the refilled pool's own VMs, read with the taken sandboxes idle, in no sandbox's column.")
	if pool.tbMiB > 0 {
		fmt.Printf("Pool VMs (taken ones too) run with a %d MiB TCG translation cache (tb-size), cold and template starts with %d MiB: more unique memory per VM is expected.\n",
			pool.tbMiB, qemu.DefaultTBSizeMiB)
	}

	// The template's pages no clone maps are in no clone's PSS.
	mapped := sumKiB(fast.mem, func(x sample) int64 { return x.shmem })
	unmapped := max(fast.ram.resident/1024-mapped, 0)
	fmt.Printf("\nTemplate %s: built in %.2f s; its guest memory, a memfd the agent holds once for all clones: %.1f MiB in memory of %.0f MiB. "+
		"The %d idle clones map %.1f MiB of it (their Pss_Shmem summed; Shared_Clean+Shared_Dirty %.1f MiB per clone, mean).\n",
		fast.tmpl.Class, fast.tmpl.BuildSeconds, mib(fast.ram.resident/1024), mib(fast.ram.size/1024),
		len(fast.mem), mib(mapped), meanMiB(fast.mem, func(x sample) int64 { return x.shared }))
	fmt.Printf("All %s, PSS summed: cold %.1f MiB; pool %.1f MiB, %.1f MiB with its %d idle VMs; template %.1f MiB with its unmapped pages.\n",
		running, mib(sumKiB(coldMem, pss)), mib(sumKiB(pool.mem, pss)), mib(sumKiB(pool.mem, pss)+idlePSS), len(pool.idleVMs),
		mib(sumKiB(fast.mem, pss)+unmapped))

	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	pp50, tp50 := latency.Percentile(durations(pool.seq), 0.5), latency.Percentile(durations(fast.seq), 0.5)
	u := meanMiB(fast.mem, uniq)
	fmt.Printf("\nTargets: ready ≤ %s median, in a row: pool %s (%d in a row), %s; template %s (%d in a row), %s. "+
		"Unique memory ≤ %.0f MiB per idle sandbox (templating only): template %.1f MiB, %s.\n",
		latency.Ms(targetReady), latency.Ms(pp50), c.poolSeq, met(pp50 <= targetReady), latency.Ms(tp50), c.fastSeq, met(tp50 <= targetReady),
		targetUniq, u, met(u <= targetUniq))
	if accel == "kvm" {
		fmt.Println("Measured under KVM; `--accel tcg` gives the same tables under TCG.")
	} else {
		why := ""
		if whyNotKVM != "" {
			why = " (KVM unusable here: " + whyNotKVM + ")"
		}
		fmt.Printf("Measured under TCG%s; on a host with KVM `make bench` measures under KVM by itself (the table's title says which).\n", why)
	}

	fmt.Println("\nWhere the time goes (the agent's boot steps, median per step):")
	if len(pool.steps) > 0 {
		fmt.Printf("- pool, %d takes in a row: %s\n", len(pool.steps), medianSteps(pool.steps))
	}
	if len(fast.steps) > 0 {
		fmt.Printf("- template, %d in a row: %s\n", len(fast.steps), medianSteps(fast.steps))
	}
	if len(coldSteps) > 0 {
		fmt.Printf("- cold boot, %d in a row: %s\n", len(coldSteps), medianSteps(coldSteps))
	}
	fastest := append([]readyLine(nil), fast.steps...)
	sort.Slice(fastest, func(i, j int) bool { return fastest[i].boot < fastest[j].boot })
	for _, l := range fastest[:min(3, len(fastest))] {
		fmt.Printf("- fast one, %s (%s, %.0f ms in the agent): %s\n", l.id, l.start, l.boot*1000, fmtSteps(l.steps))
	}
	fmt.Printf("\ncold boot: `nodeagent serve --fast-start off`; pool: `--fast-start pool --fast-start-classes %s --fast-start-pool-size %d`, "+
		"timed once the pool was full (again before the parallel run; the takes' refills boot meanwhile), every sandbox checked to be a take; "+
		"template: `--fast-start template --fast-start-classes %s`, timed once the template is ready, every sandbox checked to have started from it;\n",
		pool.class, pool.size, fast.tmpl.Class)
	fmt.Println("create to Ready: the CreateSandbox call (wait) until the guest agent's first answer; unique memory: Private_Clean+Private_Dirty")
	fmt.Println("(a template page only one clone maps counts in its Private_Clean, though the template keeps it either way).")
}

// reap kills, by pid, any QEMU whose command line names this run's
// directory (a sandbox or template the clean-up missed) and says so.
func reap(tmp string) {
	for _, q := range qemus(tmp) {
		fmt.Fprintf(os.Stderr, "sandboxbench: QEMU pid %d (%s) was left behind; killing it\n", q.pid, q.name)
		_ = syscall.Kill(q.pid, syscall.SIGKILL)
	}
}

// qemuProc is a running QEMU: its pid, -name and TCG translation cache
// (tb-size, MiB; 0 if not given).
type qemuProc struct {
	pid   int
	name  string
	tbMiB int
}

// qemus lists the QEMUs whose command line contains match.
func qemus(match string) []qemuProc {
	var out []qemuProc
	for _, p := range fabric.Processes() {
		if !strings.Contains(p.Name(), "qemu-system") || !p.Mentions(match) {
			continue
		}
		q := qemuProc{pid: p.Pid, name: p.Flag("-name")}
		if q.name == "" {
			q.name = "?"
		}
		for _, o := range strings.Split(p.Flag("-accel"), ",") {
			if v, ok := strings.CutPrefix(o, "tb-size="); ok {
				q.tbMiB, _ = strconv.Atoi(v)
			}
		}
		out = append(out, q)
	}
	return out
}
