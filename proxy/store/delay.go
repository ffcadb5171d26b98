package store

import (
	"time"

	"github.com/replproxy/replproxy/psync/snapshot"
)

// Delayed replicas (--delayed-listen, --delay) see the stream only up to
// the newest offset that arrived at least the delay ago, at the same
// replication ID: a copy of the data as it was. Their full syncs come from
// the newest snapshot at least that old (the store retains one across
// refreshes) plus the stream after it; the backlog keeps that stream while
// its budget allows, and says when it cannot.

// Horizon is the last offset a delayed replica may have now.
func (s *Store) Horizon() int64 {
	h, ok := s.Arrivals.horizon(time.Now().Add(-s.delay))
	if !ok {
		first, _ := s.Backlog.Range()
		return first - 1
	}
	return h
}

// DelayedPosition is pos as a delayed replica may act on it.
func (s *Store) DelayedPosition(pos Position) Position {
	h := s.Horizon()
	pos.End = min(pos.End, h)
	// Old enough: taken the delay ago (the data before the proxy's first
	// sync has no arrival time: its snapshot's age stands for it) and not
	// past the horizon.
	taken := time.Now().Add(-s.delay)
	old := func(s *snapshot.Info) bool {
		return s != nil && s.Offset <= h && s.Offset+1 >= pos.First && !s.Created.After(taken)
	}
	switch {
	case old(pos.Snap):
	case old(pos.Retained):
		pos.Snap = pos.Retained
	default:
		pos.Snap = nil // none old enough yet: the replica waits
	}
	return pos
}

// retainForDelay keeps, across a refresh to fresh, the newest snapshot
// that delayed replicas can be served: at least the delay old.
func (s *Store) retainForDelay(old, retained, fresh *snapshot.Info) (keep *snapshot.Info, drop []*snapshot.Info) {
	h := s.Horizon()
	taken := time.Now().Add(-s.delay)
	add := func(s *snapshot.Info) {
		if s != nil && s.Name != fresh.Name {
			drop = append(drop, s)
		}
	}
	switch {
	case fresh.Offset <= h && !fresh.Created.After(taken): // the fresh one is old enough itself
		add(old)
		add(retained)
		return nil, drop
	case old != nil && old.Offset <= h && !old.Created.After(taken):
		add(retained)
		return old, drop
	case retained != nil: // old is too recent, and a newer one will come
		add(old)
		return retained, drop
	}
	return old, nil // none old enough yet: old will be first
}

// DelayKeepFrom is the first offset delayed replicas may still need.
func (s *Store) DelayKeepFrom(pos Position) int64 {
	keep := s.Horizon() + 1
	if pos.Retained != nil {
		keep = min(keep, pos.Retained.Offset+1)
	}
	if pos.Snap != nil && pos.Snap.Offset > s.Horizon() && pos.Retained == nil {
		keep = min(keep, pos.Snap.Offset+1)
	}
	return keep
}
