package proxy

import (
	"net"
	"sort"
	"strconv"
	"time"

	"github.com/replproxy/replproxy/proxy/upstream"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// Status is a consistent picture of the proxy for INFO, ROLE and metrics.
type Status struct {
	// RefusedSources are the replicas that could not serve the last
	// refreshes that asked them (untrusted, protected mode, unreachable,
	// writable...).
	RefusedSources []upstream.RefusedSource
	// Calm is the wait, after the upstream cut replproxy behind a burst,
	// for the burst to calm before a full sync is asked.
	Calm upstream.CalmStatus

	RunID   string
	Version string
	Started time.Time

	UpstreamHost   string
	UpstreamPort   int
	LinkState      vocab.LinkState
	LinkUp         bool
	LastIO         time.Time // zero when never
	LinkDownSince  time.Time // zero while up
	LinkChanged    time.Time // last up/down transition; zero if none
	SyncTotalBytes int64
	SyncReadBytes  int64
	// LinkDownReason and LinkDownError: why the last upstream connection
	// ended, the upstream's own words included ("" before any).
	LinkDownReason vocab.UpstreamReason
	LinkDownError  string
	// BacklogWindowShort: the backlog is full and covers less than
	// minBacklogWindow of stream at the current write rate.
	BacklogWindowShort bool

	History      psync.History
	BacklogFirst int64
	BacklogEnd   int64 // master_repl_offset
	BacklogSize  int64 // configured budget
	Snapshot     *snapshot.Info
	Refreshing   bool

	Clients      int
	Replicas     []ReplicaStatus
	Queued       int64
	FullSyncing  int       // replicas receiving a snapshot
	OldestEntry  time.Time // arrival of the backlog's first byte (zero if unknown)
	Keyspace     []snapshot.KeyStats
	DownDuration time.Duration // total time the upstream link was down, now included
	// FullSync is the cost backoff of requests that fork the origin.
	FullSync upstream.GateStatus
}

// SnapshotStale reports whether the snapshot has lapsed: the backlog no
// longer holds the stream after it (lazy refresh), so a full sync needs a
// refresh first.
func (st Status) SnapshotStale() bool {
	return st.Snapshot != nil && st.BacklogFirst > st.Snapshot.Offset+1
}

// BudgetExceeded reports whether the stream since the snapshot outgrew the
// backlog budget: no refresh succeeded, so the backlog cannot be trimmed.
func (st Status) BudgetExceeded() bool {
	return st.Snapshot != nil && !st.SnapshotStale() && st.BacklogEnd-st.Snapshot.Offset > st.BacklogSize
}

// ReplicaStatus is one downstream replica.
type ReplicaStatus struct {
	ID      int64
	IP      string
	Port    int
	Addr    string // peer address
	State   vocab.ReplicaState
	AckOff  int64
	AckTime time.Time
	Legacy  bool
	// LagBytes is the proxy's end offset minus the ACKed offset; LagSeconds
	// is how long ago the first unacknowledged byte arrived from upstream.
	LagBytes   int64
	LagSeconds float64
	SentOffset int64 // last byte written to the replica; -1 before streaming
}

// Status returns the current status: each component's part read under
// its own lock (the store's without any), none held across I/O.
func (p *Proxy) Status() Status {
	now := time.Now()
	up := p.follower.Status(now)
	host, portS, _ := net.SplitHostPort(up.Addr)
	port, _ := strconv.Atoi(portS)
	pub := p.store.Published()
	first, end := p.store.Backlog.Range()
	st := Status{
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
func (d *downstream) replicaStatus(end int64, now time.Time) (clients int, out []ReplicaStatus) {
	arrivals := d.p.store.Arrivals
	d.mu.Lock()
	defer d.mu.Unlock()
	for s := range d.sessions {
		if !s.replica.Load() {
			clients++
			continue
		}
		rs := ReplicaStatus{ID: s.id, IP: s.replicaIP(), Port: s.listeningPort, Addr: s.addr,
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
func (p *Proxy) Stats() *Stats { return p.stats }

// Config returns the effective configuration (secrets included: callers
// must not print it).
func (p *Proxy) Config() Config { return p.cfg }

// BacklogCounters returns bytes appended to and trimmed from the backlog
// since start.
func (p *Proxy) BacklogCounters() (written, trimmed int64) { return p.store.Backlog.Counters() }

// BacklogSyncErrors counts failed background fsyncs of the backlog.
func (p *Proxy) BacklogSyncErrors() int64 { return p.store.Backlog.SyncErrors() }

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
	return DelayStatus{Enabled: true, Delay: p.cfg.Delay, Horizon: p.store.Horizon(), Covered: !p.follower.Status(time.Now()).DelayShort}
}
