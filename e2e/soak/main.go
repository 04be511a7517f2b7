// Command soak is `make soak`: it drives the node's three data paths over
// and over on one simulated node and fails if the node is left holding
// more than it held before. The paths are CNI ADD/DEL through libcni and
// cni-eni against the real nodeagent; sandbox create, exec and delete
// through the agent's API (half of them in a pod netns, so that the tap
// and the tc redirects come and go); and CSI NodeStage/NodeUnstage
// through csi-ceph on a Ceph cluster of its own. It counts links, taps,
// qdiscs, cgroups, descriptors, threads, goroutines, loop devices,
// mounts, state files and QEMU processes before the cycles and after a
// settle, prints markdown tables, and exits 1 if anything grew beyond
// its documented tolerance or a cycle failed (130 when interrupted).
//
// Everything it makes lives in network namespaces, a cgroup parent and a
// directory of its own, and is taken down on exit, on failure and on
// Ctrl-C. It needs root, and runs from the repository root (it starts
// the cluster with e2e/setup/ceph-up.sh).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

type options struct {
	bin                   string
	cni, sandboxes, csi   int
	warmup                int
	pods, vmPods, volumes int
	settle                time.Duration
	keep                  bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory with nodeagent, cni-eni, csi-ceph and nodeagent-guest/ (make build)")
	flag.IntVar(&o.cni, "cni", 1000, "CNI ADD/DEL cycles")
	flag.IntVar(&o.sandboxes, "sandboxes", 200, "sandbox create/exec/delete cycles (every other one in a pod netns)")
	flag.IntVar(&o.csi, "csi", 200, "CSI NodeStage/NodeUnstage cycles")
	flag.IntVar(&o.warmup, "warmup", 2, "cycles of each phase before the first count (first-use caches, connections)")
	flag.IntVar(&o.pods, "pods", 4, "pods (each with its own ENI) the CNI cycles go round")
	flag.IntVar(&o.vmPods, "vm-pods", 2, "pod netns (each with its own ENI) the networked sandboxes go round")
	flag.IntVar(&o.volumes, "volumes", 3, "volumes the CSI cycles go round")
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "wait after the last cycle before the second count")
	flag.BoolVar(&o.keep, "keep", false, "keep the run's directory (logs, state)")
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// A second Ctrl-C is caught too (until stop): the teardown finishes.
	code := run(ctx, o)
	stop()
	os.Exit(code)
}

func (o *options) validate() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, cgroups, mounts, loop devices)")
	}
	if _, err := os.Stat(cephUp); err != nil {
		return fmt.Errorf("run from the repository root (%s: %w)", cephUp, err)
	}
	abs, err := filepath.Abs(o.bin)
	if err != nil {
		return err
	}
	o.bin = abs
	for _, f := range []string{"nodeagent", "cni-eni", "csi-ceph", "nodeagent-guest/vmlinux", "nodeagent-guest/initramfs.cpio"} {
		if _, err := os.Stat(filepath.Join(o.bin, f)); err != nil {
			return fmt.Errorf("%w (run make build)", err)
		}
	}
	if o.cni < 0 || o.sandboxes < 0 || o.csi < 0 || o.warmup < 0 {
		return errors.New("cycle counts must not be negative")
	}
	if o.pods < 1 || o.vmPods < 1 || o.volumes < 1 || o.pods+o.vmPods > 200 {
		return errors.New("--pods, --vm-pods and --volumes: at least 1 each, pods and vm-pods at most 200 together")
	}
	return nil
}

func run(ctx context.Context, o options) int {
	start := time.Now()
	e, err := setUp(ctx, o)
	defer e.close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak: set-up:", err)
		if ctx.Err() != nil {
			return 130
		}
		e.printLogs()
		return 1
	}
	phases := e.phases()
	for _, p := range phases {
		if r := p.run(ctx, o.warmup, "warm-up"); r.err != nil {
			fmt.Fprintf(os.Stderr, "soak: warm-up %s: %v\n", p.name, r.err)
			if ctx.Err() != nil {
				return 130
			}
			e.printLogs()
			return 1
		}
	}
	setup := time.Since(start)

	fmt.Fprintln(os.Stderr, "soak: counting (before)")
	before := e.sampleCensus(5, 200*time.Millisecond)
	var results []result
	for i, p := range phases {
		r := p.run(ctx, []int{o.cni, o.sandboxes, o.csi}[i], "soak")
		results = append(results, r)
		if r.err != nil {
			break // the count after shows what the failure left
		}
	}
	if ctx.Err() != nil {
		// What an interrupted cycle holds is no leak: no second count.
		printPhases(os.Stdout, o.warmup, results, setup, time.Since(start))
		fmt.Fprintln(os.Stderr, "soak: interrupted; tearing down")
		return 130
	}
	fmt.Fprintf(os.Stderr, "soak: settling %v, counting (after)\n", o.settle)
	time.Sleep(o.settle)
	after := e.sampleCensus(5, 200*time.Millisecond)

	verdicts := judge(before, after)
	printPhases(os.Stdout, o.warmup, results, setup, time.Since(start))
	printResources(os.Stdout, verdicts, o.settle)

	failed := false
	for _, r := range results {
		if r.err != nil {
			failed = true
			fmt.Fprintf(os.Stderr, "soak: FAILED: %s: %v\n", r.name, r.err)
		}
	}
	for _, v := range verdicts {
		if v.bad {
			failed = true
			fmt.Fprintf(os.Stderr, "soak: FAILED: %s: before %s, after %s\n", v.name, cell(v.before), cell(v.after))
		}
	}
	if failed {
		e.printLogs()
		return 1
	}
	fmt.Println("\nNothing grew.")
	return 0
}

// printLogs shows the end of the daemons' logs on stderr.
func (e *env) printLogs() {
	for _, d := range []*daemon{e.agent, e.csi} {
		if d != nil {
			fmt.Fprintf(os.Stderr, "--- last lines of %s (%s)\n%s\n", d.name, d.log, tailFile(d.log, 25))
		}
	}
}
