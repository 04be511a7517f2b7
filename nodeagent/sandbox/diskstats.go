package sandbox

import (
	"context"
	"sync"
	"time"

	"github.com/nodeinfra/nodeinfra/nodeagent/qemu"
)

// diskStatsMaxAge bounds how old the disk counters GetSandboxStats
// answers with may be. QEMU answers query-blockstats from its main loop,
// which under TCG shares its time with the vCPU (about 1 ms, 3 ms at p99).
// A reading younger than this answers at once; past half of it, a
// refresh starts in the background, so that a caller polling more often
// than every half second never waits for QEMU; an older one (or none) is
// read again before answering.
const diskStatsMaxAge = time.Second

// diskStats is a run's last reading of QEMU's per-disk counters.
type diskStats struct {
	mu         sync.Mutex
	at         time.Time
	v          map[string]BlockStats
	refreshing bool
	gen        uint64 // bumped by forget: a reading begun before is dropped
}

// get returns counters at most diskStatsMaxAge old.
func (d *diskStats) get(ctx context.Context, q *qemu.QMP) (map[string]BlockStats, error) {
	d.mu.Lock()
	age := time.Since(d.at)
	if !d.at.IsZero() && age < diskStatsMaxAge {
		v := d.v
		if age > diskStatsMaxAge/2 && !d.refreshing {
			d.refreshing = true
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), statsRefreshTimeout)
				defer cancel()
				_, _ = d.read(ctx, q)
			}()
		}
		d.mu.Unlock()
		return v, nil
	}
	d.mu.Unlock()
	return d.read(ctx, q)
}

// statsRefreshTimeout bounds a background refresh.
const statsRefreshTimeout = 5 * time.Second

func (d *diskStats) read(ctx context.Context, q *qemu.QMP) (map[string]BlockStats, error) {
	d.mu.Lock()
	gen := d.gen
	d.mu.Unlock()
	v, err := q.QueryBlockStats(ctx)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.refreshing = false
	if err != nil {
		return nil, err
	}
	if gen == d.gen {
		d.v, d.at = v, time.Now()
	}
	return v, nil
}

// forget drops the last reading (the disks changed).
func (d *diskStats) forget() {
	d.mu.Lock()
	d.at, d.v = time.Time{}, nil
	d.gen++
	d.mu.Unlock()
}
