package csi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/e2e/fabric"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/nodeinfra/nodeinfra/csi-ceph/mapper"
	"github.com/nodeinfra/nodeinfra/csi-ceph/mounts"
	"github.com/nodeinfra/nodeinfra/pkg/testutil"
)

// driver is the csi-ceph binary in mode all against the run's cluster,
// with its state, socket and mapper cgroup of its own. It can be killed
// and started again on the same state, as a plugin restart does.
type driver struct {
	fs *csi.VolumeCapability
	csi.ControllerClient
	csi.NodeClient
	secrets map[string]string
	params  map[string]string
	dir     string
	// mappers is the cgroup the driver starts rbd-fuse in.
	mappers *cgroup

	bin, config string
	// extra are more flags, after the driver's own.
	extra []string
	mu    sync.Mutex
	cmd   *exec.Cmd
	conn  *grpc.ClientConn
	log   bytes.Buffer
}

// startDriver runs the csi-ceph binary in mode all against the run's
// cluster, with extra flags, and connects to it.
func startDriver(t *testing.T, extra ...string) *driver {
	t.Helper()
	testutil.RequiresRoot(t)
	bin := os.Getenv("NODEINFRA_BIN")
	if bin == "" {
		t.Skip("needs NODEINFRA_BIN: run `make test`")
	}
	cl := testutil.Ceph(t)
	dir := t.TempDir()
	d := &driver{secrets: cl.Secrets(), params: cl.Params("rbd"), dir: dir, bin: filepath.Join(bin, "csi-ceph"),
		config: filepath.Join(dir, "config.json"), extra: extra}
	if err := os.WriteFile(d.config, []byte(fmt.Sprintf(`[{"clusterID": %q, "monitors": [%q]}]`, cl.ClusterID, cl.Monitors[0])), 0o600); err != nil {
		t.Fatal(err)
	}
	// Registered first, so removed last: after the volumes and the driver.
	d.mappers = newCgroup(t, "mappers", true)
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			t.Logf("driver log:\n%s", d.log.String())
		}
	})
	d.start(t, nil)
	return d
}

// start starts the binary (again), in cgroup in if it is not nil, and
// connects to it.
func (d *driver) start(t *testing.T, in *cgroup) {
	t.Helper()
	sock := filepath.Join(d.dir, "csi.sock")
	_ = os.Remove(sock)
	args := []string{"--endpoint", "unix://" + sock, "--nodeid", "data-node", "--mode", "all",
		"--cluster-config", d.config, "--state-dir", filepath.Join(d.dir, "state"), "--mapper-cgroup", d.mappers.path}
	args = append(args, d.extra...)
	cmd := exec.Command(d.bin, args...)
	if in != nil {
		// Into the group in every hierarchy before it runs, as a
		// container's process is.
		const script = `while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"`
		a := append(append([]string{"-c", script, "sh"}, in.procs()...), "--", d.bin)
		cmd = exec.Command("/bin/sh", append(a, args...)...)
	}
	cmd.Stdout, cmd.Stderr = &d.log, &d.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.cmd, d.conn = cmd, conn
	d.mu.Unlock()
	d.ControllerClient, d.NodeClient = csi.NewControllerClient(conn), csi.NewNodeClient(conn)
}

// kill ends the driver (SIGKILL) and waits for it.
func (d *driver) kill() {
	d.mu.Lock()
	cmd, conn := d.cmd, d.conn
	d.cmd, d.conn = nil, nil
	d.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	if cmd != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// delete deletes a volume at the end of a test. An rbd-fuse the test
// killed leaves its watch on the image for about 30 s (the OSDs' watch
// timeout), and the image cannot be deleted until it goes: the dead
// client is blocklisted, as `rbd rm` advises.
func (d *driver) delete(t *testing.T, id, image string) {
	ctx := context.Background()
	_, err := d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: d.secrets})
	if status.Code(err) != codes.FailedPrecondition {
		return
	}
	conf := testutil.Ceph(t).Conf
	out, _ := execOut("rbd", "-c", conf, "status", "rbd/"+image)
	for _, f := range strings.Fields(out) {
		if addr, ok := strings.CutPrefix(f, "watcher="); ok {
			if out, err := execOut("ceph", "-c", conf, "osd", "blocklist", "add", addr, "600"); err != nil {
				t.Logf("blocklist %s: %v %s", addr, err, out)
			}
		}
	}
	for i := 0; i < 50; i++ {
		if _, err = d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id, Secrets: d.secrets}); err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("delete volume %s: %v", id, err)
}

// cgroup is a test cgroup in every hierarchy (each v1 controller, the
// named and the unified ones), removed when the test ends after whatever
// is left in it is killed.
type cgroup struct {
	path string
	dirs []string
}

// newCgroup makes a test cgroup; one that must be empty when the test
// ends (the mapper daemons') is created with mustEmpty.
func newCgroup(t *testing.T, tag string, mustEmpty bool) *cgroup {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	path := "/csi-ceph-e2e-" + tag + "-" + hex.EncodeToString(b)
	// mapper.NewDaemons makes the group the way the driver will.
	dm, err := mapper.NewDaemons(path)
	if err != nil {
		t.Fatal(err)
	}
	c := &cgroup{path: path, dirs: dm.Dirs()}
	t.Cleanup(func() {
		if left := c.killAll(); len(left) > 0 && mustEmpty {
			t.Errorf("processes left in cgroup %s: %v", path, left)
		}
		for _, d := range c.dirs {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove cgroup: %v", err)
			}
		}
	})
	return c
}

func (c *cgroup) procs() []string {
	var out []string
	for _, d := range c.dirs {
		out = append(out, filepath.Join(d, "cgroup.procs"))
	}
	return out
}

// pids are the processes in the group, in any hierarchy.
func (c *cgroup) pids() []int {
	seen := map[int]bool{}
	var out []int
	for _, p := range c.procs() {
		b, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				out = append(out, pid)
			}
		}
	}
	return out
}

// killAll kills every process in the group, as a container runtime does
// when a container with the host's PID namespace stops, and returns what
// it found there.
func (c *cgroup) killAll() []int {
	var found []int
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := c.pids()
		if len(pids) == 0 || time.Now().After(deadline) {
			return found
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
			found = append(found, pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// record is a staging record of the driver, as JSON.
func (d *driver) record(t *testing.T, volumeID string) (string, map[string]any) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(d.dir, "state", "staged", "*.json"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var r map[string]any
		if json.Unmarshal(b, &r) == nil && r["volumeID"] == volumeID {
			return f, r
		}
	}
	t.Fatalf("no staging record of %s", volumeID)
	return "", nil
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// fuseDaemons returns the PIDs of the rbd-fuse processes that serve a
// work dir under dir.
func fuseDaemons(dir string) []int {
	var out []int
	for _, p := range fabric.Processes() {
		if p.Name() == "rbd-fuse" && p.Mentions(dir) {
			out = append(out, p.Pid)
		}
	}
	return out
}

// volumeCondition decodes the VolumeCondition (field 2, CSI 1.12) of a
// NodeGetVolumeStatsResponse, as a kubelet reads it.
func volumeCondition(t *testing.T, resp *csi.NodeGetVolumeStatsResponse) (abnormal bool, msg string) {
	t.Helper()
	b := resp.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad unknown fields")
		}
		b = b[n:]
		if num != 2 || typ != protowire.BytesType {
			b = b[protowire.ConsumeFieldValue(num, typ, b):]
			continue
		}
		cond, n := protowire.ConsumeBytes(b)
		b = b[n:]
		for len(cond) > 0 {
			num, typ, n := protowire.ConsumeTag(cond)
			cond = cond[n:]
			switch {
			case num == 1 && typ == protowire.VarintType:
				v, n := protowire.ConsumeVarint(cond)
				abnormal, cond = v != 0, cond[n:]
			case num == 2 && typ == protowire.BytesType:
				s, n := protowire.ConsumeString(cond)
				msg, cond = s, cond[n:]
			default:
				cond = cond[protowire.ConsumeFieldValue(num, typ, cond):]
			}
		}
		return abnormal, msg
	}
	t.Fatal("NodeGetVolumeStats carries no volume condition")
	return false, ""
}

// leftovers reports mounts and loop devices under dir (sysfs only: a loop
// on a dead FUSE file hangs losetup -a).
func leftovers(dir string) []string {
	var out []string
	under, _ := mounts.Under(dir)
	for _, m := range under {
		out = append(out, "mount "+m)
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if b, err := os.ReadFile(l); err == nil && strings.Contains(string(b), dir) {
			out = append(out, "loop "+strings.TrimSpace(string(b)))
		}
	}
	return out
}

func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
