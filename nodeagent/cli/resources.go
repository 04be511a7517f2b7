package cli

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"

	apiv1 "github.com/nodeinfra/nodeinfra/nodeagent/api/v1"
)

// resourceFlags are the cgroup limit flags of sandbox create and update
// and of group create and update. Only the flags given set a limit.
type resourceFlags struct {
	fs                                     *pflag.FlagSet
	memFlag                                string
	cpus                                   float64
	cpuWeight, ioWeight                    uint64
	cpusetCPUs, cpusetMems                 string
	memory, memoryLow, swap                string
	pids                                   int64
	readBps, writeBps, readIOPS, writeIOPS []string
}

// addResourceFlags defines the flags; the memory limit's is memFlag
// (--memory, or --memory-limit where --memory is the guest's memory).
func addResourceFlags(f *pflag.FlagSet, memFlag string) *resourceFlags {
	r := &resourceFlags{fs: f, memFlag: memFlag}
	f.Float64Var(&r.cpus, "cpus", 0, "CPU time cap in CPUs, e.g. 0.5 (at least 0.01)")
	f.Uint64Var(&r.cpuWeight, "cpu-weight", 0, "share of contended CPU, 1-10000 (default 100)")
	f.StringVar(&r.cpusetCPUs, "cpuset-cpus", "", "CPUs to run on, e.g. 0-1,3")
	f.StringVar(&r.cpusetMems, "cpuset-mems", "", "memory nodes to allocate on, e.g. 0")
	f.StringVar(&r.memory, memFlag, "", "hard memory limit, e.g. 512Mi")
	f.StringVar(&r.memoryLow, "memory-low", "", "memory protected from reclaim, e.g. 256Mi")
	f.StringVar(&r.swap, "swap", "", "swap on top of the memory limit, e.g. 1Gi (-1: unlimited)")
	f.Int64Var(&r.pids, "pids", 0, "cap on processes and threads")
	f.Uint64Var(&r.ioWeight, "io-weight", 0, "share of contended block IO, 1-10000")
	f.StringArrayVar(&r.readBps, "io-read-bps", nil, "read throttle of a host block device, DEV=RATE, e.g. /dev/vda=10Mi (repeatable)")
	f.StringArrayVar(&r.writeBps, "io-write-bps", nil, "write throttle in bytes/s, DEV=RATE (repeatable)")
	f.StringArrayVar(&r.readIOPS, "io-read-iops", nil, "read throttle in operations/s, DEV=N (repeatable)")
	f.StringArrayVar(&r.writeIOPS, "io-write-iops", nil, "write throttle in operations/s, DEV=N (repeatable)")
	return r
}

// build returns the limits the flags give, nil when none was given.
func (r *resourceFlags) build() (*apiv1.Resources, error) {
	p := &apiv1.Resources{}
	set := false
	changed := func(name string) bool {
		c := r.fs.Changed(name)
		set = set || c
		return c
	}
	if changed("cpus") {
		p.Cpus = &r.cpus
	}
	if changed("cpu-weight") {
		p.CpuWeight = &r.cpuWeight
	}
	if changed("cpuset-cpus") {
		p.CpusetCpus = &r.cpusetCPUs
	}
	if changed("cpuset-mems") {
		p.CpusetMems = &r.cpusetMems
	}
	for name, dst := range map[string]**int64{r.memFlag: &p.MemoryBytes, "memory-low": &p.MemoryLowBytes, "swap": &p.SwapBytes} {
		if !changed(name) {
			continue
		}
		v, err := parseBytes(name, r.fs.Lookup(name).Value.String())
		if err != nil {
			return nil, err
		}
		*dst = &v
	}
	if changed("pids") {
		p.Pids = &r.pids
	}
	if changed("io-weight") {
		p.IoWeight = &r.ioWeight
	}
	devs := map[string]*apiv1.DeviceIOLimit{}
	for name, vals := range map[string][]string{"io-read-bps": r.readBps, "io-write-bps": r.writeBps, "io-read-iops": r.readIOPS, "io-write-iops": r.writeIOPS} {
		for _, v := range vals {
			set = true
			dev, rate, ok := strings.Cut(v, "=")
			if !ok || dev == "" {
				return nil, fmt.Errorf("--%s %q: want DEV=RATE, e.g. /dev/vda=10Mi", name, v)
			}
			n, err := parseRate(name, rate)
			if err != nil {
				return nil, err
			}
			d := devs[dev]
			if d == nil {
				d = &apiv1.DeviceIOLimit{Device: dev}
				devs[dev] = d
			}
			switch name {
			case "io-read-bps":
				d.ReadBps = n
			case "io-write-bps":
				d.WriteBps = n
			case "io-read-iops":
				d.ReadIops = n
			case "io-write-iops":
				d.WriteIops = n
			}
		}
	}
	names := make([]string, 0, len(devs))
	for dev := range devs {
		names = append(names, dev)
	}
	sort.Strings(names)
	for _, dev := range names {
		p.Io = append(p.Io, devs[dev])
	}
	if !set {
		return nil, nil
	}
	return p, nil
}

// parseBytes reads a size: bytes, or a Kubernetes quantity (512Mi, 1G);
// -1 where it means unlimited.
func parseBytes(flag, s string) (int64, error) {
	if s == "-1" {
		return -1, nil
	}
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("--%s %q: want bytes or a quantity such as 512Mi", flag, s)
	}
	v, ok := q.AsInt64()
	if !ok {
		return 0, fmt.Errorf("--%s %q: not a whole number of bytes", flag, s)
	}
	return v, nil
}

// parseRate reads a rate: a number, or a quantity (10Mi).
func parseRate(flag, s string) (uint64, error) {
	v, err := parseBytes(flag, s)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("--%s %q: want a rate such as 10Mi or 100 (0: no limit)", flag, s)
	}
	return uint64(v), nil
}

// qosFlags are the --disk-qos flags: [DISK:]read-bps=R,write-bps=R,
// read-iops=N,write-iops=N.
type qosFlags struct{ vals []string }

func addQoSFlags(f *pflag.FlagSet, diskOptional bool) *qosFlags {
	q := &qosFlags{}
	usage := "a disk's throttles in QEMU, DISK:read-bps=R,write-bps=R,read-iops=N,write-iops=N (0: no limit; repeatable)"
	if diskOptional {
		usage = "the disk's throttles in QEMU, read-bps=R,write-bps=R,read-iops=N,write-iops=N (0: no limit)"
	}
	f.StringArrayVar(&q.vals, "disk-qos", nil, usage)
	return q
}

// build returns the QoS per disk ID; a value without DISK: goes to def.
func (q *qosFlags) build(def string) (map[string]*apiv1.DiskQoS, error) {
	out := map[string]*apiv1.DiskQoS{}
	for _, v := range q.vals {
		disk, spec := def, v
		if d, rest, ok := strings.Cut(v, ":"); ok {
			disk, spec = d, rest
		}
		if disk == "" {
			return nil, fmt.Errorf("--disk-qos %q: want DISK:read-bps=R,...", v)
		}
		qos := out[disk]
		if qos == nil {
			qos = &apiv1.DiskQoS{}
			out[disk] = qos
		}
		for _, kv := range strings.Split(spec, ",") {
			k, val, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("--disk-qos %q: want read-bps=R,write-bps=R,read-iops=N,write-iops=N", v)
			}
			n, err := parseRate("disk-qos", val)
			if err != nil {
				return nil, err
			}
			switch k {
			case "read-bps":
				qos.ReadBps = n
			case "write-bps":
				qos.WriteBps = n
			case "read-iops":
				qos.ReadIops = n
			case "write-iops":
				qos.WriteIops = n
			default:
				return nil, fmt.Errorf("--disk-qos %q: unknown %q (read-bps, write-bps, read-iops, write-iops)", v, k)
			}
		}
	}
	return out, nil
}

// printStats writes a cgroup's accounting as two short tables.
func printStats(w io.Writer, s *apiv1.ResourceStats) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	limit := func(v uint64, unit func(uint64) string) string {
		if v == 0 {
			return "none"
		}
		return unit(v)
	}
	fmt.Fprintf(tw, "CGROUP\t%s\n", s.GetCgroup())
	fmt.Fprintf(tw, "CPU\t%s used, throttled %d of %d periods (%s)\n", time.Duration(s.GetCpuUsageNs()).Round(time.Millisecond),
		s.GetCpuThrottledPeriods(), s.GetCpuPeriods(), time.Duration(s.GetCpuThrottledNs()).Round(time.Millisecond))
	fmt.Fprintf(tw, "MEMORY\t%s used, %s max, limit %s, %d OOM kills\n", mib(s.GetMemoryBytes()), mib(s.GetMemoryMaxBytes()),
		limit(s.GetMemoryLimitBytes(), mib), s.GetOomKills())
	fmt.Fprintf(tw, "PIDS\t%d, limit %s\n", s.GetPids(), limit(s.GetPidsLimit(), func(v uint64) string { return strconv.FormatUint(v, 10) }))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.GetIo()) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tREAD\tWRITTEN\tREAD OPS\tWRITE OPS")
	for _, d := range s.GetIo() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", d.GetDevice(), mib(d.GetReadBytes()), mib(d.GetWriteBytes()), d.GetReadOps(), d.GetWriteOps())
	}
	return tw.Flush()
}

func mib(b uint64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }
