// Command csi is the storage benchmark of `make bench` (csibench): it
// measures csi-ceph's CreateVolume and NodeStage + NodePublish latency
// against the bare steps (a go-ceph image create; an rbd-fuse map, loop
// device, mkfs and mount by hand) in one run, on a Ceph cluster it starts
// with e2e/setup/ceph-up.sh (or --ceph-dir, one already running). It
// prints a markdown table; then the same for CephFS (cephfs.go).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

type sample struct{ create, stage []time.Duration }

func main() {
	bin := flag.String("bin", "bin", "directory with csi-ceph")
	seq := flag.Int("seq", 50, "volumes one after another")
	conc := flag.Int("conc", 16, "volumes at once")
	typ := flag.String("type", "all", "rbd, cephfs or all")
	cephDir := flag.String("ceph-dir", "", "a running cluster of e2e/setup/ceph-up.sh to use (default: start one)")
	fsSeq := flag.Int("cephfs-seq", 30, "CephFS volumes one after another")
	fsConc := flag.Int("cephfs-conc", 8, "CephFS volumes at once")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "csibench: needs root (mounts, loop devices)")
		os.Exit(2)
	}
	if err := run(*bin, *cephDir, *typ, *seq, *conc, *fsSeq, *fsConc); err != nil {
		fmt.Fprintln(os.Stderr, "csibench:", err)
		os.Exit(1)
	}
}

func sh(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func run(bin, cephDir, typ string, seq, conc, fsSeq, fsConc int) error {
	tmp, err := os.MkdirTemp("", "csibench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var cl *testutil.CephCluster
	if cephDir != "" {
		c, err := testutil.LoadCeph(cephDir)
		if err != nil {
			return err
		}
		cl = &c
	} else {
		fmt.Fprintln(os.Stderr, "csibench: starting a Ceph cluster")
		if cl, err = testutil.StartCeph(filepath.Join(tmp, "ceph")); err != nil {
			return err
		}
		defer cl.Stop()
	}
	if typ == "all" || typ == "rbd" {
		if err := runRBD(bin, tmp, cl, seq, conc); err != nil {
			return err
		}
	}
	if typ == "all" || typ == "cephfs" {
		return runCephFS(bin, tmp, cl, fsSeq, fsConc)
	}
	return nil
}

func runRBD(bin, tmp string, cl *testutil.CephCluster, seq, conc int) error {
	key, mons := cl.AdminKey, cl.Monitors
	drv, err := testutil.StartCSICeph(bin, tmp, cl)
	if err != nil {
		return err
	}
	defer drv.Stop()
	ctrl, node := drv.Controller, drv.Node
	secrets, params, capab := cl.Secrets(), cl.Params("rbd"), testutil.CSIExt4
	const size = 64 << 20

	// The bare steps' own connection, made once, as a long-running
	// controller would hold one.
	rc, err := rados.NewConnWithUser("admin")
	if err != nil {
		return err
	}
	_ = rc.SetConfigOption("mon_host", strings.Join(mons, ","))
	_ = rc.SetConfigOption("key", key)
	if err := rc.Connect(); err != nil {
		return err
	}
	defer rc.Shutdown()
	ioctx, err := rc.OpenIOContext("rbd")
	if err != nil {
		return err
	}
	defer ioctx.Destroy()
	confDir := filepath.Join(tmp, "bare")
	if err := os.MkdirAll(confDir, 0o700); err != nil {
		return err
	}
	kr := filepath.Join(confDir, "keyring")
	_ = os.WriteFile(kr, []byte("[client.admin]\n\tkey = "+key+"\n"), 0o600)
	conf := filepath.Join(confDir, "ceph.conf")
	_ = os.WriteFile(conf, []byte("[global]\nmon host = "+strings.Join(mons, ",")+"\nkeyring = "+kr+"\n"), 0o600)

	ctx := context.Background()
	ours := func(tag string, i int, s *sample, mu *sync.Mutex) (func(), error) {
		name := fmt.Sprintf("bench-%s-%d", tag, i)
		t0 := time.Now()
		resp, err := ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
			VolumeCapabilities: []*csi.VolumeCapability{capab}, Parameters: params, Secrets: secrets})
		if err != nil {
			return nil, err
		}
		t1 := time.Now()
		id := resp.GetVolume().GetVolumeId()
		stage, target := filepath.Join(tmp, "s", name), filepath.Join(tmp, "t", name)
		if _, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: stage, VolumeCapability: capab, Secrets: secrets}); err != nil {
			return nil, err
		}
		if _, err := node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: stage, TargetPath: target, VolumeCapability: capab}); err != nil {
			return nil, err
		}
		t2 := time.Now()
		mu.Lock()
		s.create = append(s.create, t1.Sub(t0))
		s.stage = append(s.stage, t2.Sub(t1))
		mu.Unlock()
		return func() {
			_, _ = node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
			_, _ = node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: stage})
			_, _ = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: secrets})
		}, nil
	}
	bare := func(tag string, i int, s *sample, mu *sync.Mutex) (func(), error) {
		image := fmt.Sprintf("bare-%s-%d", tag, i)
		opts := librbd.NewRbdImageOptions()
		_ = opts.SetUint64(librbd.ImageOptionFeatures, librbd.FeatureLayering)
		t0 := time.Now()
		err := librbd.CreateImage(ioctx, image, size, opts)
		opts.Destroy()
		if err != nil {
			return nil, err
		}
		t1 := time.Now()
		fuse, stage, target := filepath.Join(tmp, "bf", image), filepath.Join(tmp, "bs", image), filepath.Join(tmp, "bt", image)
		for _, d := range []string{fuse, stage, target} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return nil, err
			}
		}
		if err := sh("rbd-fuse", "-c", conf, "--id", "admin", "-p", "rbd", "-r", image, fuse); err != nil {
			return nil, err
		}
		out, err := exec.Command("losetup", "--find", "--show", filepath.Join(fuse, image)).Output()
		if err != nil {
			return nil, fmt.Errorf("losetup: %w", err)
		}
		dev := strings.TrimSpace(string(out))
		if err := sh("mkfs.ext4", "-q", "-F", "-m0", "-b", "4096", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", dev); err != nil {
			return nil, err
		}
		if err := sh("mount", "-t", "ext4", dev, stage); err != nil {
			return nil, err
		}
		if err := sh("mount", "--bind", stage, target); err != nil {
			return nil, err
		}
		t2 := time.Now()
		mu.Lock()
		s.create = append(s.create, t1.Sub(t0))
		s.stage = append(s.stage, t2.Sub(t1))
		mu.Unlock()
		return func() {
			_ = sh("umount", target)
			_ = sh("umount", stage)
			_ = sh("losetup", "-d", dev)
			for j := 0; j < 50 && sh("umount", fuse) != nil; j++ {
				time.Sleep(100 * time.Millisecond)
			}
			_ = librbd.RemoveImage(ioctx, image)
		}, nil
	}
	cs := []contestant{{"csi-ceph (gRPC, rbd-fuse)", ours}, {"bare steps (go-ceph; rbd-fuse, losetup, mkfs, mount)", bare}}
	results, err := measure(cs, seq, conc, nil)
	if err != nil {
		return err
	}
	fmt.Printf("\nCreateVolume and NodeStage+NodePublish of 64 MiB ext4 volumes, measured %s on %s\n\n", time.Now().UTC().Format("2006-01-02"), hostname())
	table(results, cs)
	fmt.Println("\nTargets: create ≤ 1.5× the bare go-ceph create, stage+publish ≤ 1.2× the bare steps.")
	return nil
}

// contestant is one way of making and mounting a volume: f makes volume i
// of a run tagged tag, records its times in s and returns its undo.
type contestant struct {
	name string
	f    func(tag string, i int, s *sample, mu *sync.Mutex) (func(), error)
}

// measure runs each contestant seq times one after another and conc
// times at once, after two warm-up volumes, by scenario and contestant;
// settle (if not nil) runs after each contestant's volumes are removed,
// so that the next one does not pay for their clean-up.
func measure(cs []contestant, seq, conc int, settle func()) (map[string]map[string]*sample, error) {
	results := map[string]map[string]*sample{}
	for _, sc := range []struct {
		name string
		n    int
		conc bool
	}{{fmt.Sprintf("%d sequential", seq), seq, false}, {fmt.Sprintf("%d concurrent", conc), conc, true}} {
		results[sc.name] = map[string]*sample{}
		for _, c := range cs {
			fmt.Fprintf(os.Stderr, "csibench: %s, %s\n", sc.name, c.name)
			// Warm up: the first calls set up connections on both paths.
			var wmu sync.Mutex
			for w := 0; w < 2; w++ {
				undo, err := c.f("warmup"+strings.ReplaceAll(sc.name, " ", ""), w, &sample{}, &wmu)
				if err != nil {
					return nil, fmt.Errorf("%s warm-up: %w", c.name, err)
				}
				undo()
			}
			s := &sample{}
			var mu sync.Mutex
			var cleanups []func()
			var firstErr error
			var wg sync.WaitGroup
			for i := 0; i < sc.n; i++ {
				do := func(i int) {
					undo, err := c.f(strings.ReplaceAll(sc.name, " ", ""), i, s, &mu)
					mu.Lock()
					defer mu.Unlock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					if undo != nil {
						cleanups = append(cleanups, undo)
					}
				}
				if sc.conc {
					wg.Add(1)
					go func(i int) { defer wg.Done(); do(i) }(i)
				} else {
					do(i)
				}
			}
			wg.Wait()
			for _, u := range cleanups {
				u()
			}
			if settle != nil {
				settle()
			}
			if firstErr != nil {
				return nil, fmt.Errorf("%s: %w", c.name, firstErr)
			}
			results[sc.name][c.name] = s
		}
	}
	return results, nil
}

func scenarioNames(results map[string]map[string]*sample) []string {
	var names []string
	for k := range results {
		names = append(names, k)
	}
	sort.Sort(sort.Reverse(sort.StringSlice(names)))
	return names
}

func hostname() string { h, _ := os.Hostname(); return h }
