package upstream

import (
	"log/slog"
	"testing"
	"time"

	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// TestIntakeMeter: what the meter makes of the seconds before a hang-up:
// the rate of the seconds spent behind is what replproxy can take; without
// any, only what it took is known.
func TestIntakeMeter(t *testing.T) {
	base := time.Unix(1_000_000, 0)
	var m intakeMeter
	// 3 s caught up at 10 MB/s, then 2 s behind at 100 MB/s.
	end := int64(0)
	for s := range 5 {
		rate, busy := int64(10<<20), false
		if s >= 3 {
			rate, busy = 100<<20, true
		}
		for k := range 10 {
			m.add(base.Add(time.Duration(s)*time.Second+time.Duration(k)*100*time.Millisecond), int(rate/10), busy, end)
			end += rate / 10
		}
	}
	cut := m.cut(base.Add(5*time.Second-time.Millisecond), end)
	if got := cut.intake.busy; got < 99<<20 || got > 101<<20 {
		t.Fatalf("busy rate %.0f, want 100 MB/s", got)
	}
	if lim, measured := cut.intake.limit(); !measured || lim < 79<<20 || lim > 81<<20 {
		t.Fatalf("limit %.0f (measured %v), want 80%% of 100 MB/s", lim, measured)
	}
	if !cut.intake.since.Equal(base) || cut.intake.from != 0 {
		t.Fatalf("window from %v at %d", cut.intake.since, cut.intake.from)
	}
	// Never behind: the limit is a little above what was taken.
	var calm intakeMeter
	for s := range 4 {
		calm.add(base.Add(time.Duration(s)*time.Second), 20<<20, false, 0)
	}
	lim, measured := calm.cut(base.Add(4*time.Second), 0).intake.limit()
	if measured || lim < 5<<20 || lim > 30<<20 {
		t.Fatalf("limit %.0f (measured %v) of a proxy never behind", lim, measured)
	}
	// Seconds older than the window do not count.
	old := m.cut(base.Add(30*time.Second), end)
	if old.intake.busy != 0 || old.intake.achieved != 0 {
		t.Fatalf("stale seconds counted: %+v", old.intake)
	}
}

// TestOriginCovers: the continue rule as read from the origin's INFO.
func TestOriginCovers(t *testing.T) {
	s := originSample{offset: 1000, replID: "a", replID2: "b", secondOffset: 500, backlogFirst: 400, backlogLen: 601}
	for _, tc := range []struct {
		id   string
		next int64
		want bool
	}{
		{"a", 1001, true}, {"a", 400, true}, {"a", 399, false}, {"a", 1002, false},
		{"b", 500, true}, {"b", 501, false}, {"c", 700, false},
	} {
		if got := s.covers(tc.id, tc.next); got != tc.want {
			t.Errorf("covers(%s, %d) = %v, want %v", tc.id, tc.next, got, tc.want)
		}
	}
	if (originSample{offset: 10, replID: "a"}).covers("a", 5) {
		t.Error("an origin without a backlog covers nothing")
	}
}

// TestOverrunCapped: the overrun is the stream the snapshot holds back,
// not the backlog's size (right after a refresh the trim to the new
// snapshot may not have run yet: that is no reason to lapse it).
func TestOverrunCapped(t *testing.T) {
	m := &maintainer{f: &Follower{cfg: Options{BacklogSize: 100}, log: slog.New(slog.DiscardHandler)}}
	snap := &snapshot.Info{Name: "s", Offset: 1000}
	for _, tc := range []struct {
		first, end int64
		want       bool
	}{
		{first: 500, end: 1050, want: false}, // a big backlog, a fresh snapshot
		{first: 900, end: 1100, want: false}, // within the budget since it
		{first: 1001, end: 1200, want: true}, // twice the budget since it
		{first: 1002, end: 1010, want: true}, // lapsed already
	} {
		if got := m.overrunCapped(store.Position{First: tc.first, End: tc.end, Snap: snap}); got != tc.want {
			t.Errorf("backlog [%d, %d], snapshot at 1000: capped %v, want %v", tc.first, tc.end, got, tc.want)
		}
	}
}
