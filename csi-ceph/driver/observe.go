package driver

// What the driver tells package metrics (--metrics-addr): how long each
// Ceph-side operation took (timeOp, around the calls into rbd, cephfs and
// mapper, which know nothing of metrics), and, on a node, which volumes
// are staged how and in what condition. The staged volumes are counted
// at scrape time from the staging records, their condition from what the
// calls that look at a volume (stage, publish, expand, stats, health)
// last found (conditions): a scrape reads files in the state dir only,
// never a mount that may hang on a dead FUSE daemon, and never Ceph.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/metrics"
)

// opObserver is told how each Ceph-side operation went; op is one of
// metrics.Operations.
type opObserver interface {
	Operation(op string, took time.Duration, err error)
}

var _ opObserver = (*metrics.Metrics)(nil)

// timeOp starts timing operation op for o (nil: nobody listens); call
// the function it returns with the operation's result.
func timeOp(o opObserver, op string) func(error) {
	if o == nil {
		return func(error) {}
	}
	start := time.Now()
	return func(err error) { o.Operation(op, time.Since(start), err) }
}

// Labels of the mappers in csi_ceph_mapped_volumes: the program (or
// kernel client) that serves the volume.
var (
	rbdMapperLabels = map[string]string{mapper.KRBD: "krbd", mapper.RBDNBD: "rbd-nbd", mapper.Fuse: "rbd-fuse"}
	fsMapperLabels  = map[string]string{mapper.CephFSKernel: "kernel", mapper.CephFSFuse: "ceph-fuse"}
)

func labelValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// newMetrics makes the driver's metrics when cfg asks for them (nil
// otherwise); list, nil on a controller, lists the node's staged
// volumes with their mapper in labels' terms.
func newMetrics(cfg Config, driverName string, labels map[string]string, list func() ([]metrics.Volume, error)) *metrics.Metrics {
	if cfg.MetricsAddr == "" {
		return nil
	}
	mc := metrics.Config{Driver: driverName, Type: cfg.Type, Version: cfg.Version}
	if list != nil {
		mc.Mappers, mc.Volumes = labelValues(labels), list
	}
	return metrics.New(mc)
}

// metricsListenAddr is --metrics-addr as net.Listen takes it. An IPv6
// host may come unbracketed: "$(NODE_IP):9844" on an IPv6 node.
func metricsListenAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		i := strings.LastIndex(addr, ":")
		if i < 0 || net.ParseIP(addr[:i]) == nil {
			return "", fmt.Errorf("--metrics-addr %q: want HOST:PORT or :PORT (empty: no metrics)", addr)
		}
		host, port = addr[:i], addr[i+1:]
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("--metrics-addr %q: port %q is not a number", addr, port)
	}
	return net.JoinHostPort(host, port), nil
}

// conditions remembers whether each staged volume was abnormal when a
// call last looked at it. A nil *conditions remembers nothing (no
// metrics).
type conditions struct {
	mu       sync.Mutex
	abnormal map[string]bool
}

func newConditions() *conditions { return &conditions{abnormal: map[string]bool{}} }

// set records what a call found volumeID to be.
func (c *conditions) set(volumeID string, abnormal bool) {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.abnormal[volumeID] = abnormal
	c.mu.Unlock()
}

// forget drops volumeID (unstaged).
func (c *conditions) forget(volumeID string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.abnormal, volumeID)
	c.mu.Unlock()
}

// count turns staged volumes (ID to mapper label) into metrics' terms
// and forgets the volumes that are no longer staged.
func (c *conditions) count(staged map[string]string) []metrics.Volume {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.abnormal {
		if _, ok := staged[id]; !ok {
			delete(c.abnormal, id)
		}
	}
	out := make([]metrics.Volume, 0, len(staged))
	for id, m := range staged {
		cond := metrics.ConditionUnknown
		if abnormal, known := c.abnormal[id]; known {
			cond = metrics.ConditionNormal
			if abnormal {
				cond = metrics.ConditionAbnormal
			}
		}
		out = append(out, metrics.Volume{Mapper: m, Condition: cond})
	}
	return out
}

// readRecords decodes every staging record in dir into a fresh R and
// passes it to fn; a record being replaced (atomicfile's temporary
// files start with a dot) or one that does not decode is left out.
func readRecords[R any](dir string, fn func(R)) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list staging records: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // removed meanwhile
		}
		var r R
		if json.Unmarshal(b, &r) == nil {
			fn(r)
		}
	}
	return nil
}

// stagedVolumes lists the RBD node's staged volumes for a scrape.
func (d *Driver) stagedVolumes() ([]metrics.Volume, error) {
	byID := map[string]string{}
	err := readRecords(filepath.Join(d.node.stateDir, "staged"), func(s staged) {
		byID[s.VolumeID] = mapperLabel(rbdMapperLabels, s.Mapping.Mapper)
	})
	if err != nil {
		return nil, err
	}
	return d.conds.count(byID), nil
}

// stagedVolumes lists the CephFS node's staged volumes for a scrape.
func (d *FSDriver) stagedVolumes() ([]metrics.Volume, error) {
	byID := map[string]string{}
	err := readRecords(filepath.Join(d.node.stateDir, "cephfs", "staged"), func(s fsStaged) {
		byID[s.VolumeID] = mapperLabel(fsMapperLabels, s.Mount.Mounter)
	})
	if err != nil {
		return nil, err
	}
	return d.conds.count(byID), nil
}

func mapperLabel(labels map[string]string, m string) string {
	if l, ok := labels[m]; ok {
		return l
	}
	return metrics.MapperOther
}
