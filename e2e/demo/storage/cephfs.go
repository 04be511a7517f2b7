package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// runCephFS is the CephFS part: a shared volume (a subvolume with an
// 8 MiB quota) staged once with ceph-fuse and published to two pods,
// which read each other's files, until the quota stops a write.
func runCephFS(ctx context.Context, bin, tmp string, cl *testutil.CephCluster) error {
	step("csi-ceph --type cephfs: a shared filesystem for two pods")
	drv, err := testutil.StartCSICephFS(bin, filepath.Join(tmp, "cephfs"), cl)
	if err != nil {
		return err
	}
	defer drv.Stop()
	ctrl, node := drv.Controller, drv.Node
	secrets, shared := cl.Secrets(), testutil.CSIShared
	r, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "demo-shared", CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{shared}, Parameters: cl.FSParams(), Secrets: secrets})
	if err != nil {
		return err
	}
	vol := r.GetVolume()
	defer func() {
		_, _ = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId(), Secrets: secrets})
	}()
	fmt.Printf("  CreateVolume demo-shared -> subvolume %s, quota %d MiB\n", vol.GetVolumeContext()["subvolumeName"], vol.GetCapacityBytes()>>20)

	stage := filepath.Join(tmp, "cephfs", "stage")
	if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: stage,
		VolumeCapability: shared, VolumeContext: vol.GetVolumeContext(), Secrets: secrets}); err != nil {
		return err
	}
	defer func() {
		_, _ = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: stage})
	}()
	out, _ := exec.Command("findmnt", "-n", "-o", "SOURCE,FSTYPE,SIZE", "--target", stage).Output()
	fmt.Printf("  staged once on the node (ceph-fuse): %s\n", strings.TrimSpace(string(out)))
	pods := map[string]string{}
	for _, pod := range []string{"web-a", "web-b"} {
		target := filepath.Join(tmp, "cephfs", "pod-"+pod)
		if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: stage,
			TargetPath: target, VolumeCapability: shared, VolumeContext: vol.GetVolumeContext()}); err != nil {
			return err
		}
		defer func() {
			_, _ = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: target})
		}()
		pods[pod] = target
		fmt.Printf("  published to pod %s at %s (a bind mount)\n", pod, target)
	}
	for pod, target := range pods {
		if err := os.WriteFile(filepath.Join(target, pod+".txt"), []byte("hello from "+pod+"\n"), 0o644); err != nil {
			return err
		}
	}
	for pod, other := range map[string]string{"web-a": "web-b", "web-b": "web-a"} {
		b, err := os.ReadFile(filepath.Join(pods[pod], other+".txt"))
		if err != nil {
			return err
		}
		fmt.Printf("  ✔ %s reads %s.txt: %s", pod, other, b)
	}

	step("The quota: web-a writes 1 MiB blocks until CephFS says no")
	f, err := os.Create(filepath.Join(pods["web-a"], "big.bin"))
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n := 0; n < 64; n++ {
		_, err := f.Write(buf)
		if err == nil {
			err = f.Sync()
		}
		if errors.Is(err, unix.EDQUOT) {
			fmt.Printf("  ✔ after %d MiB: %v (the 8 MiB quota)\n", n, err)
			step("Teardown: unpublish both pods, unstage, delete the subvolume")
			return nil
		}
		if err != nil {
			return err
		}
	}
	return errors.New("64 MiB written into an 8 MiB volume: the quota did not hold")
}
