package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestConfigValidate(t *testing.T) {
	good := Config{Socket: "/run/x.sock", StateDir: "/var/lib/x", MetricsAddr: "127.0.0.1:9808", ProbeAddr: "", ReconcileInterval: time.Second, LogLevel: "info",
		Sandbox: SandboxConfig{Accel: "auto", CgroupParent: "/nodeagent", BootTimeout: time.Minute, UIDs: "1000-1999", MemoryOverheadMiB: 256,
			FastStart: "off", FastStartClasses: "1x128", FastStartPoolSize: 2}}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"relative socket":    func(c *Config) { c.Socket = "x.sock" },
		"relative state dir": func(c *Config) { c.StateDir = "state" },
		"bad metrics addr":   func(c *Config) { c.MetricsAddr = "9808" },
		"bad probe addr":     func(c *Config) { c.ProbeAddr = "localhost" },
		"short interval":     func(c *Config) { c.ReconcileInterval = time.Millisecond },
		"bad log level":      func(c *Config) { c.LogLevel = "chatty" },
		"bad accel":          func(c *Config) { c.Sandbox.Accel = "hvf" },
		"relative kernel":    func(c *Config) { c.Sandbox.Kernel = "vmlinux" },
		"relative keyring":   func(c *Config) { c.Sandbox.CephKeyring = "keyring" },
		"cgroup escape":      func(c *Config) { c.Sandbox.CgroupParent = "/../x" },
		"tiny overhead":      func(c *Config) { c.Sandbox.MemoryOverheadMiB = 1 },
		"relative cgroup":    func(c *Config) { c.Sandbox.CgroupParent = "nodeagent" },
		"root cgroup":        func(c *Config) { c.Sandbox.CgroupParent = "/" },
		"short boot timeout": func(c *Config) { c.Sandbox.BootTimeout = time.Millisecond },
		"uids backwards":     func(c *Config) { c.Sandbox.UIDs = "2000-1000" },
		"root uid":           func(c *Config) { c.Sandbox.UIDs = "0-10" },
		"uids not a range":   func(c *Config) { c.Sandbox.UIDs = "1000" },
		"bad fast start":     func(c *Config) { c.Sandbox.FastStart = "snapshot" },
		"empty pool":         func(c *Config) { c.Sandbox.FastStart, c.Sandbox.FastStartPoolSize = "pool", 0 },
		"bad class":          func(c *Config) { c.Sandbox.FastStartClasses = "1x16" },
		"class not a size":   func(c *Config) { c.Sandbox.FastStartClasses = "big" },
		"template, no class": func(c *Config) { c.Sandbox.FastStart, c.Sandbox.FastStartClasses = "template", "" },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The flags default to DefaultConfig and set the fields they name;
// Validate's errors name the flags.
func TestBindFlags(t *testing.T) {
	c := DefaultConfig()
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	c.BindFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if c != DefaultConfig() {
		t.Errorf("no flags: %+v, want %+v", c, DefaultConfig())
	}
	if err := fs.Parse([]string{"--socket=/s.sock", "--ceph-user", "u", "--boot-timeout=2m", "--guest-kernel-args", "a b"}); err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/s.sock" || c.Sandbox.CephUser != "u" || c.Sandbox.BootTimeout != 2*time.Minute || c.Sandbox.KernelArgs != "a b" {
		t.Errorf("flags not bound: %+v", c)
	}
	c.Sandbox.Accel = "hvf"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--accel") {
		t.Errorf("Validate: %v, want it to name --accel", err)
	}
}
