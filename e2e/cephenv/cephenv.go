// Package cephenv starts what the storage benchmark and demo need: a Ceph
// cluster through e2e/ceph/up.sh, and csi-ceph in front of it.
package cephenv

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Cluster is a running test cluster.
type Cluster struct {
	Dir       string
	ClusterID string
	Monitors  []string
	AdminKey  string
}

// Up starts a cluster in dir (run from the repository root).
func Up(dir string) (*Cluster, error) {
	if out, err := exec.Command("e2e/ceph/up.sh", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ceph up: %v: %s", err, out)
	}
	c := &Cluster{Dir: dir}
	var clusters []struct {
		ClusterID string   `json:"clusterID"`
		Monitors  []string `json:"monitors"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "cluster.json"))
	if err == nil {
		err = json.Unmarshal(b, &clusters)
	}
	if err != nil || len(clusters) != 1 {
		c.Down()
		return nil, fmt.Errorf("read cluster.json: %v", err)
	}
	c.ClusterID, c.Monitors = clusters[0].ClusterID, clusters[0].Monitors
	kb, err := os.ReadFile(filepath.Join(dir, "ceph.client.admin.keyring"))
	if err != nil {
		c.Down()
		return nil, err
	}
	for _, l := range strings.Split(string(kb), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok && strings.TrimSpace(k) == "key" {
			c.AdminKey = strings.TrimSpace(v)
		}
	}
	return c, nil
}

// Down stops the cluster and removes its directory.
func (c *Cluster) Down() { _ = exec.Command("e2e/ceph/down.sh", c.Dir).Run() }

// Secrets are the CSI secrets of client.admin.
func (c *Cluster) Secrets() map[string]string {
	return map[string]string{"userID": "admin", "userKey": c.AdminKey}
}

// Params are StorageClass parameters for pool of c.
func (c *Cluster) Params(pool string) map[string]string {
	return map[string]string{"clusterID": c.ClusterID, "pool": pool}
}

// Ext4 is a single-node-writer ext4 volume capability.
var Ext4 = &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}

// Driver is a running csi-ceph in mode all.
type Driver struct {
	Conn       *grpc.ClientConn
	Controller csi.ControllerClient
	Node       csi.NodeClient
	cmd        *exec.Cmd
}

// StartDriver runs bin/csi-ceph against c with its socket and state in dir.
func StartDriver(bin, dir string, c *Cluster) (*Driver, error) {
	sock := filepath.Join(dir, "csi.sock")
	cmd := exec.Command(filepath.Join(bin, "csi-ceph"), "--endpoint", "unix://"+sock, "--nodeid", "demo-node", "--mode", "all",
		"--cluster-config", filepath.Join(c.Dir, "cluster.json"), "--state-dir", filepath.Join(dir, "state"), "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &Driver{cmd: cmd}
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
func (d *Driver) Stop() {
	if d.Conn != nil {
		d.Conn.Close()
	}
	_ = d.cmd.Process.Kill()
	_ = d.cmd.Wait()
}
