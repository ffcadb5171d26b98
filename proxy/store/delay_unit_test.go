package store

import (
	"testing"
	"time"

	"github.com/replproxy/replproxy/psync/snapshot"
)

// TestArrivalHorizon: only samples certainly complete by t count.
func TestArrivalHorizon(t *testing.T) {
	a := newArrivalIndex()
	t0 := time.Unix(1000, 0)
	if _, ok := a.horizon(t0); ok {
		t.Fatal("an empty index knows a horizon")
	}
	a.Record(100, t0)
	a.Record(200, t0.Add(time.Second))
	a.Record(300, t0.Add(2*time.Second))
	for _, c := range []struct {
		at   time.Duration
		want int64
		ok   bool
	}{
		{0, 0, false},            // the first sample may still be arriving
		{time.Second, 100, true}, // the second started: the first is complete
		{1500 * time.Millisecond, 100, true},
		{5 * time.Second, 200, true}, // the last sample's end is never certain
	} {
		h, ok := a.horizon(t0.Add(c.at))
		if h != c.want || ok != c.ok {
			t.Errorf("horizon at +%v: %d %v, want %d %v", c.at, h, ok, c.want, c.ok)
		}
	}
}

// TestRetainForDelay: across refreshes the newest snapshot at least the
// delay old is kept for delayed replicas, and no more than one.
func TestRetainForDelay(t *testing.T) {
	s := &Store{Arrivals: newArrivalIndex(), delay: time.Hour}
	now := time.Now()
	s.Arrivals.Record(1000, now.Add(-3*time.Hour))
	s.Arrivals.Record(2000, now.Add(-2*time.Hour))
	s.Arrivals.Record(2100, now.Add(-90*time.Minute))
	s.Arrivals.Record(3000, now.Add(-30*time.Minute)) // horizon an hour ago: 2000
	snap := func(off int64, age time.Duration) *snapshot.Info {
		return &snapshot.Info{Name: "s" + time.Duration(off).String(), Offset: off, Created: now.Add(-age)}
	}
	old, young, younger := snap(1500, 2*time.Hour), snap(2500, 40*time.Minute), snap(2900, time.Minute)
	names := func(ss []*snapshot.Info) (out []string) {
		for _, s := range ss {
			out = append(out, s.Name)
		}
		return out
	}
	// old is old enough: it is kept when young replaces it.
	if keep, drop := s.retainForDelay(old, nil, young); keep != old || len(drop) != 0 {
		t.Fatalf("keep %v drop %v", keep, names(drop))
	}
	// young is too recent: at the next refresh old stays, young goes.
	if keep, drop := s.retainForDelay(young, old, younger); keep != old || len(drop) != 1 || drop[0] != young {
		t.Fatalf("keep %v drop %v", keep, names(drop))
	}
	// A fresh snapshot old enough itself: nothing else is kept.
	if keep, drop := s.retainForDelay(young, old, snap(1900, 3*time.Hour)); keep != nil || len(drop) != 2 {
		t.Fatalf("keep %v drop %v", keep, names(drop))
	}
}
