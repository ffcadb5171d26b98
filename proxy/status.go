package proxy

import (
	"net"
	"strconv"
	"time"

	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// Status returns the current status: each component's part read under
// its own lock (the store's without any), none held across I/O.
func (p *Proxy) Status() vocab.Status {
	now := time.Now()
	up := p.follower.Status(now)
	sto := p.store.Status(now)
	down := p.down.Status(sto.BacklogEnd, now)
	host, portS, _ := net.SplitHostPort(up.Addr)
	port, _ := strconv.Atoi(portS)
	st := vocab.Status{
		RunID: p.runID, Version: p.cfg.Version, Started: p.started, BacklogSize: p.cfg.BacklogSize,
		UpstreamHost: host, UpstreamPort: port, UpstreamAddr: up.Addr, UpstreamSource: up.Source,
		History: sto.History, BacklogFirst: sto.BacklogFirst, BacklogEnd: sto.BacklogEnd, Snapshot: sto.Snapshot,
		Keyspace: sto.Keyspace, OldestEntry: sto.OldestEntry, RedisVersion: sto.RedisVersion, TailCapacity: sto.TailCapacity,
		IntakeBuffer: sto.IntakeBuffer, IntakeBuffered: sto.IntakeBuffered,
		Refreshing: up.Refreshing, Refresh: up.Refresh, FullSync: up.FullSync, Guard: up.Guard, Calm: up.Calm,
		RefusedSources: up.RefusedSources, BacklogWindowShort: up.WindowShort,
		Replicas: down.Replicas, Queued: down.Queued, Delay: p.delayStatus(up, sto),
	}
	link := up.Link
	st.LinkState, st.LinkUp, st.LastIO, st.LinkChanged = link.State, link.Up, link.LastIO, link.Changed
	st.SyncTotalBytes, st.SyncReadBytes = link.SyncTotal, link.SyncRead
	st.LinkDownReason, st.LinkDownError = link.DownReason, link.DownErr
	st.DownDuration = time.Duration(p.stats.UpstreamDownNanos.Load())
	if !link.Up {
		st.LinkDownSince = link.DownSince
		st.DownDuration += now.Sub(link.DownSince)
	}
	st.Clients = max(p.srv.SessionCount()-len(st.Replicas), 0)
	for _, r := range st.Replicas {
		if r.State == vocab.ReplicaSendBulk {
			st.FullSyncing++
		}
	}
	return st
}

// Stats returns the event counters.
func (p *Proxy) Stats() *vocab.Stats { return p.stats }

// Config returns the effective configuration (secrets included: callers
// must not print it).
func (p *Proxy) Config() Config { return p.cfg }

// BacklogCounters returns bytes appended to and trimmed from the backlog
// since start.
func (p *Proxy) BacklogCounters() (written, trimmed int64) { return p.store.Backlog.Counters() }

// BacklogSyncErrors counts failed background fsyncs of the backlog.
func (p *Proxy) BacklogSyncErrors() int64 { return p.store.Backlog.SyncErrors() }

// DelayStatus reports the delayed listener.
func (p *Proxy) DelayStatus() vocab.DelayStatus {
	now := time.Now()
	return p.delayStatus(p.follower.Status(now), p.store.Status(now))
}

func (p *Proxy) delayStatus(up vocab.UpstreamStatus, sto store.Status) vocab.DelayStatus {
	if p.cfg.Delay == 0 {
		return vocab.DelayStatus{}
	}
	return vocab.DelayStatus{Enabled: true, Delay: p.cfg.Delay, Horizon: sto.Horizon, Covered: !up.DelayShort}
}
