package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/bench/latency"
)

// verdict is one resource compared before and after.
type verdict struct {
	name          string
	before, after count
	growth        int
	// bad: grew beyond its tolerance, or could not be counted.
	bad  bool
	cell string // the growth column
}

// judge compares two censuses, resource by resource (by name).
func judge(before, after []count) []verdict {
	idx := map[string]count{}
	for _, c := range after {
		idx[c.Name] = c
	}
	var out []verdict
	for _, b := range before {
		a, ok := idx[b.Name]
		if !ok {
			a = count{Name: b.Name, Err: fmt.Errorf("not counted after")}
		}
		v := verdict{name: b.Name, before: b, after: a, growth: a.N - b.N}
		switch {
		case b.Unjudged != "":
			v.cell = signed(v.growth) + " (not judged: " + b.Unjudged + ")"
			if b.Err != nil || a.Err != nil {
				v.cell = "(not counted)"
			}
		case b.Err != nil || a.Err != nil:
			v.bad, v.cell = true, "**not counted**"
		case v.growth > b.Tolerance:
			v.bad, v.cell = true, "**"+signed(v.growth)+" GREW**"
			if b.Tolerance > 0 {
				v.cell = fmt.Sprintf("**%s GREW** (≤ %d allowed)", signed(v.growth), b.Tolerance)
			}
		case v.growth > 0:
			v.cell = fmt.Sprintf("%s (≤ %d allowed)", signed(v.growth), b.Tolerance)
		default:
			v.cell = signed(v.growth)
		}
		out = append(out, v)
	}
	return out
}

func signed(n int) string {
	if n > 0 {
		return fmt.Sprintf("+%d", n)
	}
	return fmt.Sprint(n)
}

func cell(c count) string {
	if c.Err != nil {
		return "error: " + strings.ReplaceAll(c.Err.Error(), "|", "/")
	}
	return fmt.Sprint(c.N)
}

// printResources writes the resource table and the notes on tolerances.
func printResources(w io.Writer, vs []verdict, settle time.Duration) {
	fmt.Fprintf(w, "\n### What the node holds, before the cycles and after (%v settle)\n\n", settle)
	fmt.Fprintln(w, "| resource | before | after | growth |")
	fmt.Fprintln(w, "|---|---|---|---|")
	whys := map[string]bool{}
	var notes []string
	for _, v := range vs {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", v.name, cell(v.before), cell(v.after), v.cell)
		if v.before.Tolerance > 0 && !whys[v.before.Why] {
			whys[v.before.Why] = true
			notes = append(notes, fmt.Sprintf("%s: up to +%d", v.before.Why, v.before.Tolerance))
		}
	}
	fmt.Fprintln(w, "\nEach count is the minimum of 5 samples 200 ms apart (a descriptor or goroutine that exists only while a")
	fmt.Fprintln(w, "reconcile or the metrics request runs is not held; a leaked one is there every time). Tolerated growth:")
	for _, n := range notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	fmt.Fprintln(w, "- everything else: none. Machine-wide rows (other runs share this machine) and the Go heap (it moves")
	fmt.Fprintln(w, "  with GC timing) are shown, not judged; the run-scoped rows (this run's dir, sandbox IDs, cgroup")
	fmt.Fprintln(w, "  parent, namespaces, daemons) are.")
}

// printPhases writes the time each phase took.
func printPhases(w io.Writer, warmup int, rs []result, setup, total time.Duration) {
	fmt.Fprintf(w, "\n### Phases (after %d warm-up cycles each, before the first count)\n\n", warmup)
	fmt.Fprintln(w, "| phase | cycles | took | per cycle p50 | p99 | max | first 10% mean | last 10% mean | result |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	var cycles int
	var took time.Duration
	for _, r := range rs {
		status := "ok"
		if r.err != nil {
			status = "**failed**: " + strings.ReplaceAll(firstLine(r.err.Error()), "|", "/")
		}
		first, last := driftMeans(r.cycles)
		fmt.Fprintf(w, "| %s | %d/%d | %v | %s | %s | %s | %s | %s | %s |\n", r.name, len(r.cycles), r.want, r.took.Round(100*time.Millisecond),
			latency.Ms(latency.Percentile(r.cycles, .5)), latency.Ms(latency.Percentile(r.cycles, .99)), latency.Ms(latency.Percentile(r.cycles, 1)),
			latency.Ms(first), latency.Ms(last), status)
		cycles += len(r.cycles)
		took += r.took
	}
	fmt.Fprintf(w, "| **total** | %d | %v | | | | | | |\n", cycles, took.Round(100*time.Millisecond))
	fmt.Fprintf(w, "\nSet-up (Ceph cluster, node, agent, csi-ceph, volumes) and warm-up: %v; whole run: %v.\n",
		setup.Round(100*time.Millisecond), total.Round(100*time.Millisecond))
	fmt.Fprintln(w, "A CNI cycle is ADD, DEL, and DEL again without the netns (as containerd 1.6 does). Every sandbox was")
	fmt.Fprintln(w, "seen, while Ready, with its cgroup and (every other one, in a pod netns) its tap and tc redirects.")
}

// driftMeans is the mean of the first and of the last tenth of d (at
// least one sample each): a path that slows as it runs shows here first.
func driftMeans(d []time.Duration) (first, last time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	k := max(len(d)/10, 1)
	mean := func(s []time.Duration) time.Duration {
		var t time.Duration
		for _, x := range s {
			t += x
		}
		return t / time.Duration(len(s))
	}
	return mean(d[:k]), mean(d[len(d)-k:])
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
