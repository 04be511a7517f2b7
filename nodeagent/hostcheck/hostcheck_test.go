package hostcheck

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeHost is a node where every item is ok, in a temporary tree: its
// device files are symlinks to /dev/null (a character device anyone may
// open), its QEMU is found by a fake LookPath and its KVM probe boots
// nothing. probed records the probe's arguments.
type fakeHost struct {
	Host
	root   string
	probed []string
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	root := t.TempDir()
	f := &fakeHost{root: root}
	f.Host = Host{
		Dev: filepath.Join(root, "dev"), Sys: filepath.Join(root, "sys"), CgroupRoot: filepath.Join(root, "sys/fs/cgroup"),
		NetnsDir: filepath.Join(root, "run/netns"), Modules: filepath.Join(root, "lib/modules/6.1.0"),
		QEMU: "qemu-system-x86_64", Firmware: filepath.Join(root, "usr/share/qemu/qboot.rom"),
		QEMUModuleDirs: []string{filepath.Join(root, "usr/lib/x86_64-linux-gnu/qemu"), filepath.Join(root, "usr/lib64/qemu")},
		Kernel:         filepath.Join(root, "guest/vmlinux"), Initrd: filepath.Join(root, "guest/initramfs.cpio"),
		LookPath: func(name string) (string, error) {
			if name == "qemu-system-x86_64" {
				return "/usr/bin/qemu-system-x86_64", nil
			}
			return "", errors.New("not found")
		},
	}
	f.Host.ProbeKVM = func(_ context.Context, qemu, kernel string) error {
		f.probed = append(f.probed, qemu, kernel)
		return nil
	}
	for _, d := range []string{"dev/kvm", "dev/net/tun", "dev/fuse", "dev/loop-control"} {
		f.device(t, d)
	}
	for _, p := range []string{"sys/bus/rbd/add_single_major", "usr/share/qemu/qboot.rom",
		"usr/lib/x86_64-linux-gnu/qemu/block-rbd.so", "guest/vmlinux", "guest/initramfs.cpio"} {
		f.file(t, p, "")
	}
	f.dir(t, "sys/module/nbd")
	f.dir(t, "run/netns")
	f.cgroupV1(t, "cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "devices")
	return f
}

func (f *fakeHost) path(p string) string { return filepath.Join(f.root, p) }

func (f *fakeHost) dir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(f.path(p), 0o755); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeHost) file(t *testing.T, p, content string) {
	t.Helper()
	f.dir(t, filepath.Dir(p))
	if err := os.WriteFile(f.path(p), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeHost) device(t *testing.T, p string) {
	t.Helper()
	f.dir(t, filepath.Dir(p))
	if err := os.Symlink("/dev/null", f.path(p)); err != nil {
		t.Fatal(err)
	}
}

func (f *fakeHost) remove(t *testing.T, p string) {
	t.Helper()
	if err := os.RemoveAll(f.path(p)); err != nil {
		t.Fatal(err)
	}
}

// cgroupV1 mounts v1 controllers: a directory with cgroup.procs each.
func (f *fakeHost) cgroupV1(t *testing.T, controllers ...string) {
	t.Helper()
	for _, c := range controllers {
		f.file(t, filepath.Join("sys/fs/cgroup", c, "cgroup.procs"), "")
	}
}

// cgroupV2 makes the cgroup root a v2 hierarchy with these controllers.
func (f *fakeHost) cgroupV2(t *testing.T, controllers ...string) {
	t.Helper()
	f.remove(t, "sys/fs/cgroup")
	f.file(t, "sys/fs/cgroup/cgroup.controllers", strings.Join(controllers, " ")+"\n")
	f.file(t, "sys/fs/cgroup/cgroup.procs", "")
}

// want checks an item's name and status, and that its detail holds each
// of parts.
func want(t *testing.T, it Item, name string, st Status, parts ...string) {
	t.Helper()
	if it.Name != name || it.Status != st {
		t.Errorf("got %s %s %q, want %s %s", it.Status, it.Name, it.Detail, st, name)
	}
	for _, p := range parts {
		if !strings.Contains(it.Detail, p) {
			t.Errorf("%s %s %q: want it to say %q", it.Status, it.Name, it.Detail, p)
		}
	}
}

func TestAllOK(t *testing.T) {
	f := newFakeHost(t)
	items := f.Check(context.Background())
	var names []string
	for _, it := range items {
		names = append(names, it.Name)
		if it.Status != OK {
			t.Errorf("%s %s: %s", it.Status, it.Name, it.Detail)
		}
	}
	if w := []string{"kvm", "tun", "cgroups", "qemu", "qemu-firmware", "qemu-rbd", "guest-kernel", "guest-initrd",
		"krbd", "nbd", "fuse", "netns"}; !reflect.DeepEqual(names, w) {
		t.Errorf("items %v, want %v", names, w)
	}
	if Failed(items) {
		t.Error("Failed on a ready host")
	}
	if w := []string{"/usr/bin/qemu-system-x86_64", f.Kernel}; !reflect.DeepEqual(f.probed, w) {
		t.Errorf("probed with %q, want %q", f.probed, w)
	}
	var names2 []string
	for _, it := range f.SandboxFiles() {
		names2 = append(names2, it.Name)
	}
	if w := []string{"guest-kernel", "guest-initrd", "qemu", "qemu-firmware", "tun"}; !reflect.DeepEqual(names2, w) {
		t.Errorf("SandboxFiles %v, want %v", names2, w)
	}
}

func TestKVM(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		setup func(*testing.T, *fakeHost)
		st    Status
		parts []string
		probe bool
	}{
		{"boots", func(*testing.T, *fakeHost) {}, OK, []string{"booted under KVM"}, true},
		{"no /dev/kvm", func(t *testing.T, f *fakeHost) { f.remove(t, "dev/kvm") }, Warn,
			[]string{"TCG fallback (emulation, slower)", "no "}, false},
		{"not a device", func(t *testing.T, f *fakeHost) { f.remove(t, "dev/kvm"); f.file(t, "dev/kvm", "") }, Warn,
			[]string{"TCG fallback", "not a character device"}, false},
		{"guest fails", func(_ *testing.T, f *fakeHost) {
			probe := f.ProbeKVM
			f.ProbeKVM = func(ctx context.Context, q, k string) error {
				_ = probe(ctx, q, k)
				return errors.New("kvm guest failed: failed to set MSR 0x10a")
			}
		}, Warn, []string{"TCG fallback (emulation, slower)", "did not boot", "MSR 0x10a"}, true},
		{"no qemu", func(_ *testing.T, f *fakeHost) { f.QEMU = "qemu-missing" }, Warn,
			[]string{"not boot-probed (no QEMU)", "TCG fallback"}, false},
		{"no kernel", func(t *testing.T, f *fakeHost) { f.remove(t, "guest/vmlinux") }, Warn,
			[]string{"not boot-probed (no guest kernel)", "TCG fallback"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHost(t)
			tc.setup(t, f)
			want(t, f.KVM(ctx), KVMItem, tc.st, tc.parts...)
			if probed := len(f.probed) > 0; probed != tc.probe {
				t.Errorf("probed %v, want %v", probed, tc.probe)
			}
		})
	}
}

func TestTun(t *testing.T) {
	f := newFakeHost(t)
	want(t, f.Tun(), TunItem, OK, f.path("dev/net/tun"))
	f.remove(t, "dev/net/tun")
	want(t, f.Tun(), TunItem, Fail, "no such file", "tun module")
	f.file(t, "dev/net/tun", "")
	want(t, f.Tun(), TunItem, Fail, "not a character device")
}

func TestCgroups(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(*testing.T, *fakeHost)
		st    Status
		parts []string
	}{
		{"v1", func(*testing.T, *fakeHost) {}, OK, []string{"v1: cpu, cpuacct, memory, pids, cpuset, blkio"}},
		{"v1 without cpuset and blkio", func(t *testing.T, f *fakeHost) {
			f.remove(t, "sys/fs/cgroup/cpuset")
			f.remove(t, "sys/fs/cgroup/blkio")
		}, Warn, []string{"v1: cpu, cpuacct, memory, pids;", "no cpuset: cpuset limits will be refused", "no blkio: block IO limits will be refused"}},
		{"v1 without memory and pids", func(t *testing.T, f *fakeHost) {
			f.remove(t, "sys/fs/cgroup/memory")
			f.remove(t, "sys/fs/cgroup/pids")
		}, Fail, []string{"v1", "lacks memory, pids"}},
		// An unmounted controller is an empty directory of the tmpfs.
		{"v1 cpuacct not mounted", func(t *testing.T, f *fakeHost) { f.remove(t, "sys/fs/cgroup/cpuacct/cgroup.procs") },
			Fail, []string{"lacks cpuacct"}},
		{"hybrid is v1", func(t *testing.T, f *fakeHost) {
			f.file(t, "sys/fs/cgroup/unified/cgroup.controllers", "cpu io memory pids\n")
		}, OK, []string{"v1: "}},
		{"v2", func(t *testing.T, f *fakeHost) {
			f.cgroupV2(t, "cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma")
		}, OK, []string{"v2: cpu, memory, pids, cpuset, io"}},
		{"v2 without io", func(t *testing.T, f *fakeHost) { f.cgroupV2(t, "cpuset", "cpu", "memory", "pids") },
			Warn, []string{"v2: cpu, memory, pids, cpuset; no io: block IO limits will be refused"}},
		{"v2 without cpu", func(t *testing.T, f *fakeHost) { f.cgroupV2(t, "memory", "pids") },
			Fail, []string{"v2", "lacks cpu"}},
		{"nothing", func(t *testing.T, f *fakeHost) { f.remove(t, "sys/fs/cgroup"); f.dir(t, "sys/fs/cgroup") },
			Fail, []string{"neither the v2 hierarchy nor v1 controllers"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHost(t)
			tc.setup(t, f)
			want(t, f.Cgroups(), CgroupsItem, tc.st, tc.parts...)
		})
	}
}

func TestQEMU(t *testing.T) {
	f := newFakeHost(t)
	want(t, f.QEMUBinary(), QEMUItem, OK, "/usr/bin/qemu-system-x86_64")
	want(t, f.QEMUFirmware(), FirmwareItem, OK, f.Firmware)
	want(t, f.RBDDriver(), RBDDriverItem, OK, f.path("usr/lib/x86_64-linux-gnu/qemu/block-rbd.so"))

	f.QEMU = "/opt/qemu/bin/qemu-system-x86_64"
	want(t, f.QEMUBinary(), QEMUItem, Fail, "/opt/qemu/bin/qemu-system-x86_64 not found", "--qemu")
	f.remove(t, "usr/share/qemu/qboot.rom")
	want(t, f.QEMUFirmware(), FirmwareItem, Fail, "no such file", "qemu-system-x86")

	// The module in the second directory looked in.
	f.remove(t, "usr/lib/x86_64-linux-gnu/qemu")
	f.file(t, "usr/lib64/qemu/block-rbd.so", "")
	want(t, f.RBDDriver(), RBDDriverItem, OK, f.path("usr/lib64/qemu/block-rbd.so"))
	f.remove(t, "usr/lib64/qemu/block-rbd.so")
	want(t, f.RBDDriver(), RBDDriverItem, Warn, "RBD disks unavailable", "qemu-block-extra", f.path("usr/lib64/qemu"))
}

func TestGuestFiles(t *testing.T) {
	f := newFakeHost(t)
	want(t, f.GuestKernel(), KernelItem, OK, f.Kernel)
	want(t, f.GuestInitrd(), InitrdItem, OK, f.Initrd)
	f.remove(t, "guest/vmlinux")
	want(t, f.GuestKernel(), KernelItem, Fail, f.Kernel, "no such file", "make build", "--guest-kernel")
	f.remove(t, "guest/initramfs.cpio")
	f.dir(t, "guest/initramfs.cpio")
	want(t, f.GuestInitrd(), InitrdItem, Fail, "not a regular file", "--guest-initrd")
}

func TestKernelMappers(t *testing.T) {
	f := newFakeHost(t)
	want(t, f.KRBD(), KRBDItem, OK, "loaded")
	want(t, f.NBD(), NBDItem, OK, "loaded")

	// nbd loaded shows as /sys/module/nbd, or its devices.
	f.remove(t, "sys/module/nbd")
	f.device(t, "dev/nbd0")
	want(t, f.NBD(), NBDItem, OK, "loaded")

	f.remove(t, "sys/bus/rbd")
	f.remove(t, "dev/nbd0")
	want(t, f.KRBD(), KRBDItem, Warn, "not loaded", "none in "+f.Modules, "falls back to rbd-nbd or rbd-fuse")
	want(t, f.NBD(), NBDItem, Warn, "not loaded", "none in "+f.Modules, "cannot use rbd-nbd")

	f.file(t, "lib/modules/6.1.0/modules.dep", "kernel/drivers/block/loop.ko:\n"+
		"kernel/drivers/block/rbd.ko.xz: kernel/net/ceph/libceph.ko.xz\n"+
		"kernel/drivers/block/nbd.ko.zst:\n")
	want(t, f.KRBD(), KRBDItem, Warn, "modprobe rbd", "falls back to rbd-nbd or rbd-fuse")
	want(t, f.NBD(), NBDItem, Warn, "modprobe nbd", "cannot use rbd-nbd")

	// A module whose name ends like another's is not it.
	f.file(t, "lib/modules/6.1.0/modules.dep", "kernel/drivers/block/xnbd.ko:\nkernel/drivers/block/krbd.ko:\n")
	want(t, f.NBD(), NBDItem, Warn, "no nbd module")
	want(t, f.KRBD(), KRBDItem, Warn, "no rbd module")

	f.Modules = ""
	want(t, f.KRBD(), KRBDItem, Warn, "no rbd module (not loaded)")
}

func TestFuse(t *testing.T) {
	f := newFakeHost(t)
	want(t, f.Fuse(true), FuseItem, OK, "usable")
	want(t, f.Fuse(false), FuseItem, OK, "usable")

	f.remove(t, "dev/loop-control")
	want(t, f.Fuse(true), FuseItem, Warn, "no "+f.path("dev/loop-control"), "rbd-fuse needs loop devices")
	want(t, f.Fuse(false), FuseItem, Fail, "rbd-fuse needs loop devices", "neither krbd nor nbd")

	f.remove(t, "dev/fuse")
	want(t, f.Fuse(true), FuseItem, Warn, "unusable", "no rbd-fuse or ceph-fuse")
	want(t, f.Fuse(false), FuseItem, Fail, "unusable", "neither krbd nor nbd", "cannot map RBD volumes")

	f.file(t, "dev/fuse", "")
	want(t, f.Fuse(true), FuseItem, Warn, "not a character device")

	// Check fails fuse only when no kernel mapper is loaded.
	f.remove(t, "dev/fuse")
	f.remove(t, "sys/module/nbd")
	f.remove(t, "sys/bus/rbd")
	if !Failed(f.Check(context.Background())) {
		t.Error("Check: no failure without krbd, nbd and fuse")
	}
	f.dir(t, "sys/module/nbd")
	if items := f.Check(context.Background()); Failed(items) {
		t.Errorf("Check: failed with nbd loaded: %+v", items)
	}
}

func TestNetns(t *testing.T) {
	f := newFakeHost(t)
	want(t, f.Netns(), NetnsItem, OK, f.NetnsDir)
	f.remove(t, "run/netns")
	want(t, f.Netns(), NetnsItem, Warn, "missing")
	f.file(t, "run/netns", "")
	want(t, f.Netns(), NetnsItem, Warn, "not a directory")
}

func TestItemJSON(t *testing.T) {
	items := []Item{{KVMItem, Warn, "TCG fallback"}, {TunItem, OK, "/dev/net/tun"}, {QEMUItem, Fail, "not found"}}
	b, err := json.Marshal(items)
	if err != nil {
		t.Fatal(err)
	}
	if w := `[{"name":"kvm","status":"warn","detail":"TCG fallback"},{"name":"tun","status":"ok","detail":"/dev/net/tun"},` +
		`{"name":"qemu","status":"fail","detail":"not found"}]`; string(b) != w {
		t.Errorf("JSON %s, want %s", b, w)
	}
	var back []Item
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, items) {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	if err := json.Unmarshal([]byte(`[{"status":"bad"}]`), &back); err == nil {
		t.Error("status bad accepted")
	}
}
