package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ceph/go-ceph/cephfs/admin"
	"github.com/ceph/go-ceph/rados"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nodeinfra/nodeinfra/e2e/bench/latency"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// runCephFS measures csi-ceph --type cephfs against the bare steps:
// CreateVolume against a go-ceph CreateSubVolume (same group, same
// quota), NodeStage + NodePublish against ceph-fuse -r on the same kind
// of subvolume and a bind mount.
func runCephFS(bin, tmp string, cl *testutil.CephCluster, seq, conc int) error {
	const size = 64 << 20
	const fsName, group = "cephfs", "csi" // the driver's default group
	drv, err := testutil.StartCSICephFS(bin, filepath.Join(tmp, "cephfs"), cl)
	if err != nil {
		return err
	}
	defer drv.Stop()
	ctrl, node := drv.Controller, drv.Node
	secrets, params, capab := cl.Secrets(), cl.FSParams(), testutil.CSIShared

	rc, err := rados.NewConnWithUser("admin")
	if err != nil {
		return err
	}
	_ = rc.SetConfigOption("mon_host", strings.Join(cl.Monitors, ","))
	_ = rc.SetConfigOption("key", cl.AdminKey)
	if err := rc.Connect(); err != nil {
		return err
	}
	defer rc.Shutdown()
	fsa := admin.NewFromConn(rc)
	if err := fsa.CreateSubVolumeGroup(fsName, group, nil); err != nil {
		return err
	}
	confDir := filepath.Join(tmp, "cephfs-bare")
	if err := os.MkdirAll(confDir, 0o700); err != nil {
		return err
	}
	kr := filepath.Join(confDir, "keyring")
	_ = os.WriteFile(kr, []byte("[client.admin]\n\tkey = "+cl.AdminKey+"\n"), 0o600)
	conf := filepath.Join(confDir, "ceph.conf")
	_ = os.WriteFile(conf, []byte("[global]\nmon host = "+strings.Join(cl.Monitors, ",")+"\nkeyring = "+kr+"\nadmin socket =\n"), 0o600)

	ctx := context.Background()
	ours := func(tag string, i int, s *sample, mu *sync.Mutex) (func(), error) {
		name := fmt.Sprintf("fsbench-%s-%d", tag, i)
		t0 := time.Now()
		resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
			VolumeCapabilities: []*csi.VolumeCapability{capab}, Parameters: params, Secrets: secrets})
		if err != nil {
			return nil, err
		}
		t1 := time.Now()
		vol := resp.GetVolume()
		id := vol.GetVolumeId()
		stage, target := filepath.Join(tmp, "fs", name), filepath.Join(tmp, "ft", name)
		if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: stage, VolumeCapability: capab,
			VolumeContext: vol.GetVolumeContext(), Secrets: secrets}); err != nil {
			return nil, err
		}
		if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: stage, TargetPath: target,
			VolumeCapability: capab, VolumeContext: vol.GetVolumeContext()}); err != nil {
			return nil, err
		}
		t2 := time.Now()
		mu.Lock()
		s.create = append(s.create, t1.Sub(t0))
		s.stage = append(s.stage, t2.Sub(t1))
		mu.Unlock()
		return func() {
			_, _ = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
			_, _ = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: stage})
			_, _ = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets})
		}, nil
	}
	bare := func(tag string, i int, s *sample, mu *sync.Mutex) (func(), error) {
		sub := fmt.Sprintf("bare-%s-%d", tag, i)
		t0 := time.Now()
		if err := fsa.CreateSubVolume(fsName, group, sub, &admin.SubVolumeOptions{Size: size}); err != nil {
			return nil, err
		}
		t1 := time.Now()
		path, err := fsa.SubVolumePath(fsName, group, sub) // the driver has it from CreateVolume
		if err != nil {
			return nil, err
		}
		stage, target := filepath.Join(tmp, "bfs", sub), filepath.Join(tmp, "bft", sub)
		t2 := time.Now()
		for _, d := range []string{stage, target} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return nil, err
			}
		}
		if err := sh("ceph-fuse", stage, "-c", conf, "--id", "admin", "-r", path, "--client_fs="+fsName); err != nil {
			return nil, err
		}
		if err := sh("mount", "--bind", stage, target); err != nil {
			return nil, err
		}
		t3 := time.Now()
		mu.Lock()
		s.create = append(s.create, t1.Sub(t0))
		s.stage = append(s.stage, t3.Sub(t2))
		mu.Unlock()
		return func() {
			_ = sh("umount", target)
			_ = sh("umount", stage)
			_ = fsa.ForceRemoveSubVolume(fsName, group, sub)
		}, nil
	}
	cs := []contestant{{"csi-ceph --type cephfs (gRPC, ceph-fuse)", ours}, {"bare steps (go-ceph CreateSubVolume; ceph-fuse -r, bind mount)", bare}}
	// The mgr purges removed subvolumes in the background: let it finish
	// before the next contestant runs.
	settle := func() { time.Sleep(15 * time.Second) }
	results, err := measure(cs, seq, conc, settle)
	if err != nil {
		return err
	}
	fmt.Printf("\nCephFS: CreateVolume and NodeStage+NodePublish of 64 MiB subvolumes, measured %s on %s\n\n", time.Now().UTC().Format("2006-01-02"), hostname())
	table(results, cs)
	fmt.Println("\nTargets: create ≤ 1.5× the bare go-ceph create, stage+publish ≤ 1.2× the bare steps.")
	return nil
}

// table prints the results of measure as markdown, with the ratio of the
// first contestant to the second.
func table(results map[string]map[string]*sample, cs []contestant) {
	fmt.Println("| scenario | path | create p50 | create p99 | stage+publish p50 | stage+publish p99 |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, sc := range scenarioNames(results) {
		for _, c := range cs {
			s := results[sc][c.name]
			fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", sc, c.name, latency.Ms(latency.Percentile(s.create, .5)), latency.Ms(latency.Percentile(s.create, .99)), latency.Ms(latency.Percentile(s.stage, .5)), latency.Ms(latency.Percentile(s.stage, .99)))
		}
		o, b := results[sc][cs[0].name], results[sc][cs[1].name]
		r := func(x, y time.Duration) string { return fmt.Sprintf("%.2f×", float64(x)/float64(y)) }
		fmt.Printf("| %s | ratio | %s | %s | %s | %s |\n", sc, r(latency.Percentile(o.create, .5), latency.Percentile(b.create, .5)), r(latency.Percentile(o.create, .99), latency.Percentile(b.create, .99)),
			r(latency.Percentile(o.stage, .5), latency.Percentile(b.stage, .5)), r(latency.Percentile(o.stage, .99), latency.Percentile(b.stage, .99)))
	}
}
