package upstream

import (
	"context"
	"sync"
	"time"

	"github.com/replproxy/replproxy/proxy/store"
)

// maintainer is the maintain goroutine's part of the follower: trimming
// the backlog, the budget's overrun and lapse, and snapshot refreshes
// (one at a time, joined by Maintain). Requests reach it on the
// follower's kick channel.
type maintainer struct {
	f *Follower
	// Refresh state, touched by one refresh at a time (maintain starts the
	// next only after the last one ended).
	lastRefreshReplica string       // not asked twice in a row while others exist
	retryBudget        refreshRetry // after failed refreshes the budget called for
	retryDemand        refreshRetry // after failed refreshes a replica waited for
	graceUntil         time.Time    // after a restart, replicas are waited for until then
	graceLogged        bool         // the wait was logged (one refresh at a time)
	windowWarned       time.Time    // when a short backlog window was last logged
	lapseWarned        string       // the snapshot whose lapse was logged
}

// The follower's maintain loop: trimming the backlog to its budget, and
// scheduling snapshot refreshes (refresh.go runs them).

// maybeKick wakes maintain when the backlog needs trimming or the snapshot
// a refresh; it is cheap enough for every append.
func (m *maintainer) maybeKick(end int64) {
	f := m.f
	if end-f.store.SnapOffset.Load() > int64(float64(f.cfg.BacklogSize)*f.cfg.RefreshRatio) || f.store.Backlog.Size() > f.cfg.BacklogSize {
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
}

// Maintain trims the backlog to its budget and refreshes the snapshot before
// the stream since it outgrows the budget.
func (f *Follower) Maintain(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var refreshes sync.WaitGroup // joined before maintain returns
	defer refreshes.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-f.kick:
		}
		pos := f.store.Position()
		if pos.Snap == nil {
			continue
		}
		// Eager: never trim past the snapshot (a refresh comes first). Lazy:
		// trim to the budget and let the snapshot lapse; a replica that
		// needs a full sync asks for a refresh (wantRefresh).
		keepFrom := f.maint.trimFloor(pos)
		f.maint.checkWindow(pos)
		if f.cfg.Delay > 0 {
			keepFrom = f.maint.delayTrimFrom(pos, keepFrom)
		}
		if n, err := f.store.Backlog.Trim(keepFrom, f.cfg.BacklogSize); err != nil {
			f.log.Error("backlog trim failed", "err", err)
		} else if n > 0 {
			f.log.Debug("backlog trimmed", "bytes", n)
			f.down.DropTrimmedReplicas()
		}
		// A snapshot from before an ID shift stays servable: its offset is
		// below second_repl_offset, so it continues through replid2. Only
		// the budget triggers a refresh; a failover must not fork the
		// newly promoted master.
		since := pos.End - pos.Snap.Offset
		wanted := f.refreshWanted.Load()
		due := wanted
		if f.cfg.RefreshMode != RefreshLazy {
			due = due || since > int64(float64(f.cfg.BacklogSize)*f.cfg.RefreshRatio)
		}
		if !due || !f.LinkUp() || f.Refresh.Load() ||
			time.Now().UnixNano() < f.maint.retryFor(wanted).notBefore.Load() || !f.full.refreshSourceReady() ||
			!f.full.roomForSnapshot(max(pos.Snap.Size, f.gate.expected())) {
			continue
		}
		f.Refresh.Store(true)
		demand := f.refreshWanted.Swap(false)
		rctx, cancel := context.WithCancel(ctx)
		f.mu.Lock()
		f.refreshCancel = cancel
		f.mu.Unlock()
		refreshes.Go(func() {
			defer f.Refresh.Store(false)
			defer func() {
				f.mu.Lock()
				f.refreshCancel = nil
				f.mu.Unlock()
				cancel()
			}()
			f.maint.refreshSnapshot(rctx, since, demand)
		})
	}
}

// overrunLimit: while no refresh succeeds, an eager proxy's backlog may
// outgrow its budget up to this many budgets (a crash loop or a replica
// restart cuts refreshes for a while; the budget is a disk figure, not a
// reason to fork the origin).
const overrunLimit = 2

// trimFloor is the offset the backlog is never trimmed past: the stored
// snapshot's (a full sync is that snapshot and the stream after it), unless
// it lapses (lazy mode, or the overrun is capped). While a refresh runs
// nothing it may land inside is trimmed: a source replica a few seconds
// behind makes a snapshot at its own offset, which must still fit.
func (m *maintainer) trimFloor(pos store.Position) int64 {
	f := m.f
	pinned := pos.Snap.Offset + 1
	if f.Refresh.Load() && !m.diskShort(pos) {
		return max(pinned, pos.First) // lapsed: trim nothing until it lands
	}
	if f.cfg.RefreshMode == RefreshLazy || m.overrunCapped(pos) {
		return pos.End + 1
	}
	return pinned
}

// diskShort reports whether the data dir would not hold the next snapshot.
func (m *maintainer) diskShort(pos store.Position) bool {
	f := m.f
	if f.store.Backlog.Size() <= f.cfg.BacklogSize {
		return false // within the budget the store's own checks suffice
	}
	free, err := freeBytes(f.cfg.DataDir)
	return err == nil && free < spaceNeeded(max(pos.Snap.Size, f.gate.expected()))
}

// overrunCapped reports whether an eager proxy must let its snapshot lapse
// (trim the backlog to its budget past it, as in lazy mode): the backlog
// reached overrunLimit budgets, or the data dir would no longer hold the
// next snapshot (then the overrun would make every refresh impossible).
// A replica that needs a full sync afterwards asks for a refresh, which
// may go to the upstream.
func (m *maintainer) overrunCapped(pos store.Position) bool {
	f := m.f
	if pos.First > pos.Snap.Offset+1 {
		return true // lapsed already: keep to the budget until a refresh
	}
	// The overrun is the stream the snapshot holds back, not the backlog's
	// size: right after a refresh, trimming to the new snapshot may still
	// have to catch up.
	since := pos.End - pos.Snap.Offset
	if since <= f.cfg.BacklogSize {
		return false
	}
	why := "the stream since the snapshot reached twice the backlog budget"
	if since < overrunLimit*f.cfg.BacklogSize {
		if !m.diskShort(pos) {
			return false
		}
		why = "the data dir no longer has room for the next snapshot"
	}
	if m.lapseWarned != pos.Snap.Name {
		m.lapseWarned = pos.Snap.Name
		f.log.Warn("no snapshot refresh succeeded and "+why+"; letting the snapshot lapse: a replica that needs a full sync now waits for a refresh",
			"stream_since_snapshot", since, "budget", f.cfg.BacklogSize)
	}
	return true
}

// minBacklogWindow: a full backlog covering less stream than this buys
// replicas almost no partial resyncs.
const minBacklogWindow = 10 * time.Second

// checkWindow warns (once per transition) when the backlog is full and
// covers less than minBacklogWindow at the current write rate.
func (m *maintainer) checkWindow(pos store.Position) {
	f := m.f
	full := pos.End-pos.First+1 >= f.cfg.BacklogSize*15/16
	var window time.Duration
	if t, ok := f.store.Arrivals.Arrival(pos.First); ok {
		window = time.Since(t)
	}
	short := full && window > 0 && window < minBacklogWindow
	if f.windowShort.Swap(short) == short || !short || time.Since(m.windowWarned) < 10*time.Minute {
		return // the metric flips freely; the log says it once in ten minutes
	}
	m.windowWarned = time.Now()
	rate := float64(pos.End-pos.First+1) / window.Seconds()
	f.log.Warn("the backlog covers only seconds of stream at the current write rate: a replica away longer needs a full sync; raise --backlog-size",
		"psync_window", window.Round(100*time.Millisecond).String(), "write_rate_bytes_per_second", int64(rate),
		"backlog_size", f.cfg.BacklogSize, "size_for_10_minutes", int64(rate*600))
}

// delayTrimFrom keeps what delayed replicas need while the budget allows
// it; beyond, the budget wins and the shortfall is reported once per
// episode (replproxy_delay_covered 0).
func (m *maintainer) delayTrimFrom(pos store.Position, keepFrom int64) int64 {
	f := m.f
	want := f.store.DelayKeepFrom(pos)
	if want >= keepFrom {
		f.delayShort.Store(false)
		return keepFrom
	}
	if pos.End-want+1 <= f.cfg.BacklogSize {
		f.delayShort.Store(false)
		return want
	}
	if !f.delayShort.Swap(true) {
		f.log.Warn("the backlog budget cannot hold --delay of stream at the current write rate; delayed replicas fall behind the front and wait for an old enough snapshot",
			"delay", f.cfg.Delay.String(), "stream_in_delay", pos.End-want+1, "backlog_size", f.cfg.BacklogSize)
	}
	return keepFrom
}
