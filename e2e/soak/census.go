package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"
)

// count is one resource the node holds, with how it is judged.
type count struct {
	Name string
	N    int
	Err  error
	// Tolerance is the growth accepted, and Why says why it is inherent.
	Tolerance int
	Why       string
	// Unjudged says why a count is shown but not judged: machine-wide
	// (other people's runs share this machine), or noisy by nature.
	Unjudged string
}

// Tolerances, each inherent to what is counted (printed under the table).
const (
	// The Go runtime starts an OS thread whenever every thread is blocked
	// (a syscall, a thread locked into a namespace by netns.Do) and never
	// gives threads back: a high-water mark, not a leak per cycle.
	threadTolerance = 3
	threadWhy       = "Go runtime threads are a high-water mark (never returned)"
	// gRPC and net/http keep a few goroutines per live connection and
	// timers that come and go; a leak per cycle shows as hundreds.
	goroutineTolerance = 2
	goroutineWhy       = "transient gRPC/HTTP goroutines"
)

// census counts everything once.
func (e *env) census() []count {
	var out []count
	add := func(name string, n int, err error) { out = append(out, count{Name: name, N: n, Err: err}) }
	tol := func(name string, n int, err error, t int, why string) {
		out = append(out, count{Name: name, N: n, Err: err, Tolerance: t, Why: why})
	}
	info := func(name string, n int, err error) {
		out = append(out, count{Name: name, N: n, Err: err, Unjudged: "machine-wide"})
	}

	links, err := fabric.Links(e.fab.Node)
	add("links in the node netns", len(links), err)
	pod := podNetState(e.allPods())
	add(fmt.Sprintf("links in the %d pod netns", len(e.allPods())), pod.links, pod.err)
	add("taps in the pod netns", pod.taps, pod.err)
	add("qdiscs in the pod netns", pod.qdiscs, pod.err)
	add("tc ingress filters in the pod netns", pod.filters, pod.err)

	// memory, cpu and pids (the sandbox's limits) one row each; the other
	// hierarchies in one.
	var others []string
	var nOthers int
	var errOthers error
	for _, h := range cgroupHierarchies() {
		n, err := countCgroups(filepath.Join(h.dir, e.cgroupParent))
		switch h.name {
		case "memory", "cpu", "pids", "cpu,cpuacct", "v2":
			add(fmt.Sprintf("cgroups under %s (%s)", e.cgroupParent, h.name), n, err)
		default:
			others = append(others, h.name)
			nOthers += n
			errOthers = errors.Join(errOthers, err)
		}
	}
	if len(others) > 0 {
		add(fmt.Sprintf("cgroups under %s (%s)", e.cgroupParent, strings.Join(others, ", ")), nOthers, errOthers)
	}

	apid := e.agentPid()
	n, err := fdCount(apid)
	add("agent open fds", n, err)
	n, err = threadCount(apid)
	tol("agent threads", n, err, threadTolerance, threadWhy)
	m, err := e.agentMetrics()
	tol("agent goroutines (go_goroutines)", int(m["go_goroutines"]), err, goroutineTolerance, goroutineWhy)
	out = append(out, count{Name: "agent Go heap in use, KiB (go_memstats_heap_inuse_bytes)",
		N: int(m["go_memstats_heap_inuse_bytes"] / 1024), Err: err, Unjudged: "moves with GC timing"})
	cpid := e.csiPid()
	n, err = fdCount(cpid)
	add("csi-ceph open fds", n, err)
	n, err = threadCount(cpid)
	tol("csi-ceph threads", n, err, threadTolerance, threadWhy)

	procs := fabric.Processes()
	add("rbd-fuse processes (this run)", countProcs(procs, func(p fabric.Process) bool { return isFuseOf(p, e.dir) }), nil)
	add("QEMU processes (this run's sandboxes)", countProcs(procs, func(p fabric.Process) bool { return isSandbox(p, e.tag) }), nil)
	info("QEMU processes (machine)", countProcs(procs, func(p fabric.Process) bool { return strings.HasPrefix(p.Name(), "qemu-system") }), nil)

	ours, all, err := loopDevices(e.dir)
	add("loop devices on this run's files", ours, err)
	info("loop devices in use (machine)", all, err)
	ours, all, err = mountCount(e.dir)
	add("mounts under this run's dir", ours, err)
	info("mounts (machine, /proc/self/mountinfo)", all, err)

	n, size, err := countFiles(e.agentState)
	add("agent state files", n, err)
	// Records that pile up inside one file (enis.json) show in its size.
	add("agent state bytes", int(size), err)
	n, size, err = countFiles(e.csiState)
	add("csi-ceph state files", n, err)
	add("csi-ceph state bytes", int(size), err)
	n, _, err = countFiles(e.cniCache)
	add("libcni result cache files", n, err)
	return out
}

// sampleCensus takes the census k times, interval apart, and keeps each
// resource's minimum: a goroutine or descriptor that exists only while a
// reconcile or a metrics request runs is not held, a leaked one is there
// every time.
func (e *env) sampleCensus(k int, interval time.Duration) []count {
	var best []count
	for i := 0; i < k; i++ {
		if i > 0 {
			time.Sleep(interval)
		}
		c := e.census()
		if best == nil {
			best = c
			continue
		}
		for j := range best {
			if j >= len(c) || c[j].Name != best[j].Name {
				continue
			}
			switch {
			case c[j].Err != nil:
				best[j].Err = c[j].Err
			case best[j].Err == nil && c[j].N < best[j].N:
				best[j].N = c[j].N
			}
		}
	}
	return best
}

// podState is what the pod namespaces hold.
type podState struct {
	links, taps, qdiscs, filters int
	err                          error
}

func podNetState(pods []*fabric.Pod) podState {
	var st podState
	for _, p := range pods {
		err := p.NS.Do(func(ns.NetNS) error {
			links, err := netlinksafe.LinkList()
			if err != nil {
				return err
			}
			st.links += len(links)
			for _, l := range links {
				if l.Type() == "tuntap" {
					st.taps++
				}
				qs, err := netlinksafe.QdiscList(l)
				if err != nil {
					return err
				}
				st.qdiscs += len(qs)
				for _, q := range qs {
					if q.Attrs().Parent != netlink.HANDLE_INGRESS {
						continue
					}
					fs, err := netlinksafe.FilterList(l, q.Attrs().Handle)
					if err != nil {
						return err
					}
					st.filters += len(fs)
				}
			}
			return nil
		})
		if err != nil && st.err == nil {
			st.err = fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	return st
}

// agentMetrics reads the agent's Go runtime metrics, served inside the
// node namespace: the connection is dialled on the goroutine that Do put
// there (an http.Transport would dial from another one).
func (e *env) agentMetrics() (map[string]float64, error) {
	var body []byte
	err := e.fab.Node.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", metricsAddr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\n\r\n"); err != nil {
			return err
		}
		body, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("agent metrics: %w", err)
	}
	m := map[string]float64{}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes"} {
		v, err := metricValue(body, name)
		if err != nil {
			return nil, err
		}
		m[name] = v
	}
	return m, nil
}

// metricValue finds an unlabelled sample in a Prometheus text exposition.
func metricValue(body []byte, name string) (float64, error) {
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

func fdCount(pid int) (int, error) {
	if pid == 0 {
		return 0, errors.New("not running")
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents), err
}

func threadCount(pid int) (int, error) {
	if pid == 0 {
		return 0, errors.New("not running")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no Threads in /proc/%d/status", pid)
}

// hierarchy is one mounted cgroup hierarchy.
type hierarchy struct{ name, dir string }

// cgroupHierarchies lists the hierarchies under /sys/fs/cgroup once each
// (v1's cpu and cpuacct are symlinks to "cpu,cpuacct"), memory, cpu and
// pids first; on a v2 host, the root itself.
func cgroupHierarchies() []hierarchy {
	const root = "/sys/fs/cgroup"
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return []hierarchy{{"v2", root}}
	}
	ents, _ := os.ReadDir(root)
	seen := map[string]bool{}
	var out []hierarchy
	for _, e := range ents {
		dir := filepath.Join(root, e.Name())
		real, err := filepath.EvalSymlinks(dir)
		if err != nil || seen[real] {
			continue
		}
		if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
			continue
		}
		seen[real] = true
		out = append(out, hierarchy{name: filepath.Base(real), dir: real})
	}
	rank := func(h hierarchy) int {
		for i, p := range []string{"memory", "cpu", "pids"} {
			if strings.HasPrefix(h.name, p) {
				return i
			}
		}
		return 3
	}
	sort.SliceStable(out, func(i, j int) bool { return rank(out[i]) < rank(out[j]) })
	return out
}

// countCgroups counts the cgroups below dir (not dir itself); none when
// dir does not exist.
func countCgroups(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() && p != dir {
			n++
		}
		return nil
	})
	return n, err
}

// countFiles counts the files and directories below dir, and the bytes
// of its regular files.
func countFiles(dir string) (n int, size int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if p == dir {
			return nil
		}
		n++
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
			}
		}
		return nil
	})
	return n, size, err
}

// isSandbox tells a QEMU of one of this run's sandboxes (IDs
// soak-TAG-N) by its -name, as `pgrep -f sandbox-ID` does.
func isSandbox(p fabric.Process, tag string) bool {
	return strings.HasPrefix(p.Flag("-name"), "sandbox-"+sandboxPrefix(tag))
}

// isFuseOf tells an rbd-fuse process that serves a mount under dir.
func isFuseOf(p fabric.Process, dir string) bool { return p.Name() == "rbd-fuse" && p.Mentions(dir) }

// countProcs counts the processes f accepts.
func countProcs(ps []fabric.Process, f func(fabric.Process) bool) int {
	n := 0
	for _, p := range ps {
		if f(p) {
			n++
		}
	}
	return n
}

// loopDevices counts the bound loop devices: those whose backing file is
// under dir, and all of them.
func loopDevices(dir string) (ours, all int, err error) {
	files, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return 0, 0, err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // detached meanwhile
		}
		all++
		if under(dir, strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")) {
			ours++
		}
	}
	return ours, all, nil
}

// loopsUnder lists the loop devices (/dev/loopN) backed by files under dir.
func loopsUnder(dir string) []string {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil && under(dir, strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")) {
			out = append(out, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(f))))
		}
	}
	return out
}

// mount is one line of /proc/self/mountinfo.
type mount struct{ point, fstype string }

func mounts() ([]mount, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountinfo(b), nil
}

// parseMountinfo reads the mount point (field 5) and the filesystem type
// (the first field after " - ") of each line.
func parseMountinfo(b []byte) []mount {
	var out []mount
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		m := mount{point: unescapeMountinfo(f[4])}
		for i := 5; i < len(f)-1; i++ {
			if f[i] == "-" {
				m.fstype = f[i+1]
				break
			}
		}
		out = append(out, m)
	}
	return out
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space,
// \011, \012, \134).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func mountCount(dir string) (ours, all int, err error) {
	ms, err := mounts()
	if err != nil {
		return 0, 0, err
	}
	for _, m := range ms {
		if under(dir, m.point) {
			ours++
		}
	}
	return ours, len(ms), nil
}

// under reports whether path p is dir or below it.
func under(dir, p string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}
