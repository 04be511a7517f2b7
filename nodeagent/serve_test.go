package main

import (
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	good := Config{Socket: "/run/x.sock", StateDir: "/var/lib/x", MetricsAddr: "127.0.0.1:9808", ProbeAddr: "", ReconcileInterval: time.Second, LogLevel: "info",
		Sandbox: SandboxConfig{Accel: "auto", CgroupParent: "/nodeagent", BootTimeout: time.Minute}}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
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
		"relative cgroup":    func(c *Config) { c.Sandbox.CgroupParent = "nodeagent" },
		"root cgroup":        func(c *Config) { c.Sandbox.CgroupParent = "/" },
		"short boot timeout": func(c *Config) { c.Sandbox.BootTimeout = time.Millisecond },
	} {
		c := good
		mutate(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRunUsage(t *testing.T) {
	if code := run(nil); code != 2 {
		t.Errorf("no args: exit %d, want 2", code)
	}
	if code := run([]string{"frobnicate"}); code != 2 {
		t.Errorf("unknown verb: exit %d, want 2", code)
	}
	if code := run([]string{"eni", "list", "-o", "yaml", "--socket", "/nonexistent.sock"}); code != 2 {
		t.Errorf("bad -o: exit %d, want 2", code)
	}
	if code := run([]string{"serve", "--socket", "relative.sock"}); code != 2 {
		t.Errorf("bad serve flag: exit %d, want 2", code)
	}
}
