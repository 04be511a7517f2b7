package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// ProbeKVM tells whether guests boot under KVM here. /dev/kvm existing is
// not enough (nested and paravirtual hosts refuse guest MSRs or crash the
// guest), so it boots kernel under KVM without an initrd and waits for the
// kernel to reach its root-mount panic, which proves the kernel ran to the
// end of its boot. It returns nil when KVM works, else why not.
func ProbeKVM(ctx context.Context, qemuBinary, kernel string) error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open /dev/kvm: %w", err)
	}
	f.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemuBinary, "-name", "nodeinfra-kvm-probe",
		"-M", "pc", "-accel", "kvm", "-cpu", "host", "-m", "64M", "-smp", "1",
		"-bios", "/usr/share/qemu/qboot.rom", "-nographic", "-nodefaults", "-no-user-config", "-no-reboot",
		"-serial", "stdio", "-kernel", kernel, "-append", "console=ttyS0 panic=-1 reboot=k")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	s := out.String()
	if strings.Contains(s, "Unable to mount root") || strings.Contains(s, "Kernel panic") {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("kvm guest did not finish booting in 5s")
	}
	last := strings.TrimSpace(s)
	if i := strings.LastIndexByte(last, '\n'); i >= 0 {
		last = last[i+1:]
	}
	return fmt.Errorf("kvm guest failed (%v): %s", err, last)
}
