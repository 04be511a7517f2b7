// Command bootprobe is a minimal /init for checking that the guest kernel
// boots: it mounts /proc, /sys and /dev, prints one line on the console with the
// kernel's uptime, and powers the VM off.
package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	_ = unix.Mount("proc", "/proc", "proc", 0, "")
	_ = unix.Mount("sysfs", "/sys", "sysfs", 0, "")
	_ = unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	up, _ := os.ReadFile("/proc/uptime")
	cpus, _ := os.ReadFile("/sys/devices/system/cpu/online")
	fmt.Printf("nodeinfra-bootprobe: ready uptime=%s cpus=%s\n", strings.Fields(string(up) + " ?")[0], strings.TrimSpace(string(cpus)))
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
