// Package groups keeps host process groups: cgroups under the agent's
// parent that hold plain host processes (a database instance, say) to
// their share of the node, with the same limits and accounting as a
// sandbox. A group's record (its name and the limits last set) is kept
// in <state>/groups/<name>.json, written before the cgroup is made: the
// kernel keeps the cgroup and its processes across an agent restart, and
// the next agent finds it again by its record. The agent removes the
// cgroups under its parent that neither a group nor a sandbox owns
// (RemoveOrphans). It knows nothing of gRPC; nodeagent/server adapts it.
package groups

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/cgroup"
	"github.com/nodeinfra/nodeinfra/pkg/atomicfile"
	"github.com/nodeinfra/nodeinfra/pkg/errdefs"
)

// CgroupPrefix starts the cgroup name of every group ("group-NAME"), so
// that groups and sandboxes ("sandbox-ID") never clash under one parent.
const CgroupPrefix = "group-"

const maxNameLen = 63

// Group is a host process group.
type Group struct {
	Name string `json:"name"`
	// Resources are the limits last set: at create, then each update's.
	Resources cgroup.Resources `json:"resources"`
	// Cgroup is the group's cgroup path.
	Cgroup    string    `json:"cgroup"`
	CreatedAt time.Time `json:"createdAt"`
	// PIDs are the processes in the group now (not recorded).
	PIDs []int `json:"-"`
}

// Manager keeps the node's groups. Calls are serialized: they are
// administrative and quick.
type Manager struct {
	dir     string
	cgroups *cgroup.Manager
	log     *slog.Logger
	onOOM   func(name string)

	mu     sync.Mutex
	groups map[string]*entry
	ctx    context.Context
	cancel context.CancelFunc
}

type entry struct {
	rec     Group
	g       cgroup.Group
	stopOOM context.CancelFunc
}

// Open loads the groups recorded under stateDir and finds their cgroups
// again (one whose cgroup is gone is made again with its limits).
// onOOM, if set, is called with a group's name each time the OOM killer
// kills in it. Without cgroups (nil) every call is FailedPrecondition.
func Open(stateDir string, cgroups *cgroup.Manager, onOOM func(name string), log *slog.Logger) (*Manager, error) {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{dir: filepath.Join(stateDir, "groups"), cgroups: cgroups, log: log.With("component", "groups"),
		onOOM: onOOM, groups: map[string]*entry{}, ctx: ctx, cancel: cancel}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		cancel()
		return nil, fmt.Errorf("groups state dir: %w", err)
	}
	ents, err := os.ReadDir(m.dir)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("groups state dir: %w", err)
	}
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		rec, err := m.read(name)
		if err != nil || rec.Name != name || ValidateName(name) != nil {
			m.log.Warn("ignoring a group file without a valid record", "file", e.Name(), "error", err)
			continue
		}
		en := &entry{rec: rec}
		if cgroups != nil {
			g, err := cgroups.Load(CgroupPrefix + name)
			if errors.Is(err, errdefs.ErrNotFound) {
				g, err = cgroups.Create(CgroupPrefix+name, rec.Resources)
			}
			if err != nil {
				m.log.Error("cannot find a group's cgroup again", "group", name, "error", err)
			} else {
				en.g = g
				en.rec.Cgroup = g.Path()
				m.watchOOM(en)
			}
		}
		m.groups[name] = en
	}
	return m, nil
}

// Close stops watching the groups; the cgroups and their processes stay.
func (m *Manager) Close() { m.cancel() }

// ValidateName checks a group name: 1-63 characters of [a-z0-9._-]
// starting with a letter or digit, never "..". Errors wrap
// errdefs.ErrInvalidArgument.
func ValidateName(name string) error {
	ok := name != "" && len(name) <= maxNameLen && isAlnum(name[0]) && !strings.Contains(name, "..")
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = isAlnum(c) || c == '.' || c == '_' || c == '-'
	}
	if !ok {
		return fmt.Errorf("group name %q: want 1-%d characters of [a-z0-9._-] starting with a letter or digit: %w", name, maxNameLen, errdefs.ErrInvalidArgument)
	}
	return nil
}

func isAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func (m *Manager) path(name string) string { return filepath.Join(m.dir, name+".json") }

func (m *Manager) read(name string) (Group, error) {
	var g Group
	b, err := os.ReadFile(m.path(name))
	if err != nil {
		return g, err
	}
	return g, json.Unmarshal(b, &g)
}

func (m *Manager) write(g Group) error {
	b, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(m.path(g.Name), b, 0o600); err != nil {
		return fmt.Errorf("write group record: %w", err)
	}
	return nil
}

func (m *Manager) ready() error {
	if m.cgroups == nil {
		return fmt.Errorf("groups need cgroups (the agent runs without --cgroup-parent, or the host lacks its controllers): %w", errdefs.ErrFailedPrecondition)
	}
	return nil
}

// lookupLocked finds a group; m.mu is held.
func (m *Manager) lookupLocked(name string) (*entry, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	en, ok := m.groups[name]
	if !ok {
		return nil, fmt.Errorf("group %q: %w", name, errdefs.ErrNotFound)
	}
	if en.g == nil {
		return nil, fmt.Errorf("group %q has no cgroup (see the agent's log): %w", name, errdefs.ErrFailedPrecondition)
	}
	return en, nil
}

// snapshot is a group as the caller sees it, with its processes now.
func (en *entry) snapshot() Group {
	g := en.rec
	if en.g != nil {
		g.PIDs, _ = en.g.Processes()
	}
	return g
}

// Create makes group name with limits r. Idempotent: the same limits
// again return the group; other limits are AlreadyExists (UpdateGroup
// changes them).
func (m *Manager) Create(name string, r cgroup.Resources) (Group, error) {
	if err := ValidateName(name); err != nil {
		return Group{}, err
	}
	if err := r.Validate(); err != nil {
		return Group{}, fmt.Errorf("group %q: %w", name, err)
	}
	if err := m.ready(); err != nil {
		return Group{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if en, ok := m.groups[name]; ok {
		if !reflect.DeepEqual(en.rec.Resources, r) {
			return Group{}, fmt.Errorf("group %q exists with other limits (update it instead): %w", name, errdefs.ErrAlreadyExists)
		}
		return en.snapshot(), nil
	}
	rec := Group{Name: name, Resources: r, CreatedAt: time.Now().UTC()}
	// The record first: a crash before the cgroup leaves a record that
	// the next agent makes the cgroup of, never an orphan cgroup.
	if err := m.write(rec); err != nil {
		return Group{}, err
	}
	g, err := m.cgroups.Create(CgroupPrefix+name, r)
	if err != nil {
		os.Remove(m.path(name))
		return Group{}, fmt.Errorf("group %q: %w", name, err)
	}
	rec.Cgroup = g.Path()
	en := &entry{rec: rec, g: g}
	m.groups[name] = en
	m.watchOOM(en)
	m.log.Info("group created", "group", name, "cgroup", rec.Cgroup)
	return en.snapshot(), nil
}

// AddProcess moves process pid (all its threads) into the group. A pid
// that does not exist is InvalidArgument.
func (m *Manager) AddProcess(name string, pid int) (Group, error) {
	if pid <= 0 {
		return Group{}, fmt.Errorf("pid %d: want a positive process ID: %w", pid, errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	en, err := m.lookupLocked(name)
	if err != nil {
		return Group{}, err
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		return Group{}, fmt.Errorf("pid %d: no such process: %w", pid, errdefs.ErrInvalidArgument)
	}
	if err := en.g.Add(pid); err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return Group{}, fmt.Errorf("pid %d: no such process: %w", pid, errdefs.ErrInvalidArgument)
		}
		return Group{}, fmt.Errorf("group %q: %w", name, err)
	}
	m.log.Info("process added to group", "group", name, "pid", pid)
	return en.snapshot(), nil
}

// Update changes the limits r sets (all or none of them).
func (m *Manager) Update(name string, r cgroup.Resources) (Group, error) {
	if err := r.Validate(); err != nil {
		return Group{}, fmt.Errorf("group %q: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	en, err := m.lookupLocked(name)
	if err != nil {
		return Group{}, err
	}
	if err := en.g.Update(r); err != nil {
		return Group{}, fmt.Errorf("group %q: %w", name, err)
	}
	rec := en.rec
	rec.Resources = rec.Resources.With(r)
	if err := m.write(rec); err != nil {
		// The kernel has the new limits but the record not: put them back.
		if uerr := en.g.Update(en.rec.Resources.Undo(r)); uerr != nil {
			m.log.Error("cannot put back a group's limits", "group", name, "error", uerr)
		}
		return Group{}, err
	}
	en.rec = rec
	m.log.Info("group updated", "group", name)
	return en.snapshot(), nil
}

// Get returns one group.
func (m *Manager) Get(name string) (Group, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	en, err := m.lookupLocked(name)
	if err != nil {
		return Group{}, err
	}
	return en.snapshot(), nil
}

// Stats reads what the kernel accounts for a group.
func (m *Manager) Stats(name string) (cgroup.Stats, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	en, err := m.lookupLocked(name)
	if err != nil {
		return cgroup.Stats{}, "", err
	}
	s, err := en.g.Stats()
	if err != nil {
		return cgroup.Stats{}, "", fmt.Errorf("group %q: %w", name, err)
	}
	return s, en.g.Path(), nil
}

// List returns the groups by name.
func (m *Manager) List() []Group {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Group, 0, len(m.groups))
	for _, en := range m.groups {
		out = append(out, en.snapshot())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Delete removes a group. While processes remain in it, it is
// FailedPrecondition, unless force, which kills them first. Idempotent.
func (m *Manager) Delete(name string, force bool) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	en, ok := m.groups[name]
	if !ok {
		return nil
	}
	if en.g != nil {
		pids, err := en.g.Processes()
		if err != nil {
			return fmt.Errorf("group %q: %w", name, err)
		}
		if len(pids) > 0 && !force {
			return fmt.Errorf("group %q still holds %d processes %v (force kills them): %w", name, len(pids), pids, errdefs.ErrFailedPrecondition)
		}
		if len(pids) > 0 {
			if err := en.g.Kill(); err != nil {
				return fmt.Errorf("group %q: %w", name, err)
			}
			m.log.Warn("killed a group's processes to delete it", "group", name, "pids", pids)
		}
		if err := cgroup.DeleteSettled(en.g); err != nil {
			return fmt.Errorf("group %q: %w", name, err)
		}
	}
	if en.stopOOM != nil {
		en.stopOOM()
	}
	if err := os.Remove(m.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("group %q: remove record: %w", name, err)
	}
	delete(m.groups, name)
	m.log.Info("group deleted", "group", name)
	return nil
}

// watchOOM calls onOOM for each OOM kill in the group until it is
// deleted or the manager closes.
func (m *Manager) watchOOM(en *entry) {
	if m.onOOM == nil {
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	ch, err := en.g.OOMEvents(ctx)
	if err != nil {
		cancel()
		m.log.Warn("cannot watch a group for OOM kills", "group", en.rec.Name, "error", err)
		return
	}
	en.stopOOM = cancel
	name := en.rec.Name
	go func() {
		for range ch {
			m.log.Warn("the OOM killer killed in a group", "group", name)
			m.onOOM(name)
		}
	}()
}

// RemoveOrphans removes the cgroups under the agent's parent that belong
// to no group and to none of owned (the sandboxes' cgroup names), killing
// what runs in them: the parent is the agent's alone, and such a cgroup
// is left from a record lost or from a crash between making a cgroup
// and recording it. It returns the names it removed.
func (m *Manager) RemoveOrphans(owned []string) ([]string, error) {
	if m.cgroups == nil {
		return nil, nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	known := map[string]bool{}
	for _, n := range owned {
		known[n] = true
	}
	for name := range m.groups {
		known[CgroupPrefix+name] = true
	}
	names, err := m.cgroups.List()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, n := range names {
		if known[n] || cgroup.ValidName(n) != nil {
			continue
		}
		g, err := m.cgroups.Load(n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pids, _ := g.Processes()
		if len(pids) > 0 {
			if err := g.Kill(); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := cgroup.DeleteSettled(g); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Warn("removed an orphan cgroup under the agent's parent", "cgroup", g.Path(), "killed", pids)
		removed = append(removed, n)
	}
	return removed, errors.Join(errs...)
}
