package proxy

import (
	"net"
	"strconv"
	"time"

	"github.com/replproxy/replproxy/proxy/vocab"
)

// Status returns the current status: each component's part read under
// its own lock (the store's without any), none held across I/O.
func (p *Proxy) Status() vocab.Status {
	now := time.Now()
	up := p.follower.Status(now)
	host, portS, _ := net.SplitHostPort(up.Addr)
	port, _ := strconv.Atoi(portS)
	pub := p.store.Published()
	first, end := p.store.Backlog.Range()
	st := vocab.Status{
		RunID: p.runID, Version: p.cfg.Version, Started: p.started,
		UpstreamHost: host, UpstreamPort: port,
		History: pub.Hist, BacklogFirst: first, BacklogEnd: end, BacklogSize: p.cfg.BacklogSize,
		Snapshot: pub.Snap, Refreshing: up.Refreshing, Queued: p.down.QueuedFullSyncs(), FullSync: up.FullSync,
	}
	link := up.Link
	st.LinkState, st.LinkUp, st.LastIO, st.LinkChanged = link.State, link.Up, link.LastIO, link.Changed
	st.SyncTotalBytes, st.SyncReadBytes = link.SyncTotal, link.SyncRead
	st.LinkDownReason, st.LinkDownError = link.DownReason, link.DownErr
	st.BacklogWindowShort = up.WindowShort
	st.RefusedSources = up.RefusedSources
	st.Calm = up.Calm
	st.DownDuration = time.Duration(p.stats.UpstreamDownNanos.Load())
	if !link.Up {
		st.LinkDownSince = link.DownSince
		st.DownDuration += now.Sub(link.DownSince)
	}
	if t, ok := p.store.Arrivals.Arrival(first); ok && end >= first {
		st.OldestEntry = t
	}
	st.Keyspace = p.store.Keyspace.Get(pub.Snap)
	st.RedisVersion = p.store.UpstreamVersion()
	st.UpstreamAddr, st.UpstreamSource = up.Addr, up.Source
	st.Refresh, st.Guard, st.Delay = up.Refresh, up.Guard, p.delayStatus(up)
	st.TailCapacity = p.store.Backlog.TailCapacity()
	st.Replicas = p.down.Replicas(end, now)
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
func (p *Proxy) DelayStatus() vocab.DelayStatus { return p.delayStatus(p.follower.Status(time.Now())) }

func (p *Proxy) delayStatus(up vocab.UpstreamStatus) vocab.DelayStatus {
	if p.cfg.Delay == 0 {
		return vocab.DelayStatus{}
	}
	return vocab.DelayStatus{Enabled: true, Delay: p.cfg.Delay, Horizon: p.store.Horizon(), Covered: !up.DelayShort}
}
