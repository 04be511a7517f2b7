package main

// The fast start half of the benchmark: a second agent with
// --fast-start template, its sandboxes timed and measured like the cold
// ones, the template's own memory, the agent's per-step timings and the
// cold-vs-template table.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/bench/latency"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

// The targets for template starts.
const (
	targetReady = 150 * time.Millisecond // median, create call to Ready, in a row
	targetUniq  = 32.0                   // MiB of unique memory per idle sandbox
)

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
		atIdle: func() error {
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
	if r.steps, err = readySteps(a.log, "bench-tseq-"); err != nil {
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
// starts with prefix from an agent's JSON log.
func readySteps(log, prefix string) ([]readyLine, error) {
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
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Msg != "sandbox ready" || !strings.HasPrefix(l.Sandbox, prefix) {
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

// printFastTable prints cold boots against template starts, the
// template's memory, the targets and where a start's time goes.
func printFastTable(c config, accel, whyNotKVM string, cold series, coldMem []sample, coldSteps []readyLine, fast *fastResult) {
	fmt.Printf("\n### Sandboxes: cold boot vs fast start from a VM template (%s, %d MiB guest, %s)\n\n", strings.ToUpper(accel), c.mem, time.Now().Format("2006-01-02"))
	fmt.Println("| measure | cold boot | template | ratio |")
	fmt.Println("|---|---|---|---|")
	count := func(cold, tmpl int) string {
		if cold == tmpl {
			return strconv.Itoa(cold)
		}
		return fmt.Sprintf("%d cold / %d template", cold, tmpl)
	}
	for _, r := range []struct {
		name    string
		c, t    []sample
		p       float64
		pctName string
	}{
		{count(c.seq, c.fastSeq) + " in a row, create to Ready", cold.seq, fast.seq, 0.5, "p50"},
		{count(c.seq, c.fastSeq) + " in a row, create to Ready", cold.seq, fast.seq, 0.9, "p90"},
		{count(c.seq, c.fastSeq) + " in a row, create to Ready", cold.seq, fast.seq, 1, "max"},
		{count(c.par, c.fastPar) + " in parallel, create to Ready", cold.par, fast.par, 0.5, "p50"},
		{count(c.par, c.fastPar) + " in parallel, create to Ready", cold.par, fast.par, 1, "max"},
	} {
		cv, tv := latency.Percentile(durations(r.c), r.p), latency.Percentile(durations(r.t), r.p)
		fmt.Printf("| %s %s | %s | %s | %.2f× |\n", r.name, r.pctName, latency.Ms(cv), latency.Ms(tv), float64(tv)/float64(cv))
	}
	pss := func(x sample) int64 { return x.pss }
	uniq := func(x sample) int64 { return x.uniq }
	running := count(len(coldMem), len(fast.mem)) + " running"
	fmt.Printf("| idle PSS per sandbox, %s, mean | %.1f MiB | %.1f MiB | %.2f× |\n", running, meanMiB(coldMem, pss), meanMiB(fast.mem, pss), meanMiB(fast.mem, pss)/meanMiB(coldMem, pss))
	fmt.Printf("| idle unique memory per sandbox, %s, mean | %.1f MiB | %.1f MiB | %.2f× |\n", running, meanMiB(coldMem, uniq), meanMiB(fast.mem, uniq), meanMiB(fast.mem, uniq)/meanMiB(coldMem, uniq))

	// The template's pages no clone maps are in no clone's PSS.
	mib := func(kib int64) float64 { return float64(kib) / 1024 }
	mapped := sumKiB(fast.mem, func(x sample) int64 { return x.shmem })
	unmapped := max(fast.ram.resident/1024-mapped, 0)
	fmt.Printf("\nTemplate %s: built in %.2f s; its guest memory, a memfd the agent holds once for all clones: %.1f MiB in memory of %.0f MiB. "+
		"The %d idle clones map %.1f MiB of it (their Pss_Shmem summed; Shared_Clean+Shared_Dirty %.1f MiB per clone, mean).\n",
		fast.tmpl.Class, fast.tmpl.BuildSeconds, mib(fast.ram.resident/1024), mib(fast.ram.size/1024),
		len(fast.mem), mib(mapped), meanMiB(fast.mem, func(x sample) int64 { return x.shared }))
	fmt.Printf("All %s, PSS summed (template: with its unmapped pages): cold %.1f MiB, template %.1f MiB.\n",
		running, mib(sumKiB(coldMem, pss)), mib(sumKiB(fast.mem, pss)+unmapped))

	p50 := latency.Percentile(durations(fast.seq), 0.5)
	u := meanMiB(fast.mem, uniq)
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	fmt.Printf("\nTargets (template): ready ≤ %s median (%d in a row): %s, %s; unique memory ≤ %.0f MiB per idle sandbox: %.1f MiB, %s.\n",
		latency.Ms(targetReady), c.fastSeq, latency.Ms(p50), met(p50 <= targetReady), targetUniq, u, met(u <= targetUniq))
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
	fmt.Println("\ncold boot: `nodeagent serve --fast-start off`; template: `--fast-start template --fast-start-classes " + fast.tmpl.Class +
		"`, timed once the template is ready, every sandbox checked to have started from it;")
	fmt.Println("create to Ready: the CreateSandbox call (wait) until the guest agent's first answer; unique memory: Private_Clean+Private_Dirty")
	fmt.Println("(a template page only one clone maps counts in its Private_Clean, though the template keeps it either way).")
}

// reap kills, by pid, any QEMU whose command line names this run's
// directory (a sandbox or template the clean-up missed) and says so.
func reap(tmp string) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		cmd := strings.Join(args, " ")
		if strings.Contains(cmd, "qemu-system") && strings.Contains(cmd, tmp) {
			name := "?"
			for i := range args[:len(args)-1] {
				if args[i] == "-name" {
					name = args[i+1]
				}
			}
			fmt.Fprintf(os.Stderr, "sandboxbench: QEMU pid %d (%s) was left behind; killing it\n", pid, name)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
