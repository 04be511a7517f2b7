package latency

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{.5: 50 * time.Millisecond, .99: 99 * time.Millisecond, 1: 100 * time.Millisecond, .001: time.Millisecond} {
		if got := Percentile(d, p); got != want {
			t.Errorf("Percentile(%v) = %v, want %v", p, got, want)
		}
	}
	if Percentile(nil, .5) != 0 || Ms(1500*time.Microsecond) != "1.5 ms" {
		t.Error("edge cases")
	}
	if d[0] != 100*time.Millisecond {
		t.Error("input reordered")
	}
}
