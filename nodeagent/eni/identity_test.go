package eni

import (
	"os"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// Confirm records the link's identity on disk, refuses one that was not
// read from a link, and writes nothing when repeated.
func TestConfirmRecordsTheLink(t *testing.T) {
	e := newEnv(t)
	e.register(1, "vpc-a")
	e.assignMAC("p1", 1)
	a := e.attachAndMove("c1", "p1")
	wantErr(t, "Confirm without ifindex", e.inv.Confirm(bg, a.AttachmentKey, enilink.Identity{Kind: "veth"}), errdefs.ErrInvalidArgument)
	wantErr(t, "Confirm without kind", e.inv.Confirm(bg, a.AttachmentKey, enilink.Identity{Index: 3}), errdefs.ErrInvalidArgument)
	e.wantState(macN(1), StateAttaching)
	if err := e.confirm(a.AttachmentKey); err != nil {
		t.Fatal(err)
	}
	e.wantState(macN(1), StateAttached)
	got, _, err := e.inv.Get(bg, a.AttachmentKey)
	if err != nil || got.Link == nil || *got.Link != linkID(e.fl.index(macN(1))) {
		t.Fatalf("Get = %+v, %v", got, err)
	}
	p := e.inv.store.attachmentPath(a.AttachmentKey)
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	if err := e.confirm(a.AttachmentKey); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || !st.ModTime().Equal(old) {
		t.Errorf("repeated Confirm rewrote the attachment: %v %v", st.ModTime(), err)
	}
	s := e.readSnapshot()
	if len(s.Attachments) != 1 || s.Attachments[0].Link == nil || *s.Attachments[0].Link != *got.Link {
		t.Fatalf("saved attachments = %+v", s.Attachments)
	}
	// A restarted agent knows the link, and that the ADD was confirmed.
	inv2 := openInv(t, e.fl, e.dir)
	if a2, _, err := inv2.Get(bg, a.AttachmentKey); err != nil || !a2.Confirmed || a2.Link == nil || *a2.Link != *got.Link {
		t.Fatalf("after reopen: %+v, %v", a2, err)
	}
}

// A pod replaced its ENI with a link of the same MAC (the plugin leaves
// that link where it is): Detach ends the attachment with the ENI missing
// instead of waiting forever for the impostor to leave. An attachment
// whose ADD never confirmed cannot tell the ENI from an impostor either.
func TestDetachLooksForTheENINotItsMAC(t *testing.T) {
	for _, tc := range []struct {
		name    string
		confirm bool
		after   func(e *env, a Attachment)
	}{
		{"impostor in place of the ENI", true, func(e *env, a Attachment) { e.fl.plantImpostor(a.MAC, a.Netns) }},
		{"never confirmed, link in the pod", false, func(e *env, a Attachment) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.register(1, "vpc-a")
			e.assignMAC("p1", 1)
			a := e.attachAndMove("c1", "p1")
			if tc.confirm {
				if err := e.confirm(a.AttachmentKey); err != nil {
					t.Fatal(err)
				}
			}
			tc.after(e, a)
			st, mac, err := e.inv.Detach(bg, a.AttachmentKey)
			if err != nil || st != StateMissing || mac != macN(1) {
				t.Fatalf("Detach = %q, %q, %v; want missing", st, mac, err)
			}
			if n := len(e.inv.Attachments()); n != 0 {
				t.Fatalf("%d attachments left", n)
			}
			// The pod's namespace dies; a hardware ENI comes back to the
			// node and is free again.
			e.fl.killNetns(a.Netns, true)
			if _, err := e.inv.Reconcile(bg); err != nil {
				t.Fatal(err)
			}
			e.wantState(macN(1), StateFree)
		})
	}
	// The real ENI still in the pod holds the detach until DEL moves it.
	e := newEnv(t)
	e.register(1, "vpc-a")
	e.assignMAC("p1", 1)
	a := e.attachAndMove("c1", "p1")
	if err := e.confirm(a.AttachmentKey); err != nil {
		t.Fatal(err)
	}
	_, _, err := e.inv.Detach(bg, a.AttachmentKey)
	wantErr(t, "Detach with the ENI in the pod", err, errdefs.ErrFailedPrecondition)
}
