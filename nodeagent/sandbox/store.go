package sandbox

import (
	"encoding/json"
	"fmt"
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
	tmp := filepath.Join(dir, recordFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write sandbox record: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, recordFile))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write sandbox record: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
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
