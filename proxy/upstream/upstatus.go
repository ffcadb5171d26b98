package upstream

import (
	"time"

	"github.com/replproxy/replproxy/proxy/vocab"
)

// Status is the upstream side's state now.
func (f *Follower) Status(now time.Time) vocab.UpstreamStatus {
	addr, source := f.UpstreamOrigin()
	st := vocab.UpstreamStatus{Addr: addr, Source: source, Link: f.linkStatus(), Refreshing: f.Refresh.Load(),
		Refresh: f.refreshLast.status(now), FullSync: f.gate.status(), Guard: f.GuardStatus(),
		RefusedSources: f.refusals.list(), WindowShort: f.windowShort.Load(), DelayShort: f.delayShort.Load(),
		Calm: vocab.CalmStatus{Waiting: f.calm.waiting.Load(), Waits: f.calm.waits.Load(),
			OriginRate: f.calm.originRate.Load(), Intake: f.calm.intake.Load()}}
	return st
}

// Refreshing reports whether a snapshot refresh runs now.
func (f *Follower) Refreshing() bool { return f.Refresh.Load() }

// LastRefresh is how the last refresh went.
func (f *Follower) LastRefresh() vocab.RefreshStatus { return f.refreshLast.status(time.Now()) }
