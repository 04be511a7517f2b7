package eni

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

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
			if err := e.confirm(a.AttachmentKey); err != nil {
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
			// Its ADD failed: without the link's identity, no one moves it
			// back, and it stays attaching until DEL or GC.
			name: "netns alive, link in it, never confirmed", move: true,
			after:     func(e *env, a Attachment) {},
			wantState: StateAttaching, kept: true,
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
				if err := e.confirm(a.AttachmentKey); err != nil {
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
	if err := e.confirm(key("cb1")); err != nil {
		t.Fatal(err)
	}
	e.attach("cb2", "b2") // attaching counts as attached
	e.fl.addNetns(netnsPath("cb2"))
	e.assignMAC("a1", 5) // reserved but not attached: still free
	e.fl.removeLink(macN(4))
	e.fl.removeLink(macN(8))
	if _, err := e.inv.Reconcile(bg); err != nil {
		t.Fatal(err)
	}

	want := []Pool{
		{VPC: "vpc-a", Free: 3, Pending: 1}, // a1: reserved, holds no ENI yet
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
