package qemu

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMachineArgs(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "d.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	m := Machine{Name: "pod-a", Dir: dir, Accel: AccelTCG, VCPUs: 2, MemoryMiB: 256, Kernel: "/k", Initrd: "/i",
		NIC: &NIC{MAC: "02:00:00:00:00:01"}, Console: &Console{FD: 4}, Paused: true,
		Disks: []BlockDevice{{ID: "vol,1", Path: disk}, {ID: "db", RBD: &RBD{Pool: "rbd", Image: "img", Conf: "/c", User: "admin", KeyFile: "/k.key"}, ReadOnly: true}}}
	args, err := m.Args()
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{"-name sandbox-pod-a", "-smp 2", "-m 256M", "memory-backend-memfd,id=mem,size=256M,share=on",
		"-accel tcg,tb-size=12", "nodeinfra.id=pod-a", "fd=3", "mac=02:00:00:00:00:01", "-S",
		"path=" + filepath.Join(dir, QMPSocket), "name=" + AgentPortName, "serial=db",
		"-add-fd fd=4,set=1,opaque=console -chardev file,id=console,path=/dev/fdset/1,append=on -serial chardev:console"} {
		if !strings.Contains(line, want) {
			t.Errorf("args lack %q:\n%s", want, line)
		}
	}
	if strings.Contains(line, "noapictimer") {
		t.Errorf("noapictimer with 2 vCPUs breaks the second one:\n%s", line)
	}
	// Disks go in as JSON, so a comma in a path needs no escaping, and the
	// RBD key is a secret object reading a file, never on the command line.
	var blockdevs []map[string]any
	for i, a := range args {
		if a == "-blockdev" {
			var bd map[string]any
			if err := json.Unmarshal([]byte(args[i+1]), &bd); err != nil {
				t.Fatalf("blockdev %q: %v", args[i+1], err)
			}
			blockdevs = append(blockdevs, bd)
		}
	}
	if len(blockdevs) != 2 || blockdevs[0]["file"].(map[string]any)["filename"] != disk ||
		blockdevs[1]["file"].(map[string]any)["key-secret"] != SecretID("db") || blockdevs[1]["read-only"] != true {
		t.Errorf("blockdevs: %v", blockdevs)
	}
	if !slices.Contains(args, `{"file":"/k.key","format":"base64","id":"sec-db","qom-type":"secret"}`) {
		t.Errorf("no secret object for the RBD key:\n%s", line)
	}
	one := m
	one.VCPUs, one.Accel, one.NIC, one.Disks, one.Paused, one.Console = 1, AccelKVM, nil, nil, false, nil
	args, _ = one.Args()
	line = strings.Join(args, " ")
	if !strings.Contains(line, "noapictimer") || !strings.Contains(line, "-accel kvm -cpu host") || strings.Contains(line, "-S") || strings.Contains(line, "netdev") ||
		!strings.Contains(line, "-serial null") || strings.Contains(line, "add-fd") {
		t.Errorf("1 vCPU under KVM:\n%s", line)
	}
	for _, bad := range []Machine{{}, {Name: "x", Dir: "/a,b", Kernel: "/k", Initrd: "/i", VCPUs: 1, MemoryMiB: 64}, {Name: "x", Dir: "/d", Kernel: "/k", Initrd: "/i"}} {
		if _, err := bad.Args(); err == nil {
			t.Errorf("%+v: accepted", bad)
		}
	}
}

// The probe answers quickly either way and says why KVM is not used.
func TestProbeKVM(t *testing.T) {
	kernel := os.Getenv("NODEINFRA_GUEST_KERNEL")
	if kernel == "" {
		t.Skip("needs NODEINFRA_GUEST_KERNEL (nodeagent/guest/kernel/build.sh prints it)")
	}
	start := time.Now()
	err := ProbeKVM(context.Background(), "qemu-system-x86_64", kernel)
	took := time.Since(start)
	if took > 7*time.Second {
		t.Errorf("probe took %v", took)
	}
	if err != nil {
		if err.Error() == "" {
			t.Error("empty reason")
		}
		t.Logf("KVM unusable here (%v): %v", took.Round(time.Millisecond), err)
	} else {
		t.Logf("KVM works here (%v)", took.Round(time.Millisecond))
	}
	// A kernel that cannot boot is never taken for working KVM.
	bogus := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(bogus, []byte("not a kernel"), 0o644)
	if err := ProbeKVM(context.Background(), "qemu-system-x86_64", bogus); err == nil {
		t.Error("a bogus kernel passed the KVM probe")
	}
}

// A template and its clones: RAM in a file passed as a descriptor (shared
// for the template, private for a clone), a clone waiting for its state,
// and no sandbox ID in a template's kernel command line or name.
func TestMachineArgsTemplateAndClone(t *testing.T) {
	dir := t.TempDir()
	tmpl := Machine{Name: "1x128", Dir: dir, Accel: AccelTCG, VCPUs: 1, MemoryMiB: 128, Kernel: "/k", Initrd: "/i",
		Template: true, Memory: &MemoryFile{FD: 3, Share: true}}
	args, err := tmpl.Args()
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{"-name nodeinfra-template-1x128", "memory-backend-file,id=mem,size=128M,mem-path=/proc/self/fd/3,share=on"} {
		if !strings.Contains(line, want) {
			t.Errorf("template args lack %q:\n%s", want, line)
		}
	}
	for _, bad := range []string{"nodeinfra.id=", "memory-backend-memfd", "-incoming"} {
		if strings.Contains(line, bad) {
			t.Errorf("template args have %q:\n%s", bad, line)
		}
	}
	clone := Machine{Name: "pod-a", Dir: dir, Accel: AccelTCG, VCPUs: 1, MemoryMiB: 128, Kernel: "/k", Initrd: "/i",
		Memory: &MemoryFile{FD: 4}, Incoming: true, Paused: true}
	args, err = clone.Args()
	if err != nil {
		t.Fatal(err)
	}
	line = strings.Join(args, " ")
	for _, want := range []string{"-name sandbox-pod-a", "mem-path=/proc/self/fd/4,share=off", "-incoming defer", "-S"} {
		if !strings.Contains(line, want) {
			t.Errorf("clone args lack %q:\n%s", want, line)
		}
	}
}
