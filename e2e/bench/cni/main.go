// Command cni is the network benchmark of `make bench` (cnibench): it
// measures cni-eni's ADD and DEL latency against containernetworking/plugins'
// host-device doing the same move, in one run, on the same simulated node,
// both driven through libcni as containerd drives plugins. It prints a
// markdown table.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/nodeinfra/nodeinfra/e2e/bench/latency"
	"github.com/nodeinfra/nodeinfra/e2e/fabric"
	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
	"github.com/nodeinfra/nodeinfra/pkg/agentclient"
)

type options struct {
	bin, hostDevice, static, peerVersion string
	seq, conc, warmup, rounds            int
	keep                                 bool
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory with cni-eni and nodeagent")
	flag.StringVar(&o.hostDevice, "host-device", "", "host-device plugin binary (the peer)")
	flag.StringVar(&o.static, "static", "", "static IPAM plugin binary (gives host-device the same addresses and routes)")
	flag.StringVar(&o.peerVersion, "peer-version", "", "version of the peer, for the table")
	flag.IntVar(&o.seq, "seq", 200, "pods added and deleted one after another")
	flag.IntVar(&o.conc, "conc", 32, "pods added (then deleted) all at once")
	flag.IntVar(&o.warmup, "warmup", 5, "unmeasured ADD/DEL cycles per plugin first")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of the concurrent scenario (their samples are pooled)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary dir (agent log, CNI cache)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "cnibench: needs root (it builds network namespaces)")
		os.Exit(2)
	}
	if o.hostDevice == "" || o.static == "" {
		fmt.Fprintln(os.Stderr, "cnibench: --host-device and --static are required (make bench builds them)")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "cnibench:", err)
		os.Exit(1)
	}
}

// sample is the latencies of one plugin in one scenario.
type sample struct {
	add, del []time.Duration
	failures int
}

// plugin is one contestant: how to build the conflist of pod i.
type plugin struct {
	name     string
	conflist func(i int) []byte
	before   func() error // e.g. start the agent
	after    func()
}

type bench struct {
	o       options
	f       *fabric.Fabric
	enis    []fabric.ENI
	pods    []*fabric.Pod
	plugDir string
	cache   string
	ctx     context.Context
}

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tmp, err := os.MkdirTemp("", "cnibench-")
	if err != nil {
		return err
	}
	defer func() {
		if o.keep {
			fmt.Fprintln(os.Stderr, "cnibench: kept", tmp)
			return
		}
		os.RemoveAll(tmp)
	}()
	f, err := fabric.New()
	if err != nil {
		return err
	}
	defer f.Close()
	b := &bench{o: o, f: f, ctx: ctx, plugDir: filepath.Join(tmp, "plugins"), cache: filepath.Join(tmp, "cache")}
	if err := os.MkdirAll(b.plugDir, 0o755); err != nil {
		return err
	}
	for name, src := range map[string]string{
		"cni-eni": filepath.Join(o.bin, "cni-eni"), "host-device": o.hostDevice, "static": o.static,
	} {
		abs, err := filepath.Abs(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(abs, filepath.Join(b.plugDir, name)); err != nil {
			return err
		}
	}
	n := o.seq
	if o.conc > n {
		n = o.conc
	}
	if o.warmup > n {
		n = o.warmup
	}
	vpc, err := f.AddVPC("bench", netip.MustParsePrefix("10.20.0.1/16"))
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "cnibench: building %d ENIs and pod namespaces\n", n)
	for i := 0; i < n; i++ {
		e, err := f.AddENI(vpc, "")
		if err != nil {
			return err
		}
		b.enis = append(b.enis, e)
		p, err := f.NewPod("bench", fmt.Sprintf("pod-%d", i))
		if err != nil {
			return err
		}
		b.pods = append(b.pods, p)
	}
	addr := func(i int) string { return fmt.Sprintf("10.20.%d.%d", 1+i/250, 1+i%250) }

	agentBin, err := filepath.Abs(filepath.Join(o.bin, "nodeagent"))
	if err != nil {
		return err
	}
	var agent *fabric.Agent
	agentDir := filepath.Join(tmp, "agent")
	if err := os.MkdirAll(agentDir, 0o755); err != nil {
		return err
	}
	ours := plugin{
		name: "cni-eni",
		conflist: func(int) []byte {
			return fabric.Conflist("1.1.0", filepath.Join(agentDir, "agent.sock"))
		},
		before: func() error {
			if agent == nil {
				a, err := fabric.StartAgent(agentBin, f.Node, agentDir, "--reconcile-interval", "1h", "--log-level", "warn")
				if err != nil {
					return err
				}
				agent = a
				return b.register(agent, addr)
			}
			return agent.Start()
		},
		after: func() { agent.Stop() },
	}
	peer := plugin{
		name: "host-device " + o.peerVersion + " + static IPAM",
		conflist: func(i int) []byte {
			return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"hd","plugins":[{"type":"host-device","device":%q,
"ipam":{"type":"static","addresses":[{"address":"%s/16","gateway":"10.20.0.1"}],"routes":[{"dst":"0.0.0.0/0","gw":"10.20.0.1"}]}}]}`,
				b.enis[i].HostName, addr(i)))
		},
	}
	bare := plugin{
		name: "host-device " + o.peerVersion + " (move only)",
		conflist: func(i int) []byte {
			return []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"hdbare","plugins":[{"type":"host-device","device":%q}]}`, b.enis[i].HostName))
		},
	}
	contestants := []plugin{ours, peer, bare}
	results := map[string]map[string]*sample{}
	for _, scenario := range []struct {
		name string
		pods int
		conc bool
	}{{fmt.Sprintf("%d sequential", o.seq), o.seq, false}, {fmt.Sprintf("%d concurrent ×%d", o.conc, o.rounds), o.conc, true}} {
		results[scenario.name] = map[string]*sample{}
		for _, p := range contestants {
			if p.before != nil {
				if err := p.before(); err != nil {
					return fmt.Errorf("%s: %w", p.name, err)
				}
			}
			if err := b.cycle(p, o.warmup, false, &sample{}); err != nil {
				return fmt.Errorf("%s warm-up: %w", p.name, err)
			}
			s := &sample{}
			fmt.Fprintf(os.Stderr, "cnibench: %s, %s\n", scenario.name, p.name)
			rounds := 1
			if scenario.conc {
				rounds = o.rounds
			}
			for r := 0; r < rounds; r++ {
				if err := b.cycle(p, scenario.pods, scenario.conc, s); err != nil {
					return fmt.Errorf("%s: %w", p.name, err)
				}
			}
			results[scenario.name][p.name] = s
			if p.after != nil {
				p.after()
			}
		}
	}
	printTable(os.Stdout, o, contestants, results)
	return nil
}

// register gives the agent every ENI and assigns pod i to ENI i.
func (b *bench) register(a *fabric.Agent, addr func(int) string) error {
	cl, err := agentclient.Dial(a.Socket)
	if err != nil {
		return err
	}
	defer cl.Close()
	for i, e := range b.enis {
		if _, err := cl.RegisterENI(b.ctx, &apiv1.RegisterENIRequest{Config: &apiv1.ENIConfig{
			Mac: e.MAC, Vpc: "bench", Addresses: []string{addr(i) + "/16"}, Gateways: []string{"10.20.0.1"},
		}}); err != nil {
			return err
		}
		p := b.pods[i]
		if _, err := cl.AssignPod(b.ctx, &apiv1.AssignPodRequest{Assignment: &apiv1.Assignment{
			PodNamespace: p.Namespace, PodName: p.Name, Target: &apiv1.Assignment_Mac{Mac: e.MAC},
		}}); err != nil {
			return err
		}
	}
	return nil
}

// cycle ADDs then DELs pods 0..n-1, one by one or all at once, recording
// each call's latency in s.
func (b *bench) cycle(p plugin, n int, conc bool, s *sample) error {
	cni := libcni.NewCNIConfigWithCacheDir([]string{b.plugDir}, b.cache, nil)
	lists := make([]*libcni.NetworkConfigList, n)
	for i := range lists {
		l, err := libcni.ConfListFromBytes(p.conflist(i))
		if err != nil {
			return err
		}
		lists[i] = l
	}
	rts := make([]*libcni.RuntimeConf, n)
	for i := range rts {
		pod := b.pods[i]
		rts[i] = &libcni.RuntimeConf{ContainerID: pod.ContainerID, NetNS: pod.NS.Path(), IfName: "eth0", Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", pod.Namespace}, {"K8S_POD_NAME", pod.Name}, {"K8S_POD_INFRA_CONTAINER_ID", pod.ContainerID},
		}}
	}
	var mu sync.Mutex
	var errs []string
	op := func(i int, add bool) {
		var err error
		start := time.Now()
		err = b.f.Node.Do(func(ns.NetNS) error {
			if add {
				_, err := cni.AddNetworkList(b.ctx, lists[i], rts[i])
				return err
			}
			return cni.DelNetworkList(b.ctx, lists[i], rts[i])
		})
		d := time.Since(start)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			s.failures++
			if len(errs) < 3 {
				errs = append(errs, err.Error())
			}
			return
		}
		if add {
			s.add = append(s.add, d)
		} else {
			s.del = append(s.del, d)
		}
	}
	for _, add := range []bool{true, false} {
		if conc {
			var wg sync.WaitGroup
			for i := 0; i < n; i++ {
				wg.Add(1)
				go func(i int) { defer wg.Done(); op(i, add) }(i)
			}
			wg.Wait()
		} else {
			for i := 0; i < n; i++ {
				op(i, add)
			}
		}
		if b.ctx.Err() != nil {
			return b.ctx.Err()
		}
	}
	if len(errs) > 0 {
		fmt.Fprintf(os.Stderr, "cnibench: %s: %d failures, e.g. %s\n", p.name, s.failures, strings.Join(errs, " | "))
	}
	return nil
}

func printTable(w *os.File, o options, cs []plugin, res map[string]map[string]*sample) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "\nCNI ADD/DEL latency through libcni, measured %s on %s (%d CPUs); peer built from containernetworking/plugins %s\n\n",
		time.Now().UTC().Format("2006-01-02"), host, runtime.NumCPU(), o.peerVersion)
	fmt.Fprintln(w, "| scenario | plugin | ADD p50 | ADD p99 | DEL p50 | DEL p99 | failures |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	var scen []string
	for k := range res {
		scen = append(scen, k)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(scen)))
	for _, sc := range scen {
		for _, c := range cs {
			s := res[sc][c.name]
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %d |\n", sc, c.name,
				latency.Ms(latency.Percentile(s.add, .5)), latency.Ms(latency.Percentile(s.add, .99)), latency.Ms(latency.Percentile(s.del, .5)), latency.Ms(latency.Percentile(s.del, .99)), s.failures)
		}
		ours := res[sc][cs[0].name]
		for _, c := range cs[1:] {
			s := res[sc][c.name]
			r := func(a, b time.Duration) string {
				if b == 0 {
					return "-"
				}
				return fmt.Sprintf("%.2f×", float64(a)/float64(b))
			}
			fmt.Fprintf(w, "| %s | ratio cni-eni / %s | %s | %s | %s | %s | |\n", sc, c.name,
				r(latency.Percentile(ours.add, .5), latency.Percentile(s.add, .5)), r(latency.Percentile(ours.add, .99), latency.Percentile(s.add, .99)),
				r(latency.Percentile(ours.del, .5), latency.Percentile(s.del, .5)), r(latency.Percentile(ours.del, .99), latency.Percentile(s.del, .99)))
		}
	}
	fmt.Fprintln(w, "\nTargets: cni-eni ADD and DEL p50 ≤ 0.40× host-device's, p99 ≤ 0.50×, zero failures with 32 concurrent ADDs.")
}
