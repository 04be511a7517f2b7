package sandbox

import (
	"encoding/json"
	"fmt"
	"github.com/nodeinfra/nodeinfra/pkg/atomicfile"
	"os"
	"path/filepath"

	"github.com/nodeinfra/nodeinfra/nodeagent/podnet"
)

// record is what the agent keeps on disk per sandbox, in
// <state>/sandboxes/<id>/sandbox.json: enough for a new agent to re-adopt
// a running VM or clean up after a dead one.
type record struct {
	Sandbox Sandbox `json:"sandbox"`
	// Net is the pod network as it was before the VM took it over; it is
	// given back to eth0 when the sandbox ends.
	Net *podnet.Config `json:"net,omitempty"`
	// Cgroup is the name of the sandbox's cgroup, if any.
	Cgroup string `json:"cgroup,omitempty"`
}

const recordFile = "sandbox.json"

// writeRecord replaces dir/sandbox.json atomically and durably.
func writeRecord(dir string, r record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, recordFile), b, 0o600); err != nil {
		return fmt.Errorf("write sandbox record: %w", err)
	}
	return nil
}

func readRecord(dir string) (record, error) {
	var r record
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("read %s: %w", filepath.Join(dir, recordFile), err)
	}
	return r, nil
}
