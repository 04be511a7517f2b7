package driver

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// Cluster is one entry of the cluster config file, which has ceph-csi's
// config.json shape: [{"clusterID": "...", "monitors": ["host:port", ...]}].
// Other ceph-csi fields are accepted and ignored.
type Cluster struct {
	ClusterID string   `json:"clusterID"`
	Monitors  []string `json:"monitors"`
	CephFS    struct {
		SubvolumeGroup string `json:"subvolumeGroup,omitempty"`
	} `json:"cephFS,omitempty"`
}

// Clusters are the clusters a driver serves, by ID.
type Clusters map[string]Cluster

// LoadClusters reads and validates a cluster config file.
func LoadClusters(path string) (Clusters, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read cluster config: %w", err)
	}
	return ParseClusters(b)
}

// ParseClusters parses and validates cluster config JSON.
func ParseClusters(b []byte) (Clusters, error) {
	var list []Cluster
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("cluster config: want a JSON list of {clusterID, monitors}: %w", err)
	}
	out := Clusters{}
	for i, c := range list {
		if err := c.validate(); err != nil {
			return nil, fmt.Errorf("cluster config entry %d: %w", i, err)
		}
		if _, dup := out[c.ClusterID]; dup {
			return nil, fmt.Errorf("cluster config: clusterID %q appears twice", c.ClusterID)
		}
		out[c.ClusterID] = c
	}
	return out, nil
}

// Get returns the cluster with id.
func (cs Clusters) Get(id string) (Cluster, error) {
	c, ok := cs[id]
	if !ok {
		return Cluster{}, fmt.Errorf("clusterID %q is not in the cluster config: %w", id, ErrUnknownCluster)
	}
	return c, nil
}

func (c Cluster) validate() error {
	if c.ClusterID == "" || len(c.ClusterID) > MaxClusterIDLen {
		return fmt.Errorf("clusterID %q: 1 to %d characters", c.ClusterID, MaxClusterIDLen)
	}
	for _, r := range c.ClusterID {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("clusterID %q: letters, digits, '-', '_' and '.' only", c.ClusterID)
		}
	}
	if len(c.Monitors) == 0 {
		return fmt.Errorf("cluster %q: no monitors", c.ClusterID)
	}
	for _, m := range c.Monitors {
		if err := validMonitor(m); err != nil {
			return fmt.Errorf("cluster %q: monitor %q: %w", c.ClusterID, m, err)
		}
	}
	return nil
}

// validMonitor accepts "host:port", "[v6]:port" and Ceph's "v1:"/"v2:"
// prefixed forms.
func validMonitor(m string) error {
	m = strings.TrimPrefix(strings.TrimPrefix(m, "v1:"), "v2:")
	host, port, err := net.SplitHostPort(m)
	if err != nil {
		return fmt.Errorf("want HOST:PORT")
	}
	if host == "" || strings.ContainsAny(host, " ,;/") {
		return fmt.Errorf("bad host")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("bad port")
	}
	return nil
}
