package eni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
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

// InNetns matches links by index only: a fake link's identity is its index.
func (f *fakeLinks) InNetns(path string, link *enilink.Identity) (bool, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.inNetnsErr != nil {
		return false, false, f.inNetnsErr
	}
	ns, ok := f.netns[path]
	if !ok {
		return false, false, nil
	}
	if link == nil {
		return true, false, nil
	}
	for _, l := range ns {
		if l.Index == link.Index {
			return true, true, nil
		}
	}
	return true, false, nil
}

// plantImpostor replaces the ENI's link in a pod namespace with another
// link of the same MAC, as a pod with NET_ADMIN can.
func (f *fakeLinks) plantImpostor(mac, path string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.netns[path][mac] = LinkInfo{Index: 1000 + f.nextIndex, Name: "eth0", Up: true}
	f.nextIndex++
}

// index returns the index of the link with mac, wherever it is.
func (f *fakeLinks) index(mac string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if l, ok := f.node[mac]; ok {
		return l.Index
	}
	for _, ns := range f.netns {
		if l, ok := ns[mac]; ok {
			return l.Index
		}
	}
	panic("index: no link " + mac)
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

// linkID is the identity of the fake link with index.
func linkID(index int) enilink.Identity {
	return enilink.Identity{Index: index, Kind: "veth", PeerIndex: 3, PeerNetnsID: 0}
}

// confirm confirms an attachment with the identity of its ENI's link, as
// the plugin does at the end of ADD.
func (e *env) confirm(k AttachmentKey) error {
	a, _, err := e.inv.Get(bg, k)
	if err != nil {
		return e.inv.Confirm(bg, k, linkID(1))
	}
	return e.inv.Confirm(bg, k, linkID(e.fl.index(a.MAC)))
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
