package sandbox

import (
	"context"
	"testing"
	"time"
)

// A reading in the cache answers at once; forget drops it, and a reading
// begun before a forget does not come back.
func TestDiskStatsCache(t *testing.T) {
	var d diskStats
	d.mu.Lock()
	d.v, d.at = map[string]BlockStats{"vol": {ReadBytes: 1}}, time.Now()
	d.mu.Unlock()
	v, err := d.get(context.Background(), nil) // fresh: QEMU is not asked
	if err != nil || v["vol"].ReadBytes != 1 {
		t.Fatalf("cached reading: %v, %v", v, err)
	}
	d.mu.Lock()
	gen := d.gen
	d.mu.Unlock()
	d.forget()
	d.mu.Lock()
	if !d.at.IsZero() || d.v != nil || d.gen != gen+1 {
		t.Errorf("after forget: at %v, v %v, gen %d", d.at, d.v, d.gen)
	}
	d.mu.Unlock()
}
