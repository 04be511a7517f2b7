package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// CSIExt4 is a single-node-writer ext4 volume capability.
var CSIExt4 = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}

// CSICeph is a running csi-ceph in mode all.
type CSICeph struct {
	Conn       *grpc.ClientConn
	Controller csi.ControllerClient
	Node       csi.NodeClient
	cmd        *exec.Cmd
}

// StartCSICeph runs bin/csi-ceph against c with its socket and state in
// dir, extra flags after the driver's own, its log on stderr.
func StartCSICeph(bin, dir string, c *CephCluster, extra ...string) (*CSICeph, error) {
	sock := filepath.Join(dir, "csi.sock")
	// --mapper-cgroup= keeps rbd-fuse in the driver's own cgroup: a
	// program's short-lived driver needs no cgroup of its own on the host.
	args := append([]string{"--endpoint", "unix://" + sock, "--nodeid", "demo-node", "--mode", "all",
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
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.Stop()
		return nil, err
	}
	d.Conn, d.Controller, d.Node = conn, csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	return d, nil
}

// Stop ends the driver.
func (d *CSICeph) Stop() {
	if d.Conn != nil {
		d.Conn.Close()
	}
	_ = d.cmd.Process.Kill()
	_ = d.cmd.Wait()
}
