package main

import (
	"errors"
	"testing"
	"time"
)

func TestJudge(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after count
		bad           bool
		cell          string
	}{
		{"unchanged", count{Name: "x", N: 3}, count{Name: "x", N: 3}, false, "0"},
		{"shrank", count{Name: "x", N: 3}, count{Name: "x", N: 1}, false, "-2"},
		{"grew", count{Name: "x", N: 3}, count{Name: "x", N: 4}, true, "**+1 GREW**"},
		{"within tolerance", count{Name: "x", N: 10, Tolerance: 3}, count{Name: "x", N: 13, Tolerance: 3}, false, "+3 (≤ 3 allowed)"},
		{"beyond tolerance", count{Name: "x", N: 10, Tolerance: 3}, count{Name: "x", N: 14, Tolerance: 3}, true, "**+4 GREW** (≤ 3 allowed)"},
		{"not judged", count{Name: "x", N: 1, Unjudged: "machine-wide"}, count{Name: "x", N: 9, Unjudged: "machine-wide"}, false, "+8 (not judged: machine-wide)"},
		{"not counted", count{Name: "x", N: 1}, count{Name: "x", Err: errors.New("gone")}, true, "**not counted**"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := judge([]count{tc.before}, []count{tc.after})
			if len(v) != 1 || v[0].bad != tc.bad || v[0].cell != tc.cell {
				t.Errorf("judge: %+v, want bad %v cell %q", v, tc.bad, tc.cell)
			}
		})
	}
	if v := judge([]count{{Name: "only before"}}, nil); !v[0].bad {
		t.Error("a resource missing after is not flagged")
	}
}

func TestDriftMeans(t *testing.T) {
	d := make([]time.Duration, 20)
	for i := range d {
		d[i] = time.Duration(i+1) * time.Millisecond
	}
	if f, l := driftMeans(d); f != 1500*time.Microsecond || l != 19500*time.Microsecond {
		t.Errorf("driftMeans = %v, %v; want 1.5ms, 19.5ms", f, l)
	}
	if f, l := driftMeans(d[:3]); f != time.Millisecond || l != 3*time.Millisecond {
		t.Errorf("driftMeans of 3 = %v, %v", f, l)
	}
	if f, l := driftMeans(nil); f != 0 || l != 0 {
		t.Errorf("driftMeans(nil) = %v, %v", f, l)
	}
}
