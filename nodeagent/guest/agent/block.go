//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/agentproto"
)

// blockDevices lists the virtio-blk disks under sysBlock (/sys/block/vd*):
// name, serial (the host's disk ID), size and read-only flag.
func blockDevices(sysBlock string) ([]agentproto.BlockDevice, error) {
	dirs, err := filepath.Glob(filepath.Join(sysBlock, "vd*"))
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	devs := []agentproto.BlockDevice{}
	for _, d := range dirs {
		read := func(attr string) string {
			b, _ := os.ReadFile(filepath.Join(d, attr))
			return strings.TrimSpace(string(b))
		}
		sectors, err := strconv.ParseUint(read("size"), 10, 64)
		if err != nil {
			// Unplugged while we looked.
			continue
		}
		devs = append(devs, agentproto.BlockDevice{
			Name:      filepath.Base(d),
			Serial:    read("serial"),
			SizeBytes: sectors * 512, // sysfs counts 512-byte sectors whatever the block size
			ReadOnly:  read("ro") == "1",
		})
	}
	// vdb before vdaa, as the kernel names them.
	sort.Slice(devs, func(i, j int) bool {
		a, b := devs[i].Name, devs[j].Name
		if len(a) != len(b) {
			return len(a) < len(b)
		}
		return a < b
	})
	return devs, nil
}
