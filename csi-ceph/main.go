// Command csi-ceph is a CSI driver for Ceph RBD (block and filesystem
// volumes) and, with --type cephfs, for CephFS subvolumes (shared
// filesystems): the identity, controller (volumes, snapshots, clones,
// expansion, capacity) and node (stage, publish, stats, expansion)
// services in one binary, --mode choosing which of them it serves, and
// with --metrics-addr its Prometheus metrics (package metrics). main only
// reads the flags into a driver.Config and runs the driver until SIGINT
// or SIGTERM; the work is in package driver.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/nodeinfra/nodeinfra/csi-ceph/driver"
	"github.com/nodeinfra/nodeinfra/pkg/logging"
	"github.com/nodeinfra/nodeinfra/pkg/version"
)

func main() {
	cfg := driver.Config{Version: version.Version}
	var level string
	flag.StringVar(&cfg.Endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix socket)")
	flag.StringVar(&cfg.NodeID, "nodeid", "", "this node's name (node mode)")
	flag.StringVar(&cfg.Type, "type", driver.TypeRBD, "driver type: rbd ("+driver.Name+") or cephfs ("+driver.FSName+")")
	flag.StringVar(&cfg.Mode, "mode", "all", "all, controller or node")
	flag.StringVar(&cfg.ClusterConfig, "cluster-config", "/etc/csi-ceph/config.json", "clusters, in ceph-csi's config.json shape")
	flag.StringVar(&cfg.CredentialsDir, "credentials-dir", "", "optional <clusterID>/userID and userKey files for calls without secrets (ListVolumes, GetCapacity)")
	flag.StringVar(&cfg.StateDir, "state-dir", "/var/lib/csi-ceph", "node: staging records and mapping work dirs")
	flag.Int64Var(&cfg.MaxVolumesPerNode, "max-volumes-per-node", 0, "node: volumes the node may hold (0: no limit)")
	flag.StringVar(&cfg.MapperCgroup, "mapper-cgroup", "/csi-ceph-mappers", "node: cgroup (in every hierarchy) the rbd-nbd, rbd-fuse and ceph-fuse daemons run in, outside the plugin's container; \"\": the plugin's own")
	flag.DurationVar(&cfg.CloneWait, "clone-wait", 5*time.Second, "cephfs controller: how long CreateVolume from a snapshot or volume waits for the clone before answering Aborted")
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "HOST:PORT or :PORT of the Prometheus /metrics endpoint (empty: none)")
	flag.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	flag.Parse()
	lvl, err := logging.ParseLevel(level)
	if err != nil {
		fmt.Fprintln(os.Stderr, "csi-ceph:", err)
		os.Exit(2)
	}
	log := logging.NewJSON(os.Stderr, lvl)
	slog.SetDefault(log) // what a call's context lacks a logger falls back to
	// mount-utils logs through klog: send it to the same JSON log.
	klog.SetSlogLogger(log.With("source", "mount-utils"))
	var d interface{ Run(context.Context) error }
	if cfg.Type == driver.TypeCephFS {
		d, err = driver.NewCephFS(cfg, log)
	} else {
		d, err = driver.New(cfg, log)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "csi-ceph:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := d.Run(ctx); err != nil {
		log.Error("csi-ceph stopped", "error", err)
		os.Exit(1)
	}
}
