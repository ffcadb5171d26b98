package upstream

import (
	"time"
)

// CalmStatus is the wait for an origin's write burst to calm.
type CalmStatus struct {
	Waiting    bool  // a full sync is held until the burst calms
	Waits      int64 // waits begun since start
	OriginRate int64 // bytes/s the origin wrote at the last sample
	Intake     int64 // bytes/s replproxy measured it can take, at the last cut
}

// upStatus is the upstream side as INFO, ROLE and metrics show it: a
// value, each part read under its own owner's lock or atomically.
type Status struct {
	Addr   string // where the follower connects
	Source string // why: the configuration, or a REPLICAOF (store.UpstreamFrom*)
	Link   LinkStatus
	// Refreshing: a snapshot refresh runs; Refresh: how the last one went.
	Refreshing bool
	Refresh    RefreshStatus
	FullSync   GateStatus
	Calm       CalmStatus
	Guard      GuardStatus
	// RefusedSources are the replicas that could not serve the last
	// refreshes that asked them.
	RefusedSources []RefusedSource
	// WindowShort: the backlog is full and covers less than
	// minBacklogWindow of stream at the current write rate.
	WindowShort bool
	// DelayShort: the budget cannot hold the stream delayed replicas need.
	DelayShort bool
}

// RefreshStatus is the last snapshot refresh, as Redis reports its BGSAVE.
type RefreshStatus struct {
	Failed      bool      // rdb_last_bgsave_status err
	LastSecs    int64     // rdb_last_bgsave_time_sec, -1 before any
	CurrentSecs int64     // rdb_current_bgsave_time_sec, -1 when none runs
	DoneAt      time.Time // when the last one ended; zero before any
}

// status is the upstream side's state now.
func (f *Follower) Status(now time.Time) Status {
	addr, source := f.UpstreamOrigin()
	st := Status{Addr: addr, Source: source, Link: f.linkStatus(), Refreshing: f.Refresh.Load(),
		Refresh: f.refreshLast.status(now), FullSync: f.gate.status(), Guard: f.GuardStatus(),
		RefusedSources: f.refusals.list(), WindowShort: f.windowShort.Load(), DelayShort: f.delayShort.Load(),
		Calm: CalmStatus{Waiting: f.calm.waiting.Load(), Waits: f.calm.waits.Load(),
			OriginRate: f.calm.originRate.Load(), Intake: f.calm.intake.Load()}}
	return st
}

// refreshing reports whether a snapshot refresh runs now.
func (f *Follower) Refreshing() bool { return f.Refresh.Load() }

// lastRefresh is how the last refresh went.
func (f *Follower) LastRefresh() RefreshStatus { return f.refreshLast.status(time.Now()) }
