package store

import (
	"testing"
	"time"
)

func TestArrivalIndex(t *testing.T) {
	a := newArrivalIndex()
	t0 := time.Unix(1000, 0)
	a.Record(100, t0)
	a.Record(200, t0.Add(time.Second))
	a.Record(300, t0.Add(2*time.Second))
	now := t0.Add(5 * time.Second)
	for acked, want := range map[int64]float64{0: 5, 99: 5, 100: 4, 150: 4, 250: 3, 300: 0, 400: 0} {
		if got := a.LagSeconds(acked, now); got != want {
			t.Errorf("acked %d: lag %v want %v", acked, got, want)
		}
	}
}

func TestArrivalIndexBounded(t *testing.T) {
	a := newArrivalIndex()
	a.max = 64
	t0 := time.Unix(0, 0)
	for i := range 10000 {
		a.Record(int64(i+1)*10, t0.Add(time.Duration(i)*time.Second))
	}
	if len(a.ends) > a.max {
		t.Fatalf("%d samples", len(a.ends))
	}
	now := t0.Add(10000 * time.Second)
	// Coarsened history may overstate lag, never understate it.
	for _, acked := range []int64{0, 5000, 50000, 99990} {
		exact := now.Sub(t0.Add(time.Duration(acked/10) * time.Second)).Seconds()
		if got := a.LagSeconds(acked, now); got < exact {
			t.Errorf("acked %d: lag %v understates %v", acked, got, exact)
		}
	}
	if a.LagSeconds(100000, now) != 0 {
		t.Error("caught-up replica has lag")
	}
}
