package proxy

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

// horizon is the last offset a delayed replica may have now.
func (p *Proxy) horizon() int64 {
	h, ok := p.store.arrivals.horizon(time.Now().Add(-p.cfg.Delay))
	if !ok {
		first, _ := p.store.bl.Range()
		return first - 1
	}
	return h
}

// delayedPosition is pos as a delayed replica may act on it.
func (p *Proxy) delayedPosition(pos position) position {
	h := p.horizon()
	pos.end = min(pos.end, h)
	// Old enough: taken the delay ago (the data before the proxy's first
	// sync has no arrival time: its snapshot's age stands for it) and not
	// past the horizon.
	taken := time.Now().Add(-p.cfg.Delay)
	old := func(s *snapshot.Info) bool {
		return s != nil && s.Offset <= h && s.Offset+1 >= pos.first && !s.Created.After(taken)
	}
	switch {
	case old(pos.snap):
	case old(pos.retained):
		pos.snap = pos.retained
	default:
		pos.snap = nil // none old enough yet: the replica waits
	}
	return pos
}

// retainForDelay keeps, across a refresh to fresh, the newest snapshot
// that delayed replicas can be served: at least the delay old.
func (p *Proxy) retainForDelay(old, retained, fresh *snapshot.Info) (keep *snapshot.Info, drop []*snapshot.Info) {
	h := p.horizon()
	taken := time.Now().Add(-p.cfg.Delay)
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

// delayKeepFrom is the first offset delayed replicas may still need.
func (p *Proxy) delayKeepFrom(pos position) int64 {
	keep := p.horizon() + 1
	if pos.retained != nil {
		keep = min(keep, pos.retained.Offset+1)
	}
	if pos.snap != nil && pos.snap.Offset > p.horizon() && pos.retained == nil {
		keep = min(keep, pos.snap.Offset+1)
	}
	return keep
}

// delayTrimFrom keeps what delayed replicas need while the budget allows
// it; beyond, the budget wins and the shortfall is reported once per
// episode (replproxy_delay_covered 0).
func (f *follower) delayTrimFrom(pos position, keepFrom int64) int64 {
	want := f.down.p.delayKeepFrom(pos)
	if want >= keepFrom {
		f.delayShort.Store(false)
		return keepFrom
	}
	if pos.end-want+1 <= f.cfg.BacklogSize {
		f.delayShort.Store(false)
		return want
	}
	if !f.delayShort.Swap(true) {
		f.log.Warn("the backlog budget cannot hold --delay of stream at the current write rate; delayed replicas fall behind the front and wait for an old enough snapshot",
			"delay", f.cfg.Delay.String(), "stream_in_delay", pos.end-want+1, "backlog_size", f.cfg.BacklogSize)
	}
	return keepFrom
}

// DelayStatus is the delayed listener's state, for INFO and metrics.
type DelayStatus struct {
	Enabled bool
	Delay   time.Duration
	Horizon int64 // last offset delayed replicas may have now
	Covered bool  // the backlog budget holds the stream they need
}

// DelayStatus reports the delayed listener.
func (p *Proxy) DelayStatus() DelayStatus {
	if p.cfg.Delay == 0 {
		return DelayStatus{}
	}
	return DelayStatus{Enabled: true, Delay: p.cfg.Delay, Horizon: p.horizon(), Covered: !p.follower.delayShort.Load()}
}
