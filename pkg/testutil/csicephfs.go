package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// CSIShared is a mount capability that many writers on many nodes share:
// what a CephFS volume serves.
var CSIShared = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}

// FSParams are StorageClass parameters of the CephFS driver for the
// cluster's file system "cephfs" (ceph-up.sh makes it).
func (c *CephCluster) FSParams() map[string]string {
	return map[string]string{"clusterID": c.ClusterID, "fsName": "cephfs"}
}

// StartCSICephFS runs bin/csi-ceph --type cephfs in mode all against c
// with its socket and state in dir (volumes in the subvolume group
// "csi"), extra flags after the driver's own, its log on stderr.
func StartCSICephFS(bin, dir string, c *CephCluster, extra ...string) (*CSICeph, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "csi.sock")
	args := append([]string{"--type", "cephfs", "--endpoint", "unix://" + sock, "--nodeid", "demo-node", "--mode", "all",
		"--cluster-config", filepath.Join(c.Dir, "cluster.json"), "--state-dir", filepath.Join(dir, "state"), "--log-level", "warn",
		"--mapper-cgroup="}, extra...)
	cmd := exec.Command(filepath.Join(bin, "csi-ceph"), args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &CSICeph{cmd: cmd}
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(sock); err != nil {
		d.Stop()
		return nil, fmt.Errorf("csi-ceph --type cephfs did not listen on %s", sock)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.Stop()
		return nil, err
	}
	d.Conn, d.Controller, d.Node = conn, csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	return d, nil
}
