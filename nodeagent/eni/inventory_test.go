package eni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// ---------------------------------------------------------------------------
// Fake Links

// fakeLinks is an in-memory Links: the node namespace is a map MAC -> link,
// and each pod namespace (by path) that exists holds a set of links.
type fakeLinks struct {
	mu        sync.Mutex
	node      map[string]LinkInfo
	netns     map[string]map[string]LinkInfo // path -> MAC -> link; present = alive
	nextIndex int

	quiesceCalls int
	quiesced     map[string]int // MAC -> Quiesce calls
	lookupCalls  int

	quiesceErr  error
	snapshotErr error
	inNetnsErr  error
}

var _ Links = (*fakeLinks)(nil)

func newFakeLinks() *fakeLinks {
	return &fakeLinks{
		node:      map[string]LinkInfo{},
		netns:     map[string]map[string]LinkInfo{},
		nextIndex: 2,
		quiesced:  map[string]int{},
	}
}

func (f *fakeLinks) Lookup(mac, hint string) (LinkInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookupCalls++
	if l, ok := f.node[mac]; ok {
		return l, nil
	}
	return LinkInfo{}, fmt.Errorf("no link with MAC %s (hint %q): %w", mac, hint, errdefs.ErrNotFound)
}

func (f *fakeLinks) Snapshot() (map[string]LinkInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.snapshotErr != nil {
		return nil, f.snapshotErr
	}
	out := make(map[string]LinkInfo, len(f.node))
	for m, l := range f.node {
		out[m] = l
	}
	return out, nil
}

func (f *fakeLinks) Quiesce(l LinkInfo, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.quiesceCalls++
	if f.quiesceErr != nil {
		return f.quiesceErr
	}
	for m, cur := range f.node {
		if cur.Index == l.Index {
			cur.Up, cur.Addrs, cur.Name = false, 0, name
			f.node[m] = cur
			f.quiesced[m]++
			return nil
		}
	}
	return fmt.Errorf("quiesce: no link with index %d: %w", l.Index, errdefs.ErrNotFound)
}

func (f *fakeLinks) InNetns(path, mac string) (bool, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inNetnsErr != nil {
		return false, false, f.inNetnsErr
	}
	ns, ok := f.netns[path]
	if !ok {
		return false, false, nil
	}
	_, has := ns[mac]
	return true, has, nil
}

// addLink creates a link in the node namespace, up and with an address, as
// a freshly hot-plugged NIC might be.
func (f *fakeLinks) addLink(mac, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.node[mac] = LinkInfo{Index: f.nextIndex, Name: name, Up: true, Addrs: 1}
	f.nextIndex++
}

// setLink changes a link of the node namespace.
func (f *fakeLinks) setLink(mac, name string, up bool, addrs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.node[mac]
	if !ok {
		panic("setLink: no link " + mac)
	}
	l.Name, l.Up, l.Addrs = name, up, addrs
	f.node[mac] = l
}

// removeLink makes a link vanish from everywhere.
func (f *fakeLinks) removeLink(mac string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.node, mac)
	for _, ns := range f.netns {
		delete(ns, mac)
	}
}

// addNetns creates an (empty) pod namespace.
func (f *fakeLinks) addNetns(path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.netns[path] == nil {
		f.netns[path] = map[string]LinkInfo{}
	}
}

// moveToNetns moves a link of the node namespace into a pod namespace
// (creating it), named ifname, up and configured, as the CNI plugin does.
func (f *fakeLinks) moveToNetns(mac, path, ifname string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.node[mac]
	if !ok {
		panic("moveToNetns: no link " + mac)
	}
	delete(f.node, mac)
	if f.netns[path] == nil {
		f.netns[path] = map[string]LinkInfo{}
	}
	l.Name, l.Up, l.Addrs = ifname, true, 2
	f.netns[path][mac] = l
}

// moveToNode moves a link from a pod namespace back to the node namespace
// keeping its pod name and configuration, as the CNI DEL does.
func (f *fakeLinks) moveToNode(mac, path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.netns[path][mac]
	if !ok {
		panic("moveToNode: no link " + mac + " in " + path)
	}
	delete(f.netns[path], mac)
	f.node[mac] = l
}

// killNetns destroys a pod namespace. Physical links in it come back to the
// node namespace when returnLinks is set (what the kernel does), or are lost.
func (f *fakeLinks) killNetns(path string, returnLinks bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if returnLinks {
		for m, l := range f.netns[path] {
			f.node[m] = l
		}
	}
	delete(f.netns, path)
}

func (f *fakeLinks) link(mac string) (LinkInfo, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.node[mac]
	return l, ok
}

func (f *fakeLinks) quiesceCount(mac string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.quiesced[mac]
}

func (f *fakeLinks) totalQuiesce() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.quiesceCalls
}

func (f *fakeLinks) setErrs(quiesce, snapshot, inNetns error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.quiesceErr, f.snapshotErr, f.inNetnsErr = quiesce, snapshot, inNetns
}

// ---------------------------------------------------------------------------
// Helpers

var bg = context.Background()

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func macN(i int) string { return fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8, i&0xff) }

func hostName(i int) string { return fmt.Sprintf("ens%d", i+5) }

// eniConfig is a valid config for the i-th ENI of a VPC.
func eniConfig(i int, vpc string) Config {
	return Config{VPC: vpc, Spec: enilink.Spec{MAC: macN(i), Addresses: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i&0xff) + 2}), 16)}, Gateways: []netip.Addr{netip.MustParseAddr("10.0.255.1")}}}
}

func pod(name string) k8sname.Pod { return k8sname.Pod{Namespace: "default", Name: name} }

func key(cid string) AttachmentKey { return AttachmentKey{ContainerID: cid, IfName: "eth0"} }

func netnsPath(cid string) string { return "/var/run/netns/cni-" + cid }

func attachReq(cid, podName string) AttachRequest {
	return AttachRequest{AttachmentKey: key(cid), Netns: netnsPath(cid), Pod: pod(podName)}
}

func openInv(t *testing.T, fl *fakeLinks, dir string) *Inventory {
	t.Helper()
	st, err := NewStore(dir)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	inv, err := Open(bg, st, fl, discardLog())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return inv
}

// env is an inventory on a fake node with links for ENIs 0..n-1.
type env struct {
	t   *testing.T
	dir string
	fl  *fakeLinks
	inv *Inventory
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), fl: newFakeLinks()}
	e.inv = openInv(t, e.fl, e.dir)
	return e
}

// register creates the link of ENI i and registers it in vpc.
func (e *env) register(i int, vpc string) ENI {
	e.t.Helper()
	e.fl.addLink(macN(i), hostName(i))
	got, err := e.inv.Register(bg, eniConfig(i, vpc))
	if err != nil {
		e.t.Fatalf("Register(%d): %v", i, err)
	}
	return got
}

func (e *env) assignMAC(podName string, i int) {
	e.t.Helper()
	if _, err := e.inv.Assign(bg, Assignment{Pod: pod(podName), MAC: macN(i)}); err != nil {
		e.t.Fatalf("Assign %s -> %s: %v", podName, macN(i), err)
	}
}

func (e *env) assignVPC(podName, vpc string) {
	e.t.Helper()
	if _, err := e.inv.Assign(bg, Assignment{Pod: pod(podName), VPC: vpc}); err != nil {
		e.t.Fatalf("Assign %s -> %s: %v", podName, vpc, err)
	}
}

func (e *env) attach(cid, podName string) Attachment {
	e.t.Helper()
	a, _, err := e.inv.Attach(bg, attachReq(cid, podName))
	if err != nil {
		e.t.Fatalf("Attach(%s, %s): %v", cid, podName, err)
	}
	return a
}

// attachAndMove attaches and moves the link into the pod, as the plugin does.
func (e *env) attachAndMove(cid, podName string) Attachment {
	e.t.Helper()
	a := e.attach(cid, podName)
	e.fl.moveToNetns(a.MAC, a.Netns, a.IfName)
	return a
}

func (e *env) eni(m string) ENI {
	e.t.Helper()
	for _, x := range e.inv.List("") {
		if x.MAC == m {
			return x
		}
	}
	e.t.Fatalf("ENI %s not listed", m)
	return ENI{}
}

func (e *env) wantState(m string, want State) {
	e.t.Helper()
	if got := e.eni(m).State; got != want {
		e.t.Fatalf("ENI %s state = %q, want %q", m, got, want)
	}
}

func (e *env) wantQuiet(i int) {
	e.t.Helper()
	l, ok := e.fl.link(macN(i))
	if !ok {
		e.t.Fatalf("link %s is not in the node namespace", macN(i))
	}
	if !l.Quiet(hostName(i)) {
		e.t.Fatalf("link %s = %+v, want down, no addresses, named %s", macN(i), l, hostName(i))
	}
}

// readSnapshot checks the files of the state dir (every JSON file valid,
// no temporary file left) and returns what a fresh Store loads from it.
func (e *env) readSnapshot() snapshot {
	e.t.Helper()
	return loadDir(e.t, e.dir)
}

func loadDir(t *testing.T, dir string) snapshot {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "enis.json"))
	if err != nil {
		t.Fatalf("read state: %v", err)
	}
	if !json.Valid(b) {
		t.Fatalf("state file is not valid JSON: %s", b)
	}
	assertStateFiles(t, dir)
	st, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.log = discardLog()
	s, err := st.load()
	if err != nil {
		t.Fatalf("load state: %v", err)
	}
	return s
}

// assertStateFiles checks that every regular file under dir is a JSON file
// with valid content and that no temporary file (dot-named) is left.
func assertStateFiles(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			t.Errorf("temporary file %s left behind", p)
			return nil
		}
		if !strings.HasSuffix(d.Name(), ".json") {
			t.Errorf("unexpected file %s in the state dir", p)
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !json.Valid(b) {
			t.Errorf("%s is not valid JSON: %q", p, b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if target == nil {
		if err != nil {
			t.Fatalf("%s: unexpected error %v", what, err)
		}
		return
	}
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want one wrapping %v", what, err, target)
	}
}

// ---------------------------------------------------------------------------
// Store

func TestStoreRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "state")
	st, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.log = discardLog()
	if st.Path() != filepath.Join(dir, "enis.json") {
		t.Fatalf("Path = %s", st.Path())
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode = %v, %v; want 0700", fi, err)
	}
	s, err := st.load()
	if err != nil || s.Version != stateVersion || len(s.ENIs)+len(s.Missing)+len(s.Assignments)+len(s.Attachments) != 0 {
		t.Fatalf("load of an empty dir = %+v, %v", s, err)
	}

	created := time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)
	att := func(cid, ifname, m string) Attachment {
		return Attachment{AttachmentKey: AttachmentKey{cid, ifname}, Netns: "/run/netns/" + cid, Pod: pod("p-" + cid), MAC: m, Created: created}
	}
	want := snapshot{
		Version:     stateVersion,
		ENIs:        []Config{eniConfig(1, "vpc-a"), eniConfig(2, "vpc-a")},
		Missing:     []string{macN(2)},
		Assignments: []Assignment{{Pod: pod("p"), VPC: "vpc-a"}, {Pod: pod("q"), MAC: macN(1)}},
		Attachments: []Attachment{
			att("c1", "eth0", macN(1)),
			// Keys with path separators and dots stay inside the store.
			att("../../escape", "../x", macN(3)),
			att("c/with/slashes", "eth1", macN(4)),
		},
	}
	if err := st.saveControl(want); err != nil {
		t.Fatal(err)
	}
	for _, a := range want.Attachments {
		if err := st.putAttachment(a, false); err != nil {
			t.Fatalf("putAttachment(%+v): %v", a.AttachmentKey, err)
		}
	}
	// A new attachment never overwrites an existing one.
	if err := st.putAttachment(want.Attachments[0], false); err == nil {
		t.Fatal("putAttachment of an existing key succeeded")
	}
	// A changed one replaces its file.
	want.Attachments[0].Confirmed = true
	if err := st.putAttachment(want.Attachments[0], true); err != nil {
		t.Fatal(err)
	}
	got := loadDir(t, dir)
	sortAtt := func(as []Attachment) {
		sort.Slice(as, func(i, j int) bool { return as[i].MAC < as[j].MAC })
	}
	sortAtt(got.Attachments)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("load =\n %+v\nwant\n %+v", got, want)
	}
	var outside []string
	_ = filepath.WalkDir(filepath.Dir(filepath.Dir(dir)), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			outside = append(outside, p)
		}
		return nil
	})
	if len(outside) != 0 {
		t.Fatalf("files written outside the state dir: %v", outside)
	}

	// Delete, and delete again.
	for range 2 {
		if err := st.deleteAttachment(want.Attachments[1].AttachmentKey); err != nil {
			t.Fatalf("deleteAttachment: %v", err)
		}
	}
	got = loadDir(t, dir)
	if len(got.Attachments) != 2 {
		t.Fatalf("attachments after delete = %+v", got.Attachments)
	}
}

func TestStoreLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, content string
	}{
		{"not JSON", "{not json"},
		{"truncated", `{"version":1,"enis":[`},
		{"wrong version", `{"version":2,"enis":[]}`},
		{"old version", `{"version":0,"enis":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			st, err := NewStore(dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(st.Path(), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := st.load(); err == nil {
				t.Fatal("load succeeded")
			}
			if _, err := Open(bg, st, newFakeLinks(), discardLog()); err == nil {
				t.Fatal("Open succeeded on a bad state file")
			}
		})
	}
}

// Files an interrupted write leaves in the attachments dir are dropped at
// load: a torn attachment was never answered, a temporary file never
// renamed.
func TestStoreLoadDropsTornAttachments(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	e.assignMAC("p1", 1)
	a := e.attachAndMove("c1", "p1")
	adir := filepath.Join(e.dir, "attachments")
	for name, content := range map[string]string{
		"torn.json":              "",
		"garbage.json":           "{",
		"nokey.json":             `{"mac":"` + macN(2) + `"}`,
		".x.json.tmp-123":        "{}",
		".enis.json.tmp-1234567": "{}",
	} {
		if err := os.WriteFile(filepath.Join(adir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	inv2 := openInv(t, e.fl, e.dir)
	if got := inv2.Attachments(); len(got) != 1 || got[0].AttachmentKey != a.AttachmentKey {
		t.Fatalf("Attachments after reopen = %+v", got)
	}
	ents, err := os.ReadDir(adir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		var names []string
		for _, d := range ents {
			names = append(names, d.Name())
		}
		t.Fatalf("attachments dir after load = %v, want one file", names)
	}
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	assertStateFiles(t, dir)
}

// ---------------------------------------------------------------------------
// Register / Remove

func TestRegister(t *testing.T) {
	t.Run("link must exist", func(t *testing.T) {
		e := newEnv(t)
		_, err := e.inv.Register(bg, eniConfig(1, "vpc-a"))
		wantErr(t, "Register", err, errdefs.ErrNotFound)
		if l := e.inv.List(""); len(l) != 0 {
			t.Fatalf("List = %+v, want empty", l)
		}
		if _, err := os.Stat(filepath.Join(e.dir, "enis.json")); err == nil {
			if s := e.readSnapshot(); len(s.ENIs) != 0 {
				t.Fatalf("failed registration saved: %+v", s.ENIs)
			}
		}
	})

	t.Run("invalid config never touches links", func(t *testing.T) {
		e := newEnv(t)
		e.fl.addLink(macN(1), hostName(1))
		c := eniConfig(1, "vpc-a")
		c.MTU = 10
		_, err := e.inv.Register(bg, c)
		wantErr(t, "Register", err, errdefs.ErrInvalidArgument)
		if e.fl.totalQuiesce() != 0 {
			t.Fatal("invalid config quiesced a link")
		}
	})

	t.Run("host name from link, link quiesced, idempotent", func(t *testing.T) {
		e := newEnv(t)
		e.fl.addLink(macN(1), "ens7")
		c := eniConfig(1, "vpc-a")
		c.MAC = strings.ToUpper(c.MAC)
		c.HostName = "bogus-hint"
		got, err := e.inv.Register(bg, c)
		if err != nil {
			t.Fatal(err)
		}
		if got.MAC != macN(1) || got.HostName != "ens7" || got.State != StateFree || got.AssignedPod != nil || got.Attachment != nil {
			t.Fatalf("Register = %+v", got)
		}
		l, _ := e.fl.link(macN(1))
		if !l.Quiet("ens7") || e.fl.quiesceCount(macN(1)) != 1 {
			t.Fatalf("link not quiesced: %+v (%d calls)", l, e.fl.quiesceCount(macN(1)))
		}
		if s := e.readSnapshot(); len(s.ENIs) != 1 || s.ENIs[0].HostName != "ens7" || s.ENIs[0].MAC != macN(1) {
			t.Fatalf("state = %+v", s.ENIs)
		}

		// The same spec again, with another hint and MAC spelling: no-op.
		e.fl.setLink(macN(1), "renamed", true, 3)
		c2 := eniConfig(1, "vpc-a")
		c2.HostName = "other"
		again, err := e.inv.Register(bg, c2)
		if err != nil {
			t.Fatalf("second Register: %v", err)
		}
		if !reflect.DeepEqual(again, got) {
			t.Fatalf("second Register = %+v, want %+v", again, got)
		}
		if e.fl.quiesceCount(macN(1)) != 1 {
			t.Fatal("second Register touched the link")
		}
		if n := len(e.inv.List("")); n != 1 {
			t.Fatalf("%d ENIs listed", n)
		}
	})

	for _, tc := range []struct {
		name   string
		mutate func(*Config)
	}{
		{"other VPC", func(c *Config) { c.VPC = "vpc-b" }},
		{"other MTU", func(c *Config) { c.MTU = 9001 }},
		{"other address", func(c *Config) { c.Addresses = []netip.Prefix{netip.MustParsePrefix("10.0.9.9/16")} }},
		{"other gateway", func(c *Config) { c.Gateways = []netip.Addr{netip.MustParseAddr("10.0.0.1")} }},
		{"extra route", func(c *Config) { c.Routes = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")} }},
	} {
		t.Run("another spec: "+tc.name, func(t *testing.T) {
			e := newEnv(t)
			orig := e.register(1, "vpc-a")
			c := eniConfig(1, "vpc-a")
			tc.mutate(&c)
			_, err := e.inv.Register(bg, c)
			wantErr(t, "Register", err, errdefs.ErrAlreadyExists)
			if got := e.eni(macN(1)); !reflect.DeepEqual(got, orig) {
				t.Fatalf("ENI changed to %+v", got)
			}
		})
	}

	t.Run("quiesce failure", func(t *testing.T) {
		e := newEnv(t)
		e.fl.addLink(macN(1), hostName(1))
		boom := errors.New("boom")
		e.fl.setErrs(boom, nil, nil)
		_, err := e.inv.Register(bg, eniConfig(1, "vpc-a"))
		wantErr(t, "Register", err, boom)
		if l := e.inv.List(""); len(l) != 0 {
			t.Fatalf("List = %+v, want empty", l)
		}
	})

	t.Run("a missing ENI registered again stays registered", func(t *testing.T) {
		e := newEnv(t)
		e.register(1, "vpc-a")
		e.fl.removeLink(macN(1))
		if _, err := e.inv.Reconcile(bg); err != nil {
			t.Fatal(err)
		}
		e.wantState(macN(1), StateMissing)
		if _, err := e.inv.Register(bg, eniConfig(1, "vpc-a")); err != nil {
			t.Fatalf("Register of a known missing ENI: %v", err)
		}
	})
}

func TestRemove(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(e *env)
		mac   string
		want  error
	}{
		{"invalid MAC", func(e *env) {}, "nope", errdefs.ErrInvalidArgument},
		{"not found", func(e *env) {}, macN(9), errdefs.ErrNotFound},
		{"attached", func(e *env) { e.assignMAC("p1", 1); e.attach("c1", "p1") }, macN(1), errdefs.ErrFailedPrecondition},
		{"attached through the pool", func(e *env) { e.assignVPC("p1", "vpc-a"); e.attach("c1", "p1") }, macN(1), errdefs.ErrFailedPrecondition},
		{"explicitly assigned", func(e *env) { e.assignMAC("p1", 1) }, macN(1), errdefs.ErrFailedPrecondition},
		{"free", func(e *env) {}, macN(1), nil},
		{"free, upper-case MAC", func(e *env) {}, strings.ToUpper(macN(1)), nil},
		{"free after unassign", func(e *env) {
			e.assignMAC("p1", 1)
			if err := e.inv.Unassign(bg, pod("p1")); err != nil {
				e.t.Fatal(err)
			}
		}, macN(1), nil},
		{"missing", func(e *env) {
			e.fl.removeLink(macN(1))
			if _, err := e.inv.Reconcile(bg); err != nil {
				e.t.Fatal(err)
			}
			e.wantState(macN(1), StateMissing)
		}, macN(1), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.register(1, "vpc-a")
			tc.setup(e)
			err := e.inv.Remove(bg, tc.mac)
			wantErr(t, "Remove", err, tc.want)
			n := len(e.inv.List(""))
			if tc.want == nil {
				if n != 0 {
					t.Fatalf("ENI still listed after Remove")
				}
				s := e.readSnapshot()
				if len(s.ENIs) != 0 || len(s.Missing) != 0 {
					t.Fatalf("state after Remove = %+v", s)
				}
				// It can be registered again.
				e.fl.addLink(macN(1), hostName(1))
				if _, err := e.inv.Register(bg, eniConfig(1, "vpc-b")); err != nil {
					t.Fatalf("Register after Remove: %v", err)
				}
				e.wantState(macN(1), StateFree)
			} else if tc.name != "invalid MAC" && tc.name != "not found" && n != 1 {
				t.Fatalf("refused Remove dropped the ENI")
			}
		})
	}
}

// A Remove whose save fails must leave memory and the next saved state as
// they were.
func TestRemoveSaveFailureRollback(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	// Make the save fail: the state dir is gone, so CreateTemp fails.
	if err := os.RemoveAll(e.dir); err != nil {
		t.Fatal(err)
	}
	if err := e.inv.Remove(bg, macN(1)); err == nil {
		t.Fatal("Remove succeeded without a state dir")
	}
	e.wantState(macN(1), StateFree)
	if err := os.MkdirAll(e.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	e.assignVPC("p1", "vpc-a") // any change saves the state again
	if s := e.readSnapshot(); len(s.Missing) != 0 {
		t.Fatalf("free ENI saved as missing: %v", s.Missing)
	}
}

// ---------------------------------------------------------------------------
// Assign / Unassign

func TestAssignValidation(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	for _, tc := range []struct {
		name string
		a    Assignment
		want error
	}{
		{"neither MAC nor VPC", Assignment{Pod: pod("p1")}, errdefs.ErrInvalidArgument},
		{"both MAC and VPC", Assignment{Pod: pod("p1"), MAC: macN(1), VPC: "vpc-a"}, errdefs.ErrInvalidArgument},
		{"bad pod", Assignment{Pod: k8sname.Pod{Namespace: "Default", Name: "p1"}, VPC: "vpc-a"}, errdefs.ErrInvalidArgument},
		{"empty pod", Assignment{VPC: "vpc-a"}, errdefs.ErrInvalidArgument},
		{"bad MAC", Assignment{Pod: pod("p1"), MAC: "02:00"}, errdefs.ErrInvalidArgument},
		{"bad VPC", Assignment{Pod: pod("p1"), VPC: "vpc a"}, errdefs.ErrInvalidArgument},
		{"MAC not registered", Assignment{Pod: pod("p1"), MAC: macN(2)}, errdefs.ErrNotFound},
		{"VPC without ENIs is fine", Assignment{Pod: pod("p2"), VPC: "vpc-empty"}, nil},
		{"MAC normalized", Assignment{Pod: pod("p3"), MAC: strings.ToUpper(macN(1))}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.inv.Assign(bg, tc.a)
			wantErr(t, "Assign", err, tc.want)
			if tc.want == nil && got.MAC != strings.ToLower(tc.a.MAC) {
				t.Fatalf("Assign returned MAC %q", got.MAC)
			}
		})
	}
	want := []Assignment{
		{Pod: pod("p2"), VPC: "vpc-empty"},
		{Pod: pod("p3"), MAC: macN(1)},
	}
	if got := e.inv.Assignments(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Assignments = %+v, want %+v", got, want)
	}
	if ap := e.eni(macN(1)).AssignedPod; ap == nil || *ap != pod("p3") {
		t.Fatalf("AssignedPod = %v", ap)
	}
}

func TestAssignConflictsAndReplace(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	e.register(2, "vpc-a")
	e.register(3, "vpc-b")

	e.assignMAC("p1", 1)
	// Reserved by another pod.
	_, err := e.inv.Assign(bg, Assignment{Pod: pod("p2"), MAC: macN(1)})
	wantErr(t, "Assign reserved MAC", err, errdefs.ErrFailedPrecondition)
	// Same pod, same MAC: fine.
	e.assignMAC("p1", 1)

	// Attached (through the pool) to another pod.
	e.assignVPC("pool", "vpc-b")
	if a := e.attach("cpool", "pool"); a.MAC != macN(3) {
		t.Fatalf("pool attach got %s", a.MAC)
	}
	_, err = e.inv.Assign(bg, Assignment{Pod: pod("p2"), MAC: macN(3)})
	wantErr(t, "Assign attached MAC", err, errdefs.ErrFailedPrecondition)
	// The pod that holds it may be assigned it explicitly.
	e.assignMAC("pool", 3)

	// Re-assigning replaces: p1 moves to ENI 2, ENI 1 is released.
	e.assignMAC("p1", 2)
	if ap := e.eni(macN(1)).AssignedPod; ap != nil {
		t.Fatalf("ENI 1 still assigned to %v", ap)
	}
	if ap := e.eni(macN(2)).AssignedPod; ap == nil || *ap != pod("p1") {
		t.Fatalf("ENI 2 assigned to %v", ap)
	}
	e.assignMAC("p2", 1)

	// Replacing an explicit assignment by a VPC releases the MAC.
	e.assignVPC("p1", "vpc-a")
	if ap := e.eni(macN(2)).AssignedPod; ap != nil {
		t.Fatalf("ENI 2 still assigned to %v", ap)
	}
	want := []Assignment{
		{Pod: pod("p1"), VPC: "vpc-a"},
		{Pod: pod("p2"), MAC: macN(1)},
		{Pod: pod("pool"), MAC: macN(3)},
	}
	if got := e.inv.Assignments(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Assignments = %+v, want %+v", got, want)
	}
	// An attachment already made is not changed by Assign.
	if a, _, err := e.inv.Get(bg, key("cpool")); err != nil || a.MAC != macN(3) {
		t.Fatalf("Get = %+v, %v", a, err)
	}

	// Unassign.
	wantErr(t, "Unassign bad pod", e.inv.Unassign(bg, k8sname.Pod{}), errdefs.ErrInvalidArgument)
	wantErr(t, "Unassign unknown", e.inv.Unassign(bg, pod("nobody")), nil)
	wantErr(t, "Unassign", e.inv.Unassign(bg, pod("p2")), nil)
	if ap := e.eni(macN(1)).AssignedPod; ap != nil {
		t.Fatalf("ENI 1 still assigned to %v after Unassign", ap)
	}
	e.assignMAC("p3", 1)
	if s := e.readSnapshot(); len(s.Assignments) != 3 {
		t.Fatalf("saved assignments = %+v", s.Assignments)
	}
}

// ---------------------------------------------------------------------------
// Attach

func TestAttachValidation(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	e.assignVPC("p1", "vpc-a")
	good := attachReq("c1", "p1")
	for _, tc := range []struct {
		name   string
		mutate func(*AttachRequest)
	}{
		{"no container ID", func(r *AttachRequest) { r.ContainerID = "" }},
		{"no ifname", func(r *AttachRequest) { r.IfName = "" }},
		{"no netns", func(r *AttachRequest) { r.Netns = "" }},
		{"relative netns", func(r *AttachRequest) { r.Netns = "var/run/netns/x" }},
		{"dot netns", func(r *AttachRequest) { r.Netns = "./x" }},
		{"bad pod", func(r *AttachRequest) { r.Pod = k8sname.Pod{Namespace: "default", Name: "P1"} }},
		{"empty pod", func(r *AttachRequest) { r.Pod = k8sname.Pod{} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := good
			tc.mutate(&r)
			_, _, err := e.inv.Attach(bg, r)
			wantErr(t, "Attach", err, errdefs.ErrInvalidArgument)
		})
	}
	if a := e.inv.Attachments(); len(a) != 0 {
		t.Fatalf("Attachments = %+v", a)
	}
}

func TestAttach(t *testing.T) {
	t.Run("no assignment", func(t *testing.T) {
		e := newEnv(t)
		e.register(1, "vpc-a")
		_, _, err := e.inv.Attach(bg, attachReq("c1", "p1"))
		wantErr(t, "Attach", err, errdefs.ErrNotFound)
	})

	t.Run("explicit MAC", func(t *testing.T) {
		e := newEnv(t)
		e.register(1, "vpc-a")
		e.register(2, "vpc-a")
		e.assignMAC("p1", 2)
		now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
		e.inv.now = func() time.Time { return now }
		a, c, err := e.inv.Attach(bg, attachReq("c1", "p1"))
		if err != nil {
			t.Fatal(err)
		}
		want := Attachment{AttachmentKey: key("c1"), Netns: netnsPath("c1"), Pod: pod("p1"), MAC: macN(2), Created: now}
		if a != want {
			t.Fatalf("Attach = %+v, want %+v", a, want)
		}
		if c.MAC != macN(2) || c.HostName != hostName(2) || !c.SameSpec(eniConfig(2, "vpc-a")) {
			t.Fatalf("config = %+v", c)
		}
		e.wantState(macN(2), StateAttaching)
		e.wantState(macN(1), StateFree)
		if got := e.eni(macN(2)).Attachment; got == nil || *got != want {
			t.Fatalf("ENI attachment = %+v", got)
		}
		// Recorded on disk before returning.
		if s := e.readSnapshot(); len(s.Attachments) != 1 || s.Attachments[0].MAC != macN(2) {
			t.Fatalf("saved attachments = %+v", s.Attachments)
		}
		// Confirm.
		wantErr(t, "Confirm unknown", e.inv.Confirm(bg, key("nope")), errdefs.ErrNotFound)
		wantErr(t, "Confirm", e.inv.Confirm(bg, key("c1")), nil)
		e.wantState(macN(2), StateAttached)
		// Get and FindPod.
		g, gc, err := e.inv.Get(bg, key("c1"))
		if err != nil || g.MAC != macN(2) || !g.Confirmed || gc.MAC != macN(2) {
			t.Fatalf("Get = %+v, %+v, %v", g, gc, err)
		}
		_, _, err = e.inv.Get(bg, key("nope"))
		wantErr(t, "Get unknown", err, errdefs.ErrNotFound)
		f, _, err := e.inv.FindPod(pod("p1"))
		if err != nil || f.AttachmentKey != key("c1") {
			t.Fatalf("FindPod = %+v, %v", f, err)
		}
		_, _, err = e.inv.FindPod(pod("p2"))
		wantErr(t, "FindPod unknown", err, errdefs.ErrNotFound)

		// The ENI is held: another container of the pod cannot take it.
		_, _, err = e.inv.Attach(bg, attachReq("c2", "p1"))
		wantErr(t, "Attach held MAC", err, errdefs.ErrFailedPrecondition)
	})

	t.Run("explicit MAC that is missing", func(t *testing.T) {
		e := newEnv(t)
		e.register(1, "vpc-a")
		e.assignMAC("p1", 1)
		e.fl.removeLink(macN(1))
		if _, err := e.inv.Reconcile(bg); err != nil {
			t.Fatal(err)
		}
		_, _, err := e.inv.Attach(bg, attachReq("c1", "p1"))
		wantErr(t, "Attach", err, errdefs.ErrFailedPrecondition)
	})

	t.Run("explicit MAC that was removed", func(t *testing.T) {
		e := newEnv(t)
		e.register(1, "vpc-a")
		// An assignment whose ENI is gone can only come from an old
		// state file: write one.
		e.inv.mu.Lock()
		e.inv.assignments[pod("p1")] = Assignment{Pod: pod("p1"), MAC: macN(7)}
		e.inv.mu.Unlock()
		_, _, err := e.inv.Attach(bg, attachReq("c1", "p1"))
		wantErr(t, "Attach", err, errdefs.ErrNotFound)
	})

	t.Run("VPC pool picks a free, unreserved, present ENI", func(t *testing.T) {
		e := newEnv(t)
		for i := 1; i <= 5; i++ {
			e.register(i, "vpc-a")
		}
		e.register(6, "vpc-b")
		e.assignMAC("reserver", 1) // ENI 1: reserved
		e.fl.removeLink(macN(2))   // ENI 2: missing
		if _, err := e.inv.Reconcile(bg); err != nil {
			t.Fatal(err)
		}
		e.wantState(macN(2), StateMissing)
		e.assignVPC("other", "vpc-a") // ENI 3: attached
		if a := e.attach("c0", "other"); a.MAC != macN(3) {
			t.Fatalf("first pool attach got %s, want %s", a.MAC, macN(3))
		}
		e.assignVPC("p1", "vpc-a")
		e.assignVPC("p2", "vpc-a")
		e.assignVPC("p3", "vpc-a")
		a1 := e.attach("c1", "p1")
		a2 := e.attach("c2", "p2")
		if a1.MAC != macN(4) || a2.MAC != macN(5) {
			t.Fatalf("pool picked %s and %s, want %s and %s", a1.MAC, a2.MAC, macN(4), macN(5))
		}
		_, _, err := e.inv.Attach(bg, attachReq("c3", "p3"))
		wantErr(t, "Attach to exhausted pool", err, errdefs.ErrResourceExhausted)

		// A pod of an unknown VPC finds nothing either.
		e.assignVPC("p4", "vpc-none")
		_, _, err = e.inv.Attach(bg, attachReq("c4", "p4"))
		wantErr(t, "Attach to empty pool", err, errdefs.ErrResourceExhausted)

		// Detaching frees an ENI for the pool again.
		if st, m, err := e.inv.Detach(bg, key("c1")); err != nil || st != StateFree || m != macN(4) {
			t.Fatalf("Detach = %s, %s, %v", st, m, err)
		}
		if a := e.attach("c3", "p3"); a.MAC != macN(4) {
			t.Fatalf("pool picked %s after detach, want %s", a.MAC, macN(4))
		}
	})

	t.Run("idempotent per key", func(t *testing.T) {
		e := newEnv(t)
		e.register(1, "vpc-a")
		e.register(2, "vpc-a")
		e.assignVPC("p1", "vpc-a")
		e.assignVPC("p2", "vpc-a")
		first, c1, err := e.inv.Attach(bg, attachReq("c1", "p1"))
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			again, c2, err := e.inv.Attach(bg, attachReq("c1", "p1"))
			if err != nil || again != first || !reflect.DeepEqual(c1, c2) {
				t.Fatalf("repeat Attach = %+v, %v; want %+v", again, err, first)
			}
		}
		// Even after a confirmation, and after the assignment was dropped.
		if err := e.inv.Confirm(bg, key("c1")); err != nil {
			t.Fatal(err)
		}
		if err := e.inv.Unassign(bg, pod("p1")); err != nil {
			t.Fatal(err)
		}
		again, _, err := e.inv.Attach(bg, attachReq("c1", "p1"))
		if err != nil || again.MAC != first.MAC || !again.Confirmed {
			t.Fatalf("repeat Attach after confirm = %+v, %v", again, err)
		}

		// The same key for another pod, or another netns.
		_, _, err = e.inv.Attach(bg, attachReq("c1", "p2"))
		wantErr(t, "Attach same key, other pod", err, errdefs.ErrAlreadyExists)
		r := attachReq("c1", "p1")
		r.Netns = "/var/run/netns/elsewhere"
		_, _, err = e.inv.Attach(bg, r)
		wantErr(t, "Attach same key, other netns", err, errdefs.ErrAlreadyExists)

		// Another ifname of the same container is another attachment.
		r = attachReq("c1", "p2")
		r.IfName = "net1"
		a, _, err := e.inv.Attach(bg, r)
		if err != nil || a.MAC == first.MAC {
			t.Fatalf("Attach other ifname = %+v, %v", a, err)
		}
		if n := len(e.inv.Attachments()); n != 2 {
			t.Fatalf("%d attachments, want 2", n)
		}
	})

	t.Run("FindPod returns the newest attachment", func(t *testing.T) {
		e := newEnv(t)
		e.register(1, "vpc-a")
		e.register(2, "vpc-a")
		e.assignVPC("p1", "vpc-a")
		t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
		e.inv.now = func() time.Time { return t0 }
		e.attach("old", "p1")
		e.inv.now = func() time.Time { return t0.Add(time.Minute) }
		newer := e.attach("new", "p1")
		f, c, err := e.inv.FindPod(pod("p1"))
		if err != nil || f.AttachmentKey != key("new") || c.MAC != newer.MAC {
			t.Fatalf("FindPod = %+v, %v", f, err)
		}
	})
}

func TestAttachConcurrent(t *testing.T) {
	const nENI, nPod = 40, 64
	e := newEnv(t)
	for i := range nENI {
		e.register(i, "vpc-a")
	}
	for p := range nPod {
		e.assignVPC(fmt.Sprintf("pod-%d", p), "vpc-a")
	}
	type result struct {
		a   Attachment
		err error
	}
	results := make([]result, nPod)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for p := range nPod {
		wg.Go(func() {
			<-start
			cid := fmt.Sprintf("c%d", p)
			a, _, err := e.inv.Attach(bg, attachReq(cid, fmt.Sprintf("pod-%d", p)))
			results[p] = result{a, err}
		})
	}
	close(start)
	wg.Wait()

	ok, exhausted := 0, 0
	seen := map[string]string{}
	for p, r := range results {
		switch {
		case r.err == nil:
			ok++
			if other, dup := seen[r.a.MAC]; dup {
				t.Errorf("ENI %s given to %s and pod-%d", r.a.MAC, other, p)
			}
			seen[r.a.MAC] = fmt.Sprintf("pod-%d", p)
		case errors.Is(r.err, errdefs.ErrResourceExhausted):
			exhausted++
		default:
			t.Errorf("pod-%d: unexpected error %v", p, r.err)
		}
	}
	if ok != nENI || exhausted != nPod-nENI {
		t.Fatalf("%d attached, %d exhausted; want %d and %d", ok, exhausted, nENI, nPod-nENI)
	}
	if p := e.inv.Pools(); len(p) != 1 || p[0].Attached != nENI || p[0].Free != 0 {
		t.Fatalf("Pools = %+v", p)
	}
	if s := e.readSnapshot(); len(s.Attachments) != nENI {
		t.Fatalf("%d attachments saved, want %d", len(s.Attachments), nENI)
	}
	assertNoTempFiles(t, e.dir)

	// Detach them all concurrently (the links never left the node
	// namespace), while readers run.
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				_ = e.inv.Pools()
				_ = e.inv.List("vpc-a")
				_ = e.inv.Attachments()
			}
		}
	})
	for p, r := range results {
		if r.err != nil {
			continue
		}
		wg.Go(func() {
			st, m, err := e.inv.Detach(bg, key(fmt.Sprintf("c%d", p)))
			if err != nil || st != StateFree || m != r.a.MAC {
				t.Errorf("Detach c%d = %s, %s, %v", p, st, m, err)
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	if p := e.inv.Pools(); len(p) != 1 || p[0].Free != nENI || p[0].Attached != 0 {
		t.Fatalf("Pools after detach = %+v", p)
	}
}

// ---------------------------------------------------------------------------
// Detach

func TestDetach(t *testing.T) {
	t.Run("unknown key", func(t *testing.T) {
		e := newEnv(t)
		st, m, err := e.inv.Detach(bg, key("nope"))
		if st != "" || m != "" || err != nil {
			t.Fatalf("Detach = %q, %q, %v", st, m, err)
		}
	})

	for _, tc := range []struct {
		name      string
		after     func(e *env, a Attachment) // what happened to the link after attach
		wantState State
		wantErr   error
	}{
		{
			name:      "link back in node namespace",
			after:     func(e *env, a Attachment) { e.fl.moveToNode(a.MAC, a.Netns) },
			wantState: StateFree,
		},
		{
			name:      "link never left the node namespace",
			after:     func(e *env, a Attachment) { e.fl.killNetns(a.Netns, false) },
			wantState: StateFree,
		},
		{
			name:      "netns gone, link returned by the kernel",
			after:     func(e *env, a Attachment) { e.fl.killNetns(a.Netns, true) },
			wantState: StateFree,
		},
		{
			name:      "link and netns gone",
			after:     func(e *env, a Attachment) { e.fl.killNetns(a.Netns, false) },
			wantState: StateMissing,
		},
		{
			name:      "netns alive without the link, link gone",
			after:     func(e *env, a Attachment) { e.fl.removeLink(a.MAC) },
			wantState: StateMissing,
		},
		{
			name:    "link still in a live netns",
			after:   func(e *env, a Attachment) {},
			wantErr: errdefs.ErrFailedPrecondition,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.register(1, "vpc-a")
			e.assignMAC("p1", 1)
			var a Attachment
			if tc.name == "link never left the node namespace" {
				a = e.attach("c1", "p1")
				e.fl.setLink(macN(1), "eth0", true, 2)
			} else {
				a = e.attachAndMove("c1", "p1")
			}
			if err := e.inv.Confirm(bg, a.AttachmentKey); err != nil {
				t.Fatal(err)
			}
			tc.after(e, a)
			before := e.fl.quiesceCount(macN(1))
			st, m, err := e.inv.Detach(bg, a.AttachmentKey)
			if m != macN(1) {
				t.Fatalf("Detach MAC = %q, want %q", m, macN(1))
			}
			if tc.wantErr != nil {
				wantErr(t, "Detach", err, tc.wantErr)
				if st != "" {
					t.Fatalf("failed Detach returned state %q", st)
				}
				e.wantState(macN(1), StateAttached)
				if got, _, err := e.inv.Get(bg, a.AttachmentKey); err != nil || got.MAC != macN(1) {
					t.Fatalf("attachment lost: %+v, %v", got, err)
				}
				if s := e.readSnapshot(); len(s.Attachments) != 1 {
					t.Fatalf("saved attachments = %+v", s.Attachments)
				}
				// Once the plugin moves the link back, Detach works.
				e.fl.moveToNode(macN(1), a.Netns)
				st, _, err = e.inv.Detach(bg, a.AttachmentKey)
				if err != nil || st != StateFree {
					t.Fatalf("second Detach = %s, %v", st, err)
				}
				e.wantQuiet(1)
				return
			}
			if err != nil || st != tc.wantState {
				t.Fatalf("Detach = %q, %v; want %q", st, err, tc.wantState)
			}
			e.wantState(macN(1), tc.wantState)
			if e.eni(macN(1)).Attachment != nil {
				t.Fatal("ENI still has an attachment")
			}
			if n := len(e.inv.Attachments()); n != 0 {
				t.Fatalf("%d attachments left", n)
			}
			// Assignments survive a detach.
			if ap := e.eni(macN(1)).AssignedPod; ap == nil || *ap != pod("p1") {
				t.Fatalf("assignment lost: %v", ap)
			}
			if tc.wantState == StateFree {
				if e.fl.quiesceCount(macN(1)) != before+1 {
					t.Fatal("link not quiesced on detach")
				}
				e.wantQuiet(1)
			}
			s := e.readSnapshot()
			if len(s.Attachments) != 0 {
				t.Fatalf("saved attachments = %+v", s.Attachments)
			}
			if wantMissing := tc.wantState == StateMissing; wantMissing != (len(s.Missing) == 1) {
				t.Fatalf("saved missing = %v", s.Missing)
			}
			// Detaching again is a no-op.
			st, m, err = e.inv.Detach(bg, a.AttachmentKey)
			if st != "" || m != "" || err != nil {
				t.Fatalf("second Detach = %q, %q, %v", st, m, err)
			}
		})
	}

	t.Run("link errors keep the attachment", func(t *testing.T) {
		e := newEnv(t)
		e.register(1, "vpc-a")
		e.assignMAC("p1", 1)
		a := e.attachAndMove("c1", "p1")
		boom := errors.New("netns boom")
		e.fl.setErrs(nil, nil, boom)
		_, _, err := e.inv.Detach(bg, a.AttachmentKey)
		wantErr(t, "Detach", err, boom)
		e.fl.setErrs(nil, nil, nil)
		e.fl.moveToNode(macN(1), a.Netns)
		qerr := errors.New("quiesce boom")
		e.fl.setErrs(qerr, nil, nil)
		_, _, err = e.inv.Detach(bg, a.AttachmentKey)
		wantErr(t, "Detach", err, qerr)
		e.wantState(macN(1), StateAttaching)
		e.fl.setErrs(nil, nil, nil)
		if st, _, err := e.inv.Detach(bg, a.AttachmentKey); err != nil || st != StateFree {
			t.Fatalf("Detach = %s, %v", st, err)
		}
	})

	t.Run("missing ENI comes back through reconcile", func(t *testing.T) {
		e := newEnv(t)
		e.register(1, "vpc-a")
		e.assignMAC("p1", 1)
		a := e.attachAndMove("c1", "p1")
		e.fl.killNetns(a.Netns, false)
		if st, _, err := e.inv.Detach(bg, a.AttachmentKey); err != nil || st != StateMissing {
			t.Fatalf("Detach = %s, %v", st, err)
		}
		_, _, err := e.inv.Attach(bg, attachReq("c2", "p1"))
		wantErr(t, "Attach missing", err, errdefs.ErrFailedPrecondition)
		e.fl.addLink(macN(1), "eth7")
		if _, err := e.inv.Reconcile(bg); err != nil {
			t.Fatal(err)
		}
		e.wantState(macN(1), StateFree)
		e.wantQuiet(1)
		if a := e.attach("c2", "p1"); a.MAC != macN(1) {
			t.Fatalf("Attach after return = %+v", a)
		}
	})
}

// ---------------------------------------------------------------------------
// Persistence

func TestPersistence(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	e.register(2, "vpc-a")
	e.register(3, "vpc-b")
	e.register(4, "vpc-b")
	e.assignMAC("p1", 3)
	e.assignVPC("p2", "vpc-a")
	e.assignVPC("p3", "vpc-a")
	now := time.Date(2025, 3, 4, 5, 6, 7, 890123456, time.UTC)
	e.inv.now = func() time.Time { return now }
	e.attachAndMove("c1", "p1")
	e.attachAndMove("c2", "p2")
	// Attached but not yet confirmed, and not yet moved either: a plugin
	// between ADD's Attach and its move.
	a3 := e.attach("c3", "p3")
	e.fl.addNetns(a3.Netns)
	if err := e.inv.Confirm(bg, key("c1")); err != nil {
		t.Fatal(err)
	}
	if err := e.inv.Confirm(bg, key("c2")); err != nil {
		t.Fatal(err)
	}
	// Attachments are on disk at once; confirmations stay in memory (the
	// reconcile at start recovers them from the links).
	s := e.readSnapshot()
	sort.Slice(s.Attachments, func(i, j int) bool { return s.Attachments[i].MAC < s.Attachments[j].MAC })
	want := e.inv.Attachments()
	for i := range want {
		want[i].Confirmed = false
	}
	if got := s.Attachments; !reflect.DeepEqual(got, want) {
		t.Fatalf("saved attachments =\n %+v\nwant\n %+v", got, want)
	}
	e.assignVPC("p4", "vpc-b")

	// The state is valid JSON with the expected content.
	s = e.readSnapshot()
	if s.Version != stateVersion || len(s.ENIs) != 4 || len(s.Assignments) != 4 || len(s.Attachments) != 3 || len(s.Missing) != 0 {
		t.Fatalf("snapshot = %+v", s)
	}
	for i, a := range s.Attachments {
		if a.Confirmed {
			t.Fatalf("attachment %d saved as confirmed: confirmations are not written", i)
		}
		if !a.Created.Equal(now) {
			t.Fatalf("attachment %d created %v", i, a.Created)
		}
	}
	var raw map[string]any
	b, _ := os.ReadFile(filepath.Join(e.dir, "enis.json"))
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "enis", "assignments"} {
		if _, ok := raw[k]; !ok {
			t.Fatalf("state file lacks %q: %s", k, b)
		}
	}
	assertNoTempFiles(t, e.dir)

	// A second inventory on the same directory (and the same node) sees
	// the same thing.
	quiesceBefore := e.fl.totalQuiesce()
	inv2 := openInv(t, e.fl, e.dir)
	if got, want := inv2.List(""), e.inv.List(""); !reflect.DeepEqual(got, want) {
		t.Fatalf("List after reopen =\n %+v\nwant\n %+v", got, want)
	}
	if got, want := inv2.Assignments(), e.inv.Assignments(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Assignments after reopen = %+v, want %+v", got, want)
	}
	if got, want := inv2.Attachments(), e.inv.Attachments(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Attachments after reopen = %+v, want %+v", got, want)
	}
	if got, want := inv2.Pools(), e.inv.Pools(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Pools after reopen = %+v, want %+v", got, want)
	}
	if n := e.fl.totalQuiesce() - quiesceBefore; n != 0 {
		t.Fatalf("reopen quiesced %d links that were already quiet", n)
	}
	// The reopened inventory works: the same attachment is idempotent,
	// the held ENIs stay held.
	a, _, err := inv2.Attach(bg, attachReq("c2", "p2"))
	if err != nil || a.MAC != macN(1) {
		t.Fatalf("Attach after reopen = %+v, %v", a, err)
	}
	if _, err := inv2.Assign(bg, Assignment{Pod: pod("p9"), MAC: macN(3)}); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("reserved MAC assignable after reopen: %v", err)
	}
	if _, err := inv2.Assign(bg, Assignment{Pod: pod("p6"), VPC: "vpc-a"}); err != nil {
		t.Fatal(err)
	}
	_, _, err = inv2.Attach(bg, attachReq("c6", "p6"))
	wantErr(t, "Attach after reopen", err, errdefs.ErrResourceExhausted)
	assertNoTempFiles(t, e.dir)
}

func TestPersistenceMissingSurvivesReopen(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	e.register(2, "vpc-a")
	e.fl.removeLink(macN(2))
	if _, err := e.inv.Reconcile(bg); err != nil {
		t.Fatal(err)
	}
	if s := e.readSnapshot(); !reflect.DeepEqual(s.Missing, []string{macN(2)}) {
		t.Fatalf("saved missing = %v", s.Missing)
	}
	inv2 := openInv(t, e.fl, e.dir)
	if got, want := inv2.List(""), e.inv.List(""); !reflect.DeepEqual(got, want) {
		t.Fatalf("List after reopen = %+v, want %+v", got, want)
	}
	// Reopened while the link is back: free.
	e.fl.addLink(macN(2), "eth3")
	inv3 := openInv(t, e.fl, e.dir)
	for _, x := range inv3.List("") {
		if x.State != StateFree {
			t.Fatalf("ENI %s is %s after its link returned", x.MAC, x.State)
		}
	}
	if l, _ := e.fl.link(macN(2)); !l.Quiet(hostName(2)) {
		t.Fatalf("returned link not quiesced at open: %+v", l)
	}
}

func TestOpenSnapshotError(t *testing.T) {
	fl := newFakeLinks()
	boom := errors.New("netlink down")
	fl.setErrs(nil, boom, nil)
	st, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bg, st, fl, discardLog()); !errors.Is(err, boom) {
		t.Fatalf("Open = %v, want %v", err, boom)
	}
}

// ---------------------------------------------------------------------------
// Reconcile

func TestReconcileFreeENIs(t *testing.T) {
	for _, tc := range []struct {
		name        string
		change      func(fl *fakeLinks)
		wantChanges int
	}{
		{"nothing changed", func(fl *fakeLinks) {}, 0},
		{"brought up", func(fl *fakeLinks) { fl.setLink(macN(1), hostName(1), true, 0) }, 1},
		{"got an address", func(fl *fakeLinks) { fl.setLink(macN(1), hostName(1), false, 2) }, 1},
		{"renamed", func(fl *fakeLinks) { fl.setLink(macN(1), "eth9", false, 0) }, 1},
		{"all of it", func(fl *fakeLinks) { fl.setLink(macN(1), "eth9", true, 3) }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.register(1, "vpc-a")
			e.register(2, "vpc-a")
			tc.change(e.fl)
			before := e.fl.quiesceCount(macN(1))
			changes, err := e.inv.Reconcile(bg)
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) != tc.wantChanges {
				t.Fatalf("changes = %q, want %d", changes, tc.wantChanges)
			}
			if got := e.fl.quiesceCount(macN(1)) - before; got != tc.wantChanges {
				t.Fatalf("%d quiesce calls, want %d", got, tc.wantChanges)
			}
			if e.fl.quiesceCount(macN(2)) != 1 {
				t.Fatal("quiet link quiesced again")
			}
			e.wantQuiet(1)
			e.wantState(macN(1), StateFree)
			// Converged.
			if changes, err := e.inv.Reconcile(bg); err != nil || len(changes) != 0 {
				t.Fatalf("second Reconcile = %q, %v", changes, err)
			}
		})
	}
}

func TestReconcileQuiesceErrorIsReported(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	e.fl.setLink(macN(1), hostName(1), true, 1)
	e.fl.setErrs(errors.New("EBUSY"), nil, nil)
	changes, err := e.inv.Reconcile(bg)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || !strings.Contains(changes[0], "EBUSY") {
		t.Fatalf("changes = %q", changes)
	}
	e.fl.setErrs(nil, nil, nil)
	if changes, err := e.inv.Reconcile(bg); err != nil || len(changes) != 1 {
		t.Fatalf("Reconcile = %q, %v", changes, err)
	}
	e.wantQuiet(1)
}

func TestReconcileMissingAndBack(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	e.register(2, "vpc-a")
	e.fl.removeLink(macN(1))
	changes, err := e.inv.Reconcile(bg)
	if err != nil || len(changes) != 1 {
		t.Fatalf("Reconcile = %q, %v", changes, err)
	}
	e.wantState(macN(1), StateMissing)
	e.wantState(macN(2), StateFree)
	if p := e.inv.Pools(); !reflect.DeepEqual(p, []Pool{{VPC: "vpc-a", Free: 1, Missing: 1}}) {
		t.Fatalf("Pools = %+v", p)
	}
	if s := e.readSnapshot(); !reflect.DeepEqual(s.Missing, []string{macN(1)}) {
		t.Fatalf("saved missing = %v", s.Missing)
	}
	// Still missing: nothing to say.
	if changes, err := e.inv.Reconcile(bg); err != nil || len(changes) != 0 {
		t.Fatalf("second Reconcile = %q, %v", changes, err)
	}
	// The pool does not hand it out.
	e.assignVPC("p1", "vpc-a")
	if a := e.attachAndMove("c1", "p1"); a.MAC != macN(2) {
		t.Fatalf("pool gave %s", a.MAC)
	}
	// The link comes back, up and under another name: free and quiet.
	e.fl.addLink(macN(1), "eth5")
	changes, err = e.inv.Reconcile(bg)
	if err != nil || len(changes) != 2 { // back, quiesced
		t.Fatalf("Reconcile = %q, %v", changes, err)
	}
	e.wantState(macN(1), StateFree)
	e.wantQuiet(1)
	if s := e.readSnapshot(); len(s.Missing) != 0 {
		t.Fatalf("saved missing = %v", s.Missing)
	}
	// A link that comes back already quiet is just back.
	e.fl.removeLink(macN(1))
	if _, err := e.inv.Reconcile(bg); err != nil {
		t.Fatal(err)
	}
	e.fl.addLink(macN(1), hostName(1))
	e.fl.setLink(macN(1), hostName(1), false, 0)
	changes, err = e.inv.Reconcile(bg)
	if err != nil || len(changes) != 1 {
		t.Fatalf("Reconcile = %q, %v", changes, err)
	}
	e.wantState(macN(1), StateFree)
}

func TestReconcileAttachments(t *testing.T) {
	for _, tc := range []struct {
		name      string
		confirm   bool
		move      bool                       // the plugin moved the link into the pod
		after     func(e *env, a Attachment) // what happened next
		wantState State
		kept      bool
		changes   int
	}{
		{
			name: "netns gone, link in node namespace", confirm: true, move: true,
			after:     func(e *env, a Attachment) { e.fl.killNetns(a.Netns, true) },
			wantState: StateFree, changes: 2, // ended, quiesced
		},
		{
			name: "netns gone, link gone", confirm: true, move: true,
			after:     func(e *env, a Attachment) { e.fl.killNetns(a.Netns, false) },
			wantState: StateMissing, changes: 1,
		},
		{
			name: "netns never created, link quiet in node namespace", move: false,
			after:     func(e *env, a Attachment) {},
			wantState: StateFree, changes: 1, // ended; already quiet
		},
		{
			name: "netns alive, link in it", confirm: true, move: true,
			after:     func(e *env, a Attachment) {},
			wantState: StateAttached, kept: true,
		},
		{
			name: "netns alive, link in it, confirmation lost", move: true,
			after:     func(e *env, a Attachment) {},
			wantState: StateAttached, kept: true,
		},
		{
			name: "netns alive, link still in node namespace", move: false,
			after:     func(e *env, a Attachment) { e.fl.addNetns(a.Netns) },
			wantState: StateAttaching, kept: true,
		},
		{
			name: "netns alive, link in node namespace after DEL moved it", confirm: true, move: true,
			after:     func(e *env, a Attachment) { e.fl.moveToNode(a.MAC, a.Netns) },
			wantState: StateAttached, kept: true,
		},
		{
			name: "netns unreadable", confirm: true, move: true,
			after:     func(e *env, a Attachment) { e.fl.setErrs(nil, nil, errors.New("EPERM")) },
			wantState: StateAttached, kept: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.register(1, "vpc-a")
			e.register(2, "vpc-a")
			e.assignVPC("p1", "vpc-a")
			var a Attachment
			if tc.move {
				a = e.attachAndMove("c1", "p1")
			} else {
				a = e.attach("c1", "p1")
			}
			if a.MAC != macN(1) {
				t.Fatalf("attached %s", a.MAC)
			}
			if tc.confirm {
				if err := e.inv.Confirm(bg, a.AttachmentKey); err != nil {
					t.Fatal(err)
				}
			}
			tc.after(e, a)
			changes, err := e.inv.Reconcile(bg)
			if err != nil {
				t.Fatal(err)
			}
			e.fl.setErrs(nil, nil, nil)
			if len(changes) != tc.changes {
				t.Fatalf("changes = %q, want %d", changes, tc.changes)
			}
			e.wantState(macN(1), tc.wantState)
			e.wantState(macN(2), StateFree)
			_, _, gerr := e.inv.Get(bg, a.AttachmentKey)
			if tc.kept != (gerr == nil) {
				t.Fatalf("attachment kept = %v, want %v", gerr == nil, tc.kept)
			}
			if tc.wantState == StateFree {
				e.wantQuiet(1)
			}
			s := e.readSnapshot()
			if tc.kept != (len(s.Attachments) == 1) {
				t.Fatalf("saved attachments = %+v", s.Attachments)
			}
			if a, _, err := e.inv.Get(bg, a.AttachmentKey); tc.name == "netns alive, link in it, confirmation lost" && (err != nil || !a.Confirmed) {
				t.Fatalf("confirmation not recovered: %+v %v", a, err)
			}
			if (tc.wantState == StateMissing) != (len(s.Missing) == 1) {
				t.Fatalf("saved missing = %v", s.Missing)
			}
			// The assignment is the control plane's: it stays.
			if as := e.inv.Assignments(); len(as) != 1 {
				t.Fatalf("Assignments = %+v", as)
			}
			// Converged.
			if changes, err := e.inv.Reconcile(bg); err != nil || len(changes) != 0 {
				t.Fatalf("second Reconcile = %q, %v", changes, err)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// List / Pools

func TestListAndPools(t *testing.T) {
	e := newEnv(t)
	if p := e.inv.Pools(); len(p) != 0 {
		t.Fatalf("Pools of empty inventory = %+v", p)
	}
	for i := 1; i <= 4; i++ {
		e.register(i, "vpc-b")
	}
	for i := 5; i <= 7; i++ {
		e.register(i, "vpc-a")
	}
	e.register(8, "vpc-c")

	e.assignVPC("b1", "vpc-b")
	e.assignVPC("b2", "vpc-b")
	e.attachAndMove("cb1", "b1")
	e.attach("cb2", "b2") // attaching counts as attached
	e.fl.addNetns(netnsPath("cb2"))
	e.assignMAC("a1", 5) // reserved but not attached: still free
	e.fl.removeLink(macN(4))
	e.fl.removeLink(macN(8))
	if _, err := e.inv.Reconcile(bg); err != nil {
		t.Fatal(err)
	}

	want := []Pool{
		{VPC: "vpc-a", Free: 3},
		{VPC: "vpc-b", Free: 1, Attached: 2, Missing: 1},
		{VPC: "vpc-c", Missing: 1},
	}
	if got := e.inv.Pools(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Pools = %+v, want %+v", got, want)
	}

	for _, tc := range []struct {
		vpc  string
		macs []string
	}{
		{"", []string{macN(1), macN(2), macN(3), macN(4), macN(5), macN(6), macN(7), macN(8)}},
		{"vpc-a", []string{macN(5), macN(6), macN(7)}},
		{"vpc-b", []string{macN(1), macN(2), macN(3), macN(4)}},
		{"vpc-none", nil},
	} {
		var got []string
		for _, x := range e.inv.List(tc.vpc) {
			got = append(got, x.MAC)
			if tc.vpc != "" && x.VPC != tc.vpc {
				t.Errorf("List(%q) returned ENI of %s", tc.vpc, x.VPC)
			}
		}
		if !reflect.DeepEqual(got, tc.macs) {
			t.Errorf("List(%q) = %v, want %v", tc.vpc, got, tc.macs)
		}
	}
	states := map[string]State{}
	for _, x := range e.inv.List("") {
		states[x.MAC] = x.State
	}
	wantStates := map[string]State{
		macN(1): StateAttached, macN(2): StateAttaching, macN(3): StateFree, macN(4): StateMissing,
		macN(5): StateFree, macN(6): StateFree, macN(7): StateFree, macN(8): StateMissing,
	}
	if !reflect.DeepEqual(states, wantStates) {
		t.Fatalf("states = %v, want %v", states, wantStates)
	}

	// List returns copies: changing them does not change the inventory.
	l := e.inv.List("vpc-b")
	l[0].Attachment.Pod.Name = "mutated"
	l[0].HostName = "mutated"
	if x := e.eni(macN(1)); x.Attachment.Pod.Name != "b1" || x.HostName != hostName(1) {
		t.Fatalf("List leaked internal state: %+v", x)
	}
}

// Attachment files are kept apart from enis.json and are not synced, so
// after a crash they need not agree with it. Whatever they say, the
// inventory must stay consistent: an attachment is reconciled like any
// other, and no call panics.
func TestOpenInconsistentAttachmentFiles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []Attachment // written to the store besides the real state
	}{
		{"MAC not registered", []Attachment{
			{AttachmentKey: key("c9"), Netns: netnsPath("c9"), Pod: pod("p9"), MAC: macN(9)},
		}},
		{"two attachments of one MAC", []Attachment{
			{AttachmentKey: key("c1"), Netns: netnsPath("c1"), Pod: pod("p1"), MAC: macN(1)},
			{AttachmentKey: key("c2"), Netns: netnsPath("c2"), Pod: pod("p2"), MAC: macN(1)},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.register(1, "vpc-a")
			st, err := NewStore(e.dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range tc.extra {
				a.Created = time.Now().UTC()
				if err := st.putAttachment(a, false); err != nil {
					t.Fatal(err)
				}
			}
			// None of the pod namespaces exists (the machine rebooted).
			inv := openInv(t, e.fl, e.dir)
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("panic: %v", r)
				}
			}()
			for _, a := range tc.extra {
				if _, _, err := inv.Get(bg, a.AttachmentKey); !errors.Is(err, errdefs.ErrNotFound) {
					t.Errorf("Get(%v) = %v, want ErrNotFound", a.AttachmentKey, err)
				}
				if _, _, err := inv.FindPod(a.Pod); !errors.Is(err, errdefs.ErrNotFound) {
					t.Errorf("FindPod(%v) = %v, want ErrNotFound", a.Pod, err)
				}
			}
			if got := inv.Attachments(); len(got) != 0 {
				t.Fatalf("Attachments = %+v, want none", got)
			}
		})
	}
}

// A change whose save fails is refused and leaves the inventory as it was.
func TestSaveFailureLeavesStateUnchanged(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   func(e *env) error
	}{
		{"Register", func(e *env) error {
			e.fl.addLink(macN(5), hostName(5))
			_, err := e.inv.Register(bg, eniConfig(5, "vpc-a"))
			return err
		}},
		{"Assign replacing a MAC", func(e *env) error {
			_, err := e.inv.Assign(bg, Assignment{Pod: pod("p1"), MAC: macN(2)})
			return err
		}},
		{"Assign replacing a MAC by a VPC", func(e *env) error {
			_, err := e.inv.Assign(bg, Assignment{Pod: pod("p1"), VPC: "vpc-a"})
			return err
		}},
		{"Assign new pod", func(e *env) error {
			_, err := e.inv.Assign(bg, Assignment{Pod: pod("p9"), MAC: macN(3)})
			return err
		}},
		{"Unassign", func(e *env) error { return e.inv.Unassign(bg, pod("p1")) }},
		{"Remove", func(e *env) error { return e.inv.Remove(bg, macN(3)) }},
		{"Attach", func(e *env) error {
			_, _, err := e.inv.Attach(bg, attachReq("c2", "p2"))
			return err
		}},
		{"Detach to missing", func(e *env) error {
			e.fl.killNetns(netnsPath("c1"), false)
			_, _, err := e.inv.Detach(bg, key("c1"))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			for i := 1; i <= 3; i++ {
				e.register(i, "vpc-a")
			}
			e.assignMAC("p1", 1)
			e.assignVPC("p2", "vpc-a")
			e.attachAndMove("c1", "p1")
			list, asg, att := e.inv.List(""), e.inv.Assignments(), e.inv.Attachments()
			// Without its directory, the store cannot write anything.
			if err := os.RemoveAll(e.dir); err != nil {
				t.Fatal(err)
			}
			if err := tc.op(e); err == nil {
				t.Fatal("succeeded without a state dir")
			}
			if got := e.inv.List(""); !reflect.DeepEqual(got, list) {
				t.Errorf("List =\n %+v\nwant\n %+v", got, list)
			}
			if got := e.inv.Assignments(); !reflect.DeepEqual(got, asg) {
				t.Errorf("Assignments = %+v, want %+v", got, asg)
			}
			if got := e.inv.Attachments(); !reflect.DeepEqual(got, att) {
				t.Errorf("Attachments = %+v, want %+v", got, att)
			}
		})
	}
}
