package qemu

import (
	"context"
	"fmt"
	"os"
	"time"
)

// A template's device state is saved and restored with QEMU's migration
// over a descriptor passed on QMP (getfd), never "exec:" (a confined QEMU
// may not spawn). With x-ignore-shared on, RAM that lives in a shared
// file (the template's memory backend) stays out of the stream: the
// clones map that file themselves.

// migrationPoll is how often a save or restore is checked for its end.
const migrationPoll = 2 * time.Millisecond

// SaveState stops the VM and writes its device state (without its shared
// RAM) to w; it returns once QEMU has written all of it. The VM stays
// stopped: QEMU refuses a second migration of the same run.
func (q *QMP) SaveState(ctx context.Context, w *os.File) error {
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		return err
	}
	if err := q.ignoreShared(ctx); err != nil {
		return err
	}
	if err := q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "migration"}, nil, w); err != nil {
		return err
	}
	if err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:migration"}, nil); err != nil {
		return err
	}
	return q.waitMigration(ctx, "save")
}

// RestoreState loads the device state a template saved from r into a QEMU
// started with Machine.Incoming; the VM stays paused.
func (q *QMP) RestoreState(ctx context.Context, r *os.File) error {
	if err := q.ignoreShared(ctx); err != nil {
		return err
	}
	if err := q.ExecuteWithFile(ctx, "getfd", map[string]any{"fdname": "migration"}, nil, r); err != nil {
		return err
	}
	if err := q.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:migration"}, nil); err != nil {
		return err
	}
	return q.waitMigration(ctx, "restore")
}

func (q *QMP) ignoreShared(ctx context.Context) error {
	return q.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}, nil)
}

// waitMigration polls query-migrate until the migration has completed or
// failed.
func (q *QMP) waitMigration(ctx context.Context, what string) error {
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := q.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("qmp: %s state: migration %s: %s", what, st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("qmp: %s state: %w", what, ctx.Err())
		case <-time.After(migrationPoll):
		}
	}
}
