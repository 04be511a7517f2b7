package eni

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

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
	if err := e.confirm(key("c1")); err != nil {
		t.Fatal(err)
	}
	if err := e.confirm(key("c2")); err != nil {
		t.Fatal(err)
	}
	// Attachments are on disk at once, and confirmations with the identity
	// of their link.
	s := e.readSnapshot()
	sort.Slice(s.Attachments, func(i, j int) bool { return s.Attachments[i].MAC < s.Attachments[j].MAC })
	want := e.inv.Attachments()
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
		if a.Confirmed != (a.ContainerID != "c3") || a.Confirmed != (a.Link != nil) {
			t.Fatalf("attachment %d saved as %+v: want c1 and c2 confirmed, with their link", i, a)
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
