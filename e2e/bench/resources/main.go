// Command resources measures the agent's resource calls against the
// kernel files they end in: UpdateSandboxResources over gRPC against a
// direct write of the sandbox cgroup's CPU quota, and GetSandboxStats
// against direct reads of the same cgroup's accounting files, on one
// running sandbox. make bench runs it; it prints a markdown table.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/bench/latency"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

func main() {
	bin := flag.String("bin", "bin", "directory with nodeagent and nodeagent-guest/")
	n := flag.Int("n", 1000, "calls per measure")
	flag.Parse()
	if err := run(*bin, *n); err != nil {
		fmt.Fprintln(os.Stderr, "resourcesbench:", err)
		os.Exit(1)
	}
}

func run(bin string, n int) error {
	bin, _ = filepath.Abs(bin)
	tmp, err := os.MkdirTemp("", "resourcesbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	parent := fmt.Sprintf("/nodeinfra-bench-%d", os.Getpid())
	sock := filepath.Join(tmp, "agent.sock")
	logf, err := os.Create(filepath.Join(tmp, "agent.log"))
	if err != nil {
		return err
	}
	agent := exec.Command(filepath.Join(bin, "nodeagent"), "serve", "--socket", sock, "--state-dir", filepath.Join(tmp, "state"),
		"--metrics-addr", "", "--probe-addr", "", "--cgroup-parent", parent, "--log-level", "warn",
		"--guest-kernel", filepath.Join(bin, "nodeagent-guest", "vmlinux"), "--guest-initrd", filepath.Join(bin, "nodeagent-guest", "initramfs.cpio"))
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() {
		_ = agent.Process.Kill()
		_ = agent.Wait()
		for _, d := range cgroupDirs(parent) {
			_ = os.Remove(d)
		}
	}()
	var cl *agentclient.Client
	for i := 0; i < 500 && cl == nil; i++ {
		if _, err := os.Stat(sock); err == nil {
			if cl, err = agentclient.Dial(sock); err != nil {
				return err
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if cl == nil {
		return fmt.Errorf("nodeagent did not start; see %s", logf.Name())
	}
	ctx := context.Background()
	const id = "bench-res"
	s, err := cl.CreateSandbox(ctx, &apiv1.CreateSandboxRequest{Spec: &apiv1.SandboxSpec{Id: id}, Wait: true})
	if err != nil {
		return err
	}
	defer cl.DeleteSandbox(ctx, &apiv1.DeleteSandboxRequest{Id: id})
	if s.State != apiv1.Sandbox_READY {
		return fmt.Errorf("sandbox %s: %s", s.State, s.Reason)
	}
	cpuDir := filepath.Join("/sys/fs/cgroup/cpu", s.Cgroup)
	memDir := filepath.Join("/sys/fs/cgroup/memory", s.Cgroup)
	pidsDir := filepath.Join("/sys/fs/cgroup/pids", s.Cgroup)
	if _, err := os.Stat(cpuDir); err != nil {
		return fmt.Errorf("needs cgroup v1 here: %w", err)
	}

	cpus := func(i int) float64 { return 0.5 + float64(i%2)/10 }
	files := []string{filepath.Join(cpuDir, "cpuacct.usage"), filepath.Join(cpuDir, "cpu.stat"), filepath.Join(memDir, "memory.usage_in_bytes"),
		filepath.Join(memDir, "memory.max_usage_in_bytes"), filepath.Join(memDir, "memory.limit_in_bytes"), filepath.Join(memDir, "memory.oom_control"),
		filepath.Join(pidsDir, "pids.current"), filepath.Join(pidsDir, "pids.max")}
	if _, err := os.Stat(files[0]); err != nil {
		files[0] = filepath.Join("/sys/fs/cgroup/cpuacct", s.Cgroup, "cpuacct.usage")
	}
	// The agent reads the IO counters too where blkio is mounted.
	if blkio := filepath.Join("/sys/fs/cgroup/blkio", s.Cgroup); dirExists(blkio) {
		files = append(files, filepath.Join(blkio, "blkio.throttle.io_service_bytes_recursive"), filepath.Join(blkio, "blkio.throttle.io_serviced_recursive"))
	}
	measures := []struct {
		call, path string
		f          func(i int) error
		d          []time.Duration
	}{
		{call: "update CPU quota", path: "UpdateSandboxResources (gRPC)", f: func(i int) error {
			c := cpus(i)
			_, err := cl.UpdateSandboxResources(ctx, &apiv1.UpdateSandboxResourcesRequest{Id: id, Resources: &apiv1.Resources{Cpus: &c}})
			return err
		}},
		{call: "update CPU quota", path: "write cpu.cfs_quota_us", f: func(i int) error {
			return os.WriteFile(filepath.Join(cpuDir, "cpu.cfs_quota_us"), []byte(fmt.Sprint(int(cpus(i)*100000))), 0)
		}},
		{call: "read accounting", path: "GetSandboxStats (gRPC: cgroup files; QEMU's disk counters when it has disks)", f: func(int) error {
			_, err := cl.GetSandboxStats(ctx, &apiv1.GetSandboxStatsRequest{Id: id})
			return err
		}},
		{call: "read accounting", path: fmt.Sprintf("read the same %d cgroup files", len(files)), f: func(int) error {
			for _, f := range files {
				if _, err := os.ReadFile(f); err != nil {
					return err
				}
			}
			return nil
		}},
		// The floor under both: a gRPC call that reads the agent's memory only.
		{call: "(floor)", path: "GetSandbox (gRPC, the agent's memory only)", f: func(int) error {
			_, err := cl.GetSandbox(ctx, &apiv1.GetSandboxRequest{Id: id})
			return err
		}},
	}
	// In rounds, each measure a slice of its calls in turn: what the
	// machine does meanwhile (another tenant of its host, a flush) falls
	// on every measure alike, not on whichever ran then.
	const rounds = 20
	steal0 := steal()
	t0 := time.Now()
	for r := 0; r < rounds; r++ {
		for m := range measures {
			for i := r * n / rounds; i < (r+1)*n/rounds; i++ {
				c0 := time.Now()
				if err := measures[m].f(i); err != nil {
					return fmt.Errorf("%s: %w", measures[m].path, err)
				}
				measures[m].d = append(measures[m].d, time.Since(c0))
			}
		}
	}
	stolen := steal() - steal0
	elapsed := time.Since(t0)
	fmt.Printf("\nResource calls on one running sandbox (%d calls each, in %d interleaved rounds), measured %s on %s\n\n", n, rounds, time.Now().UTC().Format("2006-01-02"), host())
	fmt.Println("| call | path | p50 | p99 |")
	fmt.Println("|---|---|---|---|")
	row := func(call, path string, d []time.Duration) {
		fmt.Printf("| %s | %s | %s | %s |\n", call, path, latency.Ms(latency.Percentile(d, .5)), latency.Ms(latency.Percentile(d, .99)))
	}
	for _, m := range measures {
		row(m.call, m.path, m.d)
	}
	if stolen >= 0 {
		fmt.Printf("\nCPU steal during the run (time the host gave this machine's CPUs to others): %.1f%% of %d CPUs over %v.\n",
			100*stolen.Seconds()/(elapsed.Seconds()*float64(runtime.NumCPU())), runtime.NumCPU(), elapsed.Round(10*time.Millisecond))
	}
	fmt.Println("\nTarget: UpdateSandboxResources and GetSandboxStats p99 ≤ 2 ms.")
	return nil
}

func cgroupDirs(p string) []string {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", strings.TrimPrefix(p, "/")))
	return dirs
}

// steal is the CPU time the hypervisor has taken from this machine
// (/proc/stat's steal column, summed over CPUs), or -1.
func steal() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return -1
	}
	ticks, err := strconv.ParseInt(f[8], 10, 64)
	if err != nil {
		return -1
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

func dirExists(d string) bool {
	fi, err := os.Stat(d)
	return err == nil && fi.IsDir()
}

func host() string {
	h, _ := os.Hostname()
	return h
}
