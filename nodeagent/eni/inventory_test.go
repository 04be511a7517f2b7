package eni

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

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
		wantErr(t, "Confirm unknown", e.inv.Confirm(bg, key("nope"), linkID(5)), errdefs.ErrNotFound)
		wantErr(t, "Confirm", e.confirm(key("c1")), nil)
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
		if err := e.confirm(key("c1")); err != nil {
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
