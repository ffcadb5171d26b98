package proxy

import (
	"net"
	"sort"
	"strconv"
	"time"

	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// Status is a consistent picture of the proxy for INFO, ROLE and metrics.
type Status struct {
	RunID   string
	Version string
	Started time.Time

	UpstreamHost   string
	UpstreamPort   int
	LinkState      LinkState
	LinkUp         bool
	LastIO         time.Time // zero when never
	LinkDownSince  time.Time // zero while up
	LinkChanged    time.Time // last up/down transition; zero if none
	SyncTotalBytes int64
	SyncReadBytes  int64

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
	FullSync GateStatus
}

// ReplicaStatus is one downstream replica.
type ReplicaStatus struct {
	ID      int64
	IP      string
	Port    int
	Addr    string // peer address
	State   ReplicaState
	AckOff  int64
	AckTime time.Time
	Legacy  bool
	// LagBytes is the proxy's end offset minus the ACKed offset; LagSeconds
	// is how long ago the first unacknowledged byte arrived from upstream.
	LagBytes   int64
	LagSeconds float64
	SentOffset int64 // last byte written to the replica; -1 before streaming
}

// Status returns the current status.
func (p *Proxy) Status() Status {
	host, portS, _ := net.SplitHostPort(p.upstreamAddr())
	port, _ := strconv.Atoi(portS)
	gate := p.gate.status()
	pub := p.store.published()
	first, end := p.store.bl.Range()
	now := time.Now()
	// The store's part is read without its lock; mu covers the link and
	// the sessions, and nothing holds it across I/O.
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Status{
		RunID: p.runID, Version: p.cfg.Version, Started: p.started,
		UpstreamHost: host, UpstreamPort: port,
		LinkState: p.link.state, LinkUp: p.link.up, LastIO: p.link.lastIO, LinkChanged: p.link.changed,
		SyncTotalBytes: p.link.syncTotal, SyncReadBytes: p.link.syncRead,
		History: pub.hist, BacklogFirst: first, BacklogEnd: end, BacklogSize: p.cfg.BacklogSize,
		Snapshot: pub.snap, Refreshing: p.refresh.Load(), Queued: p.queued.Load(), FullSync: gate,
	}
	st.DownDuration = time.Duration(p.stats.UpstreamDownNanos.Load())
	if !p.link.up {
		st.LinkDownSince = p.link.downSince
		st.DownDuration += now.Sub(p.link.downSince)
	}
	if t, ok := p.store.arrivals.arrival(first); ok && end >= first {
		st.OldestEntry = t
	}
	st.Keyspace = p.store.keyspace.get(pub.snap)
	for s := range p.sessions {
		if !s.replica.Load() {
			st.Clients++
			continue
		}
		rs := ReplicaStatus{ID: s.id, IP: s.replicaIP(), Port: s.listeningPort, Addr: s.addr,
			State: replicaStateByCode[s.state.Load()], AckOff: s.ackOff.Load(), Legacy: s.legacy, SentOffset: -1}
		if t := s.ackTime.Load(); t > 0 {
			rs.AckTime = time.Unix(0, t)
		}
		if c := s.cur.Load(); c != nil {
			rs.SentOffset = c.Pos() - 1
		}
		if rs.State == ReplicaSendBulk {
			st.FullSyncing++
		}
		if rs.State == ReplicaOnline && rs.AckOff >= 0 {
			rs.LagBytes = max(end-rs.AckOff, 0)
			rs.LagSeconds = p.store.arrivals.lagSeconds(rs.AckOff, now)
		}
		st.Replicas = append(st.Replicas, rs)
	}
	sort.Slice(st.Replicas, func(i, j int) bool { return st.Replicas[i].ID < st.Replicas[j].ID })
	return st
}

// Stats returns the event counters.
func (p *Proxy) Stats() *Stats { return p.stats }

// Config returns the effective configuration (secrets included: callers
// must not print it).
func (p *Proxy) Config() Config { return p.cfg }

// BacklogCounters returns bytes appended to and trimmed from the backlog
// since start.
func (p *Proxy) BacklogCounters() (written, trimmed int64) { return p.store.bl.Counters() }

// BacklogSyncErrors counts failed background fsyncs of the backlog.
func (p *Proxy) BacklogSyncErrors() int64 { return p.store.bl.SyncErrors() }
