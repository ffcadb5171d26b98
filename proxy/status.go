package proxy

import (
	"net"
	"sort"
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
		Snapshot: pub.Snap, Refreshing: up.Refreshing, Queued: p.down.queued.Load(), FullSync: up.FullSync,
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
	st.Clients, st.Replicas = p.down.replicaStatus(end, now)
	for _, r := range st.Replicas {
		if r.State == vocab.ReplicaSendBulk {
			st.FullSyncing++
		}
	}
	return st
}

// replicaStatus lists the replicas (by ID) and counts the other clients.
func (d *downstream) replicaStatus(end int64, now time.Time) (clients int, out []vocab.ReplicaStatus) {
	arrivals := d.p.store.Arrivals
	d.mu.Lock()
	defer d.mu.Unlock()
	for s := range d.sessions {
		if !s.replica.Load() {
			clients++
			continue
		}
		rs := vocab.ReplicaStatus{ID: s.id, IP: s.replicaIP(), Port: s.listeningPort, Addr: s.addr,
			State: vocab.ReplicaStateByCode[s.state.Load()], AckOff: s.ackOff.Load(), Legacy: s.legacy, SentOffset: -1}
		if t := s.ackTime.Load(); t > 0 {
			rs.AckTime = time.Unix(0, t)
		}
		if c := s.cur.Load(); c != nil {
			rs.SentOffset = c.Pos() - 1
		}
		if rs.State == vocab.ReplicaOnline && rs.AckOff >= 0 {
			rs.LagBytes = max(end-rs.AckOff, 0)
			rs.LagSeconds = arrivals.LagSeconds(rs.AckOff, now)
		}
		out = append(out, rs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return clients, out
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
	if p.cfg.Delay == 0 {
		return vocab.DelayStatus{}
	}
	return vocab.DelayStatus{Enabled: true, Delay: p.cfg.Delay, Horizon: p.store.Horizon(), Covered: !p.follower.Status(time.Now()).DelayShort}
}
