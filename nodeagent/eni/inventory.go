package eni

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/nodeinfra/nodeinfra/pkg/enilink"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
	"github.com/nodeinfra/nodeinfra/pkg/k8sname"
)

// LinkInfo describes a link in the node's network namespace.
type LinkInfo struct {
	Index int
	Name  string
	Up    bool
	Addrs int
}

// Quiet reports whether the link is down, without addresses and named name.
func (l LinkInfo) Quiet(name string) bool { return !l.Up && l.Addrs == 0 && l.Name == name }

// Links is the node namespace as the inventory sees it.
type Links interface {
	// Lookup finds the link with mac, trying the name hint first; the
	// error wraps errdefs.ErrNotFound when there is none.
	Lookup(mac, hint string) (LinkInfo, error)
	// Snapshot returns every link of the namespace by MAC.
	Snapshot() (map[string]LinkInfo, error)
	// Quiesce sets the link down, removes its addresses and names it name.
	Quiesce(l LinkInfo, name string) error
	// InNetns reports whether the namespace at path exists and whether the
	// link that link describes is in it (matched by its ifindex and
	// identity, never by name or MAC, which the pod controls; nil: none is).
	InNetns(path string, link *enilink.Identity) (alive, has bool, err error)
}

// Inventory is the node's ENI inventory. It is safe for concurrent use.
type Inventory struct {
	store *Store
	links Links
	log   *slog.Logger
	now   func() time.Time

	mu          sync.Mutex
	enis        map[string]*Config // by MAC
	missing     map[string]bool
	assignments map[k8sname.Pod]Assignment
	reserved    map[string]k8sname.Pod // MAC -> pod, for explicit assignments
	attachments map[AttachmentKey]*Attachment
	byMAC       map[string]*Attachment
}

// Open loads the inventory from store and reconciles it with links.
func Open(ctx context.Context, store *Store, links Links, log *slog.Logger) (*Inventory, error) {
	store.log = log
	snap, err := store.load()
	if err != nil {
		return nil, err
	}
	inv := &Inventory{
		store: store, links: links, log: log, now: time.Now,
		enis:        map[string]*Config{},
		missing:     map[string]bool{},
		assignments: map[k8sname.Pod]Assignment{},
		reserved:    map[string]k8sname.Pod{},
		attachments: map[AttachmentKey]*Attachment{},
		byMAC:       map[string]*Attachment{},
	}
	for i := range snap.ENIs {
		c := snap.ENIs[i]
		inv.enis[c.MAC] = &c
	}
	for _, m := range snap.Missing {
		inv.missing[m] = true
	}
	for _, a := range snap.Assignments {
		inv.assignments[a.Pod] = a
		if a.MAC != "" {
			inv.reserved[a.MAC] = a.Pod
		}
	}
	for i := range snap.Attachments {
		a := snap.Attachments[i]
		if _, ok := inv.enis[a.MAC]; !ok {
			log.Warn("dropping attachment of an unregistered ENI", "container", a.ContainerID, "ifname", a.IfName, "mac", a.MAC)
			_ = store.deleteAttachment(a.AttachmentKey)
			continue
		}
		if old, ok := inv.byMAC[a.MAC]; ok {
			// Only a crash of the machine can leave two: keep the newer.
			stale := old
			if a.Created.Before(old.Created) {
				stale = &a
			}
			log.Warn("dropping a second attachment of one ENI", "container", stale.ContainerID, "ifname", stale.IfName, "mac", a.MAC)
			_ = store.deleteAttachment(stale.AttachmentKey)
			delete(inv.attachments, stale.AttachmentKey)
			if stale == &a {
				continue
			}
		}
		inv.attachments[a.AttachmentKey] = &a
		inv.byMAC[a.MAC] = &a
	}
	if _, err := inv.Reconcile(ctx); err != nil {
		return nil, err
	}
	return inv, nil
}

func (inv *Inventory) snapshotLocked() snapshot {
	s := snapshot{}
	for _, c := range inv.enis {
		s.ENIs = append(s.ENIs, *c)
	}
	sort.Slice(s.ENIs, func(i, j int) bool { return s.ENIs[i].MAC < s.ENIs[j].MAC })
	for m := range inv.missing {
		s.Missing = append(s.Missing, m)
	}
	sort.Strings(s.Missing)
	for _, a := range inv.assignments {
		s.Assignments = append(s.Assignments, a)
	}
	sort.Slice(s.Assignments, func(i, j int) bool { return s.Assignments[i].Pod.String() < s.Assignments[j].Pod.String() })
	for _, a := range inv.attachments {
		s.Attachments = append(s.Attachments, *a)
	}
	sort.Slice(s.Attachments, func(i, j int) bool { return s.Attachments[i].MAC < s.Attachments[j].MAC })
	return s
}

// saveLocked persists a change of the control plane's data, durably.
func (inv *Inventory) saveLocked() error { return inv.store.saveControl(inv.snapshotLocked()) }

func (inv *Inventory) stateLocked(mac string) State {
	if a, ok := inv.byMAC[mac]; ok {
		if a.Confirmed {
			return StateAttached
		}
		return StateAttaching
	}
	if inv.missing[mac] {
		return StateMissing
	}
	return StateFree
}

func (inv *Inventory) viewLocked(c *Config) ENI {
	e := ENI{Config: *c, State: inv.stateLocked(c.MAC)}
	if p, ok := inv.reserved[c.MAC]; ok {
		p := p
		e.AssignedPod = &p
	}
	if a, ok := inv.byMAC[c.MAC]; ok {
		a := *a
		e.Attachment = &a
	}
	return e
}

// Register records an ENI attached to the node. Registering the same ENI
// again is a no-op; the same MAC with another spec is refused.
func (inv *Inventory) Register(ctx context.Context, cfg Config) (ENI, error) {
	cfg, err := cfg.Normalize()
	if err != nil {
		return ENI{}, err
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if old, ok := inv.enis[cfg.MAC]; ok {
		if !old.SameSpec(cfg) {
			return ENI{}, fmt.Errorf("register ENI %s: registered with another spec (remove it first): %w", cfg.MAC, errdefs.ErrAlreadyExists)
		}
		return inv.viewLocked(old), nil
	}
	l, err := inv.links.Lookup(cfg.MAC, cfg.HostName)
	if err != nil {
		return ENI{}, fmt.Errorf("register ENI %s: no link with this MAC in the node namespace: %w", cfg.MAC, err)
	}
	cfg.HostName = l.Name
	if err := inv.links.Quiesce(l, l.Name); err != nil {
		return ENI{}, fmt.Errorf("register ENI %s: %w", cfg.MAC, err)
	}
	inv.enis[cfg.MAC] = &cfg
	delete(inv.missing, cfg.MAC)
	if err := inv.saveLocked(); err != nil {
		delete(inv.enis, cfg.MAC)
		return ENI{}, err
	}
	return inv.viewLocked(&cfg), nil
}

// Remove forgets an ENI that is not attached.
func (inv *Inventory) Remove(ctx context.Context, mac string) error {
	mac, err := NormalizeMAC(mac)
	if err != nil {
		return err
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	c, ok := inv.enis[mac]
	if !ok {
		return fmt.Errorf("remove ENI %s: %w", mac, errdefs.ErrNotFound)
	}
	if a, ok := inv.byMAC[mac]; ok {
		return fmt.Errorf("remove ENI %s: attached to container %s (pod %s): %w", mac, a.ContainerID, a.Pod, errdefs.ErrFailedPrecondition)
	}
	if p, ok := inv.reserved[mac]; ok {
		return fmt.Errorf("remove ENI %s: assigned to pod %s (unassign it first): %w", mac, p, errdefs.ErrFailedPrecondition)
	}
	delete(inv.enis, mac)
	wasMissing := inv.missing[mac]
	delete(inv.missing, mac)
	if err := inv.saveLocked(); err != nil {
		inv.enis[mac] = c
		if wasMissing {
			inv.missing[mac] = true
		}
		return err
	}
	return nil
}

// List returns the ENIs, of one VPC when vpc is not empty, sorted by MAC.
func (inv *Inventory) List(vpc string) []ENI {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	var out []ENI
	for _, c := range inv.enis {
		if vpc == "" || c.VPC == vpc {
			out = append(out, inv.viewLocked(c))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].MAC < out[j].MAC })
	return out
}

// Pools counts ENIs per VPC.
func (inv *Inventory) Pools() []Pool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	m := map[string]*Pool{}
	for _, c := range inv.enis {
		p := m[c.VPC]
		if p == nil {
			p = &Pool{VPC: c.VPC}
			m[c.VPC] = p
		}
		switch inv.stateLocked(c.MAC) {
		case StateFree:
			p.Free++
		case StateMissing:
			p.Missing++
		default:
			p.Attached++
		}
	}
	attached := map[k8sname.Pod]bool{}
	for _, a := range inv.attachments {
		attached[a.Pod] = true
	}
	for _, a := range inv.assignments {
		vpc := a.VPC
		if c, ok := inv.enis[a.MAC]; a.MAC != "" && ok {
			vpc = c.VPC
		}
		if vpc == "" || attached[a.Pod] {
			continue
		}
		p := m[vpc]
		if p == nil {
			p = &Pool{VPC: vpc}
			m[vpc] = p
		}
		p.Pending++
	}
	out := make([]Pool, 0, len(m))
	for _, p := range m {
		out = append(out, *p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VPC < out[j].VPC })
	return out
}

// Assign binds a pod to an ENI or to a VPC, replacing its earlier
// assignment. An attachment already made is not changed.
func (inv *Inventory) Assign(ctx context.Context, a Assignment) (Assignment, error) {
	if err := a.Pod.Validate(); err != nil {
		return a, err
	}
	if (a.MAC == "") == (a.VPC == "") {
		return a, fmt.Errorf("assign pod %s: give exactly one of MAC or VPC: %w", a.Pod, errdefs.ErrInvalidArgument)
	}
	if a.VPC != "" {
		if err := ValidateVPC(a.VPC); err != nil {
			return a, err
		}
	} else {
		mac, err := NormalizeMAC(a.MAC)
		if err != nil {
			return a, err
		}
		a.MAC = mac
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if a.MAC != "" {
		if _, ok := inv.enis[a.MAC]; !ok {
			return a, fmt.Errorf("assign pod %s: ENI %s is not registered: %w", a.Pod, a.MAC, errdefs.ErrNotFound)
		}
		if p, ok := inv.reserved[a.MAC]; ok && p != a.Pod {
			return a, fmt.Errorf("assign pod %s: ENI %s is assigned to pod %s: %w", a.Pod, a.MAC, p, errdefs.ErrFailedPrecondition)
		}
		if att, ok := inv.byMAC[a.MAC]; ok && att.Pod != a.Pod {
			return a, fmt.Errorf("assign pod %s: ENI %s is attached to pod %s: %w", a.Pod, a.MAC, att.Pod, errdefs.ErrFailedPrecondition)
		}
	}
	old, had := inv.assignments[a.Pod]
	if had && old.MAC != "" {
		delete(inv.reserved, old.MAC)
	}
	inv.assignments[a.Pod] = a
	if a.MAC != "" {
		inv.reserved[a.MAC] = a.Pod
	}
	if err := inv.saveLocked(); err != nil {
		delete(inv.assignments, a.Pod)
		delete(inv.reserved, a.MAC)
		if had {
			inv.assignments[a.Pod] = old
			if old.MAC != "" {
				inv.reserved[old.MAC] = old.Pod
			}
		}
		return a, err
	}
	return a, nil
}

// Unassign drops a pod's assignment. It is not an error when there is none.
func (inv *Inventory) Unassign(ctx context.Context, pod k8sname.Pod) error {
	if err := pod.Validate(); err != nil {
		return err
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	old, ok := inv.assignments[pod]
	if !ok {
		return nil
	}
	delete(inv.assignments, pod)
	if old.MAC != "" {
		delete(inv.reserved, old.MAC)
	}
	if err := inv.saveLocked(); err != nil {
		inv.assignments[pod] = old
		if old.MAC != "" {
			inv.reserved[old.MAC] = pod
		}
		return err
	}
	return nil
}

// Assignments lists the assignments sorted by pod.
func (inv *Inventory) Assignments() []Assignment {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.snapshotLocked().Assignments
}

// AttachRequest is what a CNI ADD asks for.
type AttachRequest struct {
	AttachmentKey
	Netns string
	Pod   k8sname.Pod
}

// Attach reserves the pod's ENI for the attachment and records it on disk
// before returning, so that a crash after this point cannot lose the ENI.
// Asking again for the same attachment returns the same ENI.
func (inv *Inventory) Attach(ctx context.Context, req AttachRequest) (Attachment, Config, error) {
	if req.ContainerID == "" || req.IfName == "" {
		return Attachment{}, Config{}, fmt.Errorf("attach: container ID and ifname are required: %w", errdefs.ErrInvalidArgument)
	}
	if req.Netns == "" || req.Netns[0] != '/' {
		return Attachment{}, Config{}, fmt.Errorf("attach: netns %q must be an absolute path: %w", req.Netns, errdefs.ErrInvalidArgument)
	}
	if err := req.Pod.Validate(); err != nil {
		return Attachment{}, Config{}, err
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if a, ok := inv.attachments[req.AttachmentKey]; ok {
		if a.Pod != req.Pod || a.Netns != req.Netns {
			return Attachment{}, Config{}, fmt.Errorf("attach %s/%s: already attached for pod %s in %s: %w",
				req.ContainerID, req.IfName, a.Pod, a.Netns, errdefs.ErrAlreadyExists)
		}
		return *a, *inv.enis[a.MAC], nil
	}
	as, ok := inv.assignments[req.Pod]
	if !ok {
		return Attachment{}, Config{}, fmt.Errorf("pod %s has no ENI assignment on this node (nodeagent eni assign): %w", req.Pod, errdefs.ErrNotFound)
	}
	var mac string
	if as.MAC != "" {
		if _, ok := inv.enis[as.MAC]; !ok {
			return Attachment{}, Config{}, fmt.Errorf("pod %s is assigned ENI %s, which is not registered: %w", req.Pod, as.MAC, errdefs.ErrNotFound)
		}
		if inv.missing[as.MAC] {
			return Attachment{}, Config{}, fmt.Errorf("pod %s: ENI %s is missing from the node: %w", req.Pod, as.MAC, errdefs.ErrFailedPrecondition)
		}
		if a, ok := inv.byMAC[as.MAC]; ok {
			return Attachment{}, Config{}, fmt.Errorf("pod %s: ENI %s is still attached to container %s: %w", req.Pod, as.MAC, a.ContainerID, errdefs.ErrFailedPrecondition)
		}
		mac = as.MAC
	} else {
		mac = inv.pickFreeLocked(as.VPC)
		if mac == "" {
			return Attachment{}, Config{}, fmt.Errorf("pod %s: no free ENI in VPC %s on this node: %w", req.Pod, as.VPC, errdefs.ErrResourceExhausted)
		}
	}
	a := &Attachment{AttachmentKey: req.AttachmentKey, Netns: req.Netns, Pod: req.Pod, MAC: mac, Created: inv.now().UTC()}
	if err := inv.store.putAttachment(*a, false); err != nil {
		return Attachment{}, Config{}, err
	}
	inv.attachments[a.AttachmentKey] = a
	inv.byMAC[mac] = a
	return *a, *inv.enis[mac], nil
}

func (inv *Inventory) pickFreeLocked(vpc string) string {
	best := ""
	for mac, c := range inv.enis {
		if c.VPC != vpc || inv.missing[mac] {
			continue
		}
		if _, ok := inv.byMAC[mac]; ok {
			continue
		}
		if _, ok := inv.reserved[mac]; ok {
			continue
		}
		if best == "" || mac < best {
			best = mac
		}
	}
	return best
}

// Confirm marks an attachment as configured in the pod and records what
// identifies its link there, which DEL needs: it moves back only that link.
// The record replaces the attachment's file (see Store for why without
// fsync); confirming again with the same identity writes nothing.
func (inv *Inventory) Confirm(ctx context.Context, key AttachmentKey, link enilink.Identity) error {
	if err := link.Validate(); err != nil {
		return fmt.Errorf("confirm %s/%s: %w", key.ContainerID, key.IfName, err)
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	a, ok := inv.attachments[key]
	if !ok {
		return fmt.Errorf("confirm %s/%s: %w", key.ContainerID, key.IfName, errdefs.ErrNotFound)
	}
	if a.Confirmed && a.Link != nil && *a.Link == link {
		return nil
	}
	next := *a
	next.Confirmed, next.Link = true, &link
	if err := inv.store.putAttachment(next, true); err != nil {
		return fmt.Errorf("confirm %s/%s: %w", key.ContainerID, key.IfName, err)
	}
	*a = next
	return nil
}

// Get returns an attachment and its ENI.
func (inv *Inventory) Get(ctx context.Context, key AttachmentKey) (Attachment, Config, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	a, ok := inv.attachments[key]
	if !ok {
		return Attachment{}, Config{}, fmt.Errorf("attachment %s/%s: %w", key.ContainerID, key.IfName, errdefs.ErrNotFound)
	}
	return *a, *inv.enis[a.MAC], nil
}

// Attachments lists all attachments.
func (inv *Inventory) Attachments() []Attachment {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	return inv.snapshotLocked().Attachments
}

// FindPod returns the attachment of a pod and its ENI.
func (inv *Inventory) FindPod(pod k8sname.Pod) (Attachment, Config, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	var found *Attachment
	for _, a := range inv.attachments {
		if a.Pod == pod && (found == nil || a.Created.After(found.Created)) {
			found = a
		}
	}
	if found == nil {
		return Attachment{}, Config{}, fmt.Errorf("pod %s has no attached ENI: %w", pod, errdefs.ErrNotFound)
	}
	return *found, *inv.enis[found.MAC], nil
}

// ProbeTarget returns where a probe of pod goes: the netns of its newest
// attachment and its ENI's address (IPv4 first). A probe reaches only the
// pod's own address, from inside the pod's namespace.
func (inv *Inventory) ProbeTarget(pod k8sname.Pod) (netns string, addr netip.Addr, err error) {
	if err := pod.Validate(); err != nil {
		return "", addr, err
	}
	a, c, err := inv.FindPod(pod)
	if err != nil {
		return "", addr, err
	}
	for _, p := range c.Addresses {
		if !addr.IsValid() || (p.Addr().Is4() && !addr.Is4()) {
			addr = p.Addr()
		}
	}
	return a.Netns, addr, nil
}

// Detach ends an attachment once its link is back in the node namespace,
// or gone with the pod's namespace. It returns the ENI's new state and MAC;
// detaching an unknown attachment returns an empty MAC and no error.
func (inv *Inventory) Detach(ctx context.Context, key AttachmentKey) (State, string, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	a, ok := inv.attachments[key]
	if !ok {
		return "", "", nil
	}
	c := inv.enis[a.MAC]
	state, err := inv.settleLocked(a, c)
	if err != nil {
		return "", a.MAC, fmt.Errorf("detach %s/%s: %w", key.ContainerID, key.IfName, err)
	}
	if state == StateMissing {
		inv.missing[a.MAC] = true
		if err := inv.saveLocked(); err != nil {
			delete(inv.missing, a.MAC)
			return "", a.MAC, err
		}
	}
	if err := inv.store.deleteAttachment(key); err != nil {
		return "", a.MAC, err
	}
	delete(inv.attachments, key)
	delete(inv.byMAC, a.MAC)
	return state, a.MAC, nil
}

// settleLocked decides where the link of an ending attachment is: back in
// the node namespace (quiesced there: free) or gone (missing). A link still
// in a live pod namespace is an error: the caller must move it back first.
func (inv *Inventory) settleLocked(a *Attachment, c *Config) (State, error) {
	l, err := inv.links.Lookup(a.MAC, c.HostName)
	if err == nil {
		if err := inv.links.Quiesce(l, c.HostName); err != nil {
			return "", err
		}
		return StateFree, nil
	}
	if !errors.Is(err, errdefs.ErrNotFound) {
		return "", err
	}
	// Only the link ADD moved in counts: a pod may plant another with the
	// ENI's MAC, and DEL leaves that one where it is.
	alive, has, err := inv.links.InNetns(a.Netns, a.Link)
	if err != nil {
		return "", err
	}
	if alive && has {
		return "", fmt.Errorf("link of ENI %s is still in %s: %w", a.MAC, a.Netns, errdefs.ErrFailedPrecondition)
	}
	return StateMissing, nil
}

// Reconcile makes the state agree with the links that exist: free ENIs are
// kept down and without addresses, ENIs whose link vanished are marked
// missing (and come back when their link does), and attachments whose pod
// namespace is gone end. It returns a line per change.
func (inv *Inventory) Reconcile(ctx context.Context) ([]string, error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	links, err := inv.links.Snapshot()
	if err != nil {
		return nil, fmt.Errorf("reconcile: %w", err)
	}
	var changes []string
	dirty := false
	for mac, c := range inv.enis {
		l, present := links[mac]
		if a, ok := inv.byMAC[mac]; ok {
			alive, _, err := inv.links.InNetns(a.Netns, a.Link)
			if err != nil || alive {
				continue // the pod still holds it, or a plugin is moving it
			}
			if err := inv.store.deleteAttachment(a.AttachmentKey); err != nil {
				changes = append(changes, fmt.Sprintf("ENI %s: %v", mac, err))
				continue
			}
			delete(inv.attachments, a.AttachmentKey)
			delete(inv.byMAC, mac)
			if present {
				changes = append(changes, fmt.Sprintf("ENI %s: netns %s of container %s is gone, link returned: free", mac, a.Netns, a.ContainerID))
			} else {
				inv.missing[mac] = true
				dirty = true
				changes = append(changes, fmt.Sprintf("ENI %s: netns %s of container %s is gone with its link: missing", mac, a.Netns, a.ContainerID))
				continue
			}
		}
		if !present {
			if !inv.missing[mac] {
				inv.missing[mac] = true
				dirty = true
				changes = append(changes, fmt.Sprintf("ENI %s: link %s is gone: missing", mac, c.HostName))
			}
			continue
		}
		if inv.missing[mac] {
			delete(inv.missing, mac)
			dirty = true
			changes = append(changes, fmt.Sprintf("ENI %s: link %s is back: free", mac, l.Name))
		}
		if !l.Quiet(c.HostName) {
			if err := inv.links.Quiesce(l, c.HostName); err != nil {
				changes = append(changes, fmt.Sprintf("ENI %s: quiesce %s: %v", mac, l.Name, err))
				continue
			}
			changes = append(changes, fmt.Sprintf("ENI %s: link %s set down, addresses removed, named %s", mac, l.Name, c.HostName))
		}
	}
	if dirty {
		if err := inv.saveLocked(); err != nil {
			return changes, err
		}
	}
	for _, ch := range changes {
		inv.log.Info("reconcile", "change", ch)
	}
	return changes, nil
}
