// Command storage is the storage part of `make demo` (csidemo): a Ceph
// cluster on this machine, csi-ceph in front of it, a database volume
// that keeps its data across unstage and restage and comes back from a
// snapshot, and a CephFS volume two pods share until its quota stops a
// write (cephfs.go).
//
//	go run ./e2e/demo/storage --bin DIR
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

func main() {
	bin := flag.String("bin", "bin", "directory with csi-ceph")
	flag.StringVar(&cephDir, "ceph-dir", "", "a running cluster of e2e/setup/ceph-up.sh to use (default: start one)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "csidemo: run as root (it mounts volumes)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin); err != nil {
		fmt.Fprintln(os.Stderr, "✘ csidemo:", err)
		os.Exit(1)
	}
}

// cephDir is a running cluster to use instead of starting one.
var cephDir string

func step(format string, a ...any) { fmt.Printf("\n== "+format+"\n", a...) }

func run(ctx context.Context, bin string) error {
	tmp, err := os.MkdirTemp("", "nodeinfra-csidemo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cdir := filepath.Join(tmp, "ceph")
	step("A single-node Ceph cluster on 127.0.0.1 (e2e/setup/ceph-up.sh)")
	start := time.Now()
	var cl *testutil.CephCluster
	if cephDir != "" {
		c, err := testutil.LoadCeph(cephDir)
		if err != nil {
			return err
		}
		cl = &c
	} else {
		if cl, err = testutil.StartCeph(cdir); err != nil {
			return err
		}
		defer cl.Stop()
	}
	fmt.Printf("  up and healthy in %.1fs\n", time.Since(start).Seconds())

	step("csi-ceph in mode all (controller and node), as the DaemonSet and Deployment run it")
	drv, err := testutil.StartCSICeph(bin, tmp, cl)
	if err != nil {
		return err
	}
	defer drv.Stop()
	ctrl, node := drv.Controller, drv.Node
	secrets, params, fs := cl.Secrets(), cl.Params("rbd"), testutil.CSIExt4

	create := func(name string, src *csi.VolumeContentSource) (string, error) {
		r, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 256 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{fs}, Parameters: params, Secrets: secrets, VolumeContentSource: src})
		if err != nil {
			return "", err
		}
		fmt.Printf("  CreateVolume %s -> %s (%d MiB)\n", name, r.GetVolume().GetVolumeId(), r.GetVolume().GetCapacityBytes()>>20)
		return r.GetVolume().GetVolumeId(), nil
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	mount := func(id, tag string) (string, func(), error) {
		stage, target := filepath.Join(tmp, "stage-"+tag), filepath.Join(tmp, "pod-"+tag)
		if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: stage, VolumeCapability: fs, Secrets: secrets}); err != nil {
			return "", nil, err
		}
		if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: stage, TargetPath: target, VolumeCapability: fs}); err != nil {
			return "", nil, err
		}
		out, _ := exec.Command("findmnt", "-n", "-o", "SOURCE,FSTYPE,SIZE", "--target", target).Output()
		fmt.Printf("  staged and published at %s: %s\n", target, strings.TrimSpace(string(out)))
		done := false
		return target, func() {
			if done {
				return
			}
			done = true
			_, _ = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
			_, _ = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: stage})
		}, nil
	}

	step("A database volume: create, stage, publish, write")
	db, err := create("demo-db", nil)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { _, _ = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: db, Secrets: secrets}) })
	target, release, err := mount(db, "1")
	if err != nil {
		return err
	}
	rows := "1,alice,eu-west\n2,bob,us-east\n3,carol,ap-south\n"
	if err := os.WriteFile(filepath.Join(target, "customers.csv"), []byte(rows), 0o644); err != nil {
		return err
	}
	fmt.Printf("  wrote 3 rows to customers.csv\n")
	release()
	fmt.Println("  unpublished and unstaged (map, loop device and rbd-fuse released)")

	step("The pod moves: stage again at other paths and read")
	target, release, err = mount(db, "2")
	if err != nil {
		return err
	}
	cleanups = append(cleanups, release)
	got, err := os.ReadFile(filepath.Join(target, "customers.csv"))
	if err != nil || string(got) != rows {
		return fmt.Errorf("read back %q: %v", got, err)
	}
	fmt.Printf("  ✔ customers.csv has the 3 rows\n")

	step("Snapshot, then restore it into a new volume")
	snap, err := ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "demo-db-snap", SourceVolumeId: db, Secrets: secrets})
	if err != nil {
		return err
	}
	sid := snap.GetSnapshot().GetSnapshotId()
	fmt.Printf("  CreateSnapshot -> %s\n", sid)
	cleanups = append(cleanups, func() { _, _ = ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: sid, Secrets: secrets}) })
	_ = os.WriteFile(filepath.Join(target, "customers.csv"), []byte(rows+"4,dave,sa-east\n"), 0o644)
	fmt.Println("  then a 4th row went into the live volume")
	restored, err := create("demo-db-restored", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: sid}}})
	if err != nil {
		return err
	}
	cleanups = append(cleanups, func() { _, _ = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: restored, Secrets: secrets}) })
	rt, rrelease, err := mount(restored, "3")
	if err != nil {
		return err
	}
	cleanups = append(cleanups, rrelease)
	got, err = os.ReadFile(filepath.Join(rt, "customers.csv"))
	if err != nil || string(got) != rows {
		return fmt.Errorf("restored %q: %v", got, err)
	}
	fmt.Println("  ✔ the restored volume has the 3 rows of the snapshot, not the 4th")
	if err := runCephFS(ctx, bin, tmp, cl); err != nil {
		return fmt.Errorf("cephfs: %w", err)
	}
	step("Teardown: unpublish, unstage, delete snapshot and volumes, stop Ceph")
	return nil
}
