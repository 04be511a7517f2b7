package kernel_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/initramfs"
	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
)

// The tailored guest kernel boots under QEMU (TCG here) to a Go /init,
// which prints on the serial console.
func TestGuestKernelBoots(t *testing.T) {
	vmlinux := os.Getenv("NODEINFRA_GUEST_KERNEL")
	if vmlinux == "" {
		t.Skip("needs NODEINFRA_GUEST_KERNEL (nodeagent/guest/kernel/build.sh prints it)")
	}
	dir := t.TempDir()
	probe := filepath.Join(dir, "init")
	build := exec.Command("go", "build", "-o", probe, "./bootprobe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build bootprobe: %v\n%s", err, out)
	}
	init, err := os.ReadFile(probe)
	if err != nil {
		t.Fatal(err)
	}
	var cpio bytes.Buffer
	if err := initramfs.WriteNewc(&cpio, []initramfs.Entry{
		initramfs.Dir("dev", 0o755), initramfs.Dir("proc", 0o755), initramfs.Dir("sys", 0o755),
		initramfs.CharDev("dev/console", 0o600, 5, 1),
		initramfs.File("init", 0o755, init),
	}); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(dir, "initramfs.cpio")
	if err := os.WriteFile(initrd, cpio.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// The sandboxes' own guest command line (nodeagent/qemu).
	cmdline := strings.Join(append(slices.Clone(qemu.DefaultKernelArgs), "noapictimer"), " ")
	if khz := qemu.TSCkHz(); khz > 0 {
		cmdline += fmt.Sprintf(" tsc_early_khz=%d", khz)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", "-name", "nodeinfra-bootprobe",
		"-M", "pc", "-accel", "tcg", "-cpu", "max", "-m", "128M", "-smp", "1",
		"-bios", "/usr/share/qemu/qboot.rom", "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
		"-kernel", vmlinux, "-initrd", initrd, "-append", cmdline)
	out, err := qemu.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = qemu.Process.Kill(); _ = qemu.Wait() }()
	var console strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		console.WriteString(line + "\n")
		if strings.Contains(line, "nodeinfra-bootprobe: ready") {
			t.Logf("guest /init printed after %v (QEMU start to console line): %s", time.Since(start).Round(time.Millisecond), line)
			if !strings.Contains(line, "cpus=0") {
				t.Errorf("the guest does not see its one vCPU: %s", line)
			}
			return
		}
	}
	t.Fatalf("no ready line from the guest:\n%s", console.String())
}
