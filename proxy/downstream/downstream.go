package downstream

import (
	"context"
	"io"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/proxy/handoff"
	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// Downstream owns the replica side: the replicas the sessions hand over
// at SYNC/PSYNC, serving each from the store (a thin executor around the
// sync planner, plan.Sync), the fan-out writer and the full-sync slots
// and rate. Its goroutines: each replica's ACK reader, joined by the
// replica before its session's goroutine returns.
type Downstream struct {
	cfg    Options
	log    *slog.Logger
	stats  *vocab.ReplicaCounters
	store  *store.Store
	up     Upstream
	fanout *Fanout // nil when disabled

	// mu guards the replica set; nothing holds it across I/O.
	mu       sync.Mutex
	replicas map[*Replica]struct{}

	slots chan struct{} // full-sync slots; nil when unlimited
	// fullSyncRate bounds the bytes/s of all full syncs together; nil: none.
	fullSyncRate *rateLimiter

	// refusedMu guards refused: replicas (by announced address) that hung
	// up after a full sync of an RDB version without ACKing, most likely
	// unable to load it, and until when they are not sent it again.
	refusedMu sync.Mutex
	refused   map[string]refusal
	queued    atomic.Int64 // replicas waiting for a slot
}

// Options are what the replica side reads of the configuration (see
// the flags of the same names).
type Options struct {
	ReplicaTimeout       time.Duration
	HoldAhead            time.Duration
	MaxParallelFullSyncs int   // 0: unlimited
	FullSyncRateLimit    int64 // bytes/s of all full syncs together; 0: none
	RDBRefusalTTL        time.Duration
	RDBOnlyMaxAge        time.Duration
	// Observer times full syncs and ACK lags (histograms); never nil.
	Observer interface {
		ObserveAck(lagBytes int64, lagSeconds float64)
		ObserveDownstreamFullSync(seconds float64)
	}
}

// New serves replicas from st; fan is the fan-out writer (nil:
// none).
func New(cfg Options, log *slog.Logger, stats *vocab.ReplicaCounters, st *store.Store, up Upstream, fan *Fanout) *Downstream {
	d := &Downstream{cfg: cfg, log: log, stats: stats, store: st, up: up, fanout: fan, replicas: map[*Replica]struct{}{},
		fullSyncRate: newRateLimiter(cfg.FullSyncRateLimit, rateChunk), refused: map[string]refusal{}}
	if cfg.MaxParallelFullSyncs > 0 {
		d.slots = make(chan struct{}, cfg.MaxParallelFullSyncs)
	}
	return d
}

// selectReplicas returns the replicas that match; the caller acts on them
// outside mu (closing logs and touches sockets).
func (d *Downstream) selectReplicas(match func(*Replica) bool) []*Replica {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*Replica
	for r := range d.replicas {
		if match(r) {
			out = append(out, r)
		}
	}
	return out
}

// DropTrimmedReplicas disconnects replicas whose next byte was trimmed
// away. Their writers may be blocked on a full socket and would otherwise
// notice only at the replica timeout.
func (d *Downstream) DropTrimmedReplicas() {
	first, _ := d.store.Backlog.Range()
	behind := d.selectReplicas(func(s *Replica) bool {
		c := s.cur.Load()
		return c != nil && c.Pos() < first
	})
	for _, s := range behind {
		s.log.Warn("replica fell behind the backlog front; disconnecting", "backlog_first", first)
		s.Close(vocab.DownOffsetTrimmed)
	}
}

// CloseReplicas disconnects the replicas that hold a position in the
// stream (the history moved). Replicas still waiting for a snapshot have
// none yet and are left waiting.
func (d *Downstream) CloseReplicas(reason vocab.DisconnectReason) int {
	victims := d.selectReplicas(func(s *Replica) bool {
		return s.state.Load() != stateWaitBgsave
	})
	for _, s := range victims {
		s.Close(reason)
	}
	return len(victims)
}

// NthAck is the offset at least n online replicas have acknowledged (0
// when fewer are online).
func (d *Downstream) NthAck(n int) int64 {
	var offs []int64
	for _, s := range d.selectReplicas(func(s *Replica) bool {
		return s.onlineStock()
	}) {
		offs = append(offs, s.ackOff.Load())
	}
	if len(offs) < n {
		return 0
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] > offs[j] })
	return max(offs[n-1], 0)
}

// CandidateAckAge: replicas ACK every second; one silent for longer is
// not asked for a snapshot.
const CandidateAckAge = 3 * time.Second

// RefreshCandidates lists the replicas a snapshot refresh may ask, most
// caught up first: online (so not busy with a full sync), ACKing (a frozen
// replica still accepts connections, and would hold the refresh for the
// repl-timeout), with an announced listening port. The one asked last time
// and those refused before go last while others exist.
func (d *Downstream) RefreshCandidates(avoid string, refused func(addr string) bool) []vocab.Candidate {
	type cand struct {
		vocab.Candidate
		ack   int64
		later bool
	}
	recent := time.Now().Add(-CandidateAckAge).UnixNano()
	var cs []cand
	for _, s := range d.selectReplicas(func(s *Replica) bool {
		return s.onlineStock() && !s.RDBOnly && s.ListeningPort > 0 && s.ackTime.Load() >= recent
	}) {
		addr := s.replicaAddr()
		cs = append(cs, cand{Candidate: vocab.Candidate{Addr: addr, TLS: s.tls, ID: s.ident},
			ack: s.ackOff.Load(), later: addr == avoid || refused(addr)})
	}
	sort.SliceStable(cs, func(i, j int) bool {
		if cs[i].later != cs[j].later {
			return cs[j].later
		}
		if cs[i].ack != cs[j].ack {
			return cs[i].ack > cs[j].ack
		}
		return cs[i].Addr < cs[j].Addr
	})
	out := make([]vocab.Candidate, len(cs))
	for i, c := range cs {
		out[i] = c.Candidate
	}
	return out
}

// refusal is a replica that could not load an RDB version.
type refusal struct {
	rdbVersion int
	until      time.Time
}

// maxRefusals bounds the memory of refusals (a flood of addresses).
const maxRefusals = 4096

// noteRefusal remembers that the replica at addr hung up after a full sync
// of rdbVersion without acknowledging it.
func (d *Downstream) noteRefusal(addr string, rdbVersion int) {
	d.refusedMu.Lock()
	defer d.refusedMu.Unlock()
	now := time.Now()
	if len(d.refused) >= maxRefusals {
		for k, r := range d.refused {
			if now.After(r.until) {
				delete(d.refused, k)
			}
		}
	}
	if len(d.refused) < maxRefusals {
		d.refused[addr] = refusal{rdbVersion: rdbVersion, until: now.Add(d.cfg.RDBRefusalTTL)}
	}
}

// abandonedSyncWait bounds awaitAbandonedSync: a replica's hang-up is
// read within milliseconds; a link still up after this is not abandoned.
const abandonedSyncWait = 2 * time.Second

// awaitAbandonedSync: a replica that cannot load a full sync hangs up and
// asks again at once, so its new request can be read before its old
// link's hang-up is, and the same payload would go out again. Before a
// full sync, wait (at most limit) for the end of every earlier link of
// the same replica that got a payload and never ACKed: its refusal, if
// any, is noted by then.
func (d *Downstream) awaitAbandonedSync(ctx context.Context, self *Replica, limit time.Duration) {
	addr := self.replicaAddr()
	pending := func() bool {
		return len(d.selectReplicas(func(s *Replica) bool {
			return s != self && !s.legacy && s.ListeningPort > 0 &&
				s.sentRDB.Load() != 0 && !s.acked.Load() && s.replicaAddr() == addr
		})) > 0
	}
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for pending() {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-poll.C:
		}
	}
}

// refusedVersion reports whether the replica at addr failed to load
// rdbVersion lately: then it is answered with an error, not another payload.
func (d *Downstream) refusedVersion(addr string, rdbVersion int) (time.Duration, bool) {
	d.refusedMu.Lock()
	defer d.refusedMu.Unlock()
	r, ok := d.refused[addr]
	if !ok || r.rdbVersion != rdbVersion || time.Now().After(r.until) {
		return 0, false
	}
	return time.Until(r.until), true
}

// add registers a replica: from now on it is served and listed.
func (d *Downstream) add(r *Replica) {
	d.mu.Lock()
	d.replicas[r] = struct{}{}
	d.mu.Unlock()
}

func (d *Downstream) remove(r *Replica) {
	d.mu.Lock()
	delete(d.replicas, r)
	d.mu.Unlock()
}

// replicaStatus lists the replicas, by ID.
func (d *Downstream) Replicas(end int64, now time.Time) (out []vocab.ReplicaStatus) {
	arrivals := d.store.Arrivals
	d.mu.Lock()
	defer d.mu.Unlock()
	for s := range d.replicas {
		rs := vocab.ReplicaStatus{ID: s.id, IP: s.replicaIP(), Port: s.ListeningPort, Addr: s.addr,
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
	return out
}

// NewReplica takes over a session's connection at SYNC/PSYNC: errorf
// answers an error reply as the session counts them, endSession closes
// the connection.
//
// The SYNC or PSYNC in cmd and args is checked first: a malformed one is
// answered with Redis' error and no replica (nil) is made; err is then the
// reply's write error.
func (d *Downstream) NewReplica(l handoff.Link, cmd string, args [][]byte) (*Replica, error) {
	req, perr := parseSync(cmd, args)
	if perr != nil {
		return nil, l.Errorf("%s", perr.Error())
	}
	var out io.Writer = l.Conn
	if l.TLS {
		out = newBufferedWriter(l.Conn) // no sendfile through TLS
	}
	r := &Replica{d: d, Announce: l.Announce, id: l.ID, conn: l.Conn, raw: l.Raw, out: out, br: l.Reader, addr: l.Addr, tls: l.TLS,
		delayed: l.Delayed, log: l.Log, ctx: l.Ctx, ident: l.Identity, errorf: l.Errorf, endSession: l.EndSession}
	r.ackOff.Store(-1)
	r.legacy, r.req = req.cmd == "sync", req
	// Everything others read once they see the replica (the logger, the
	// announced address) is written before it is published.
	r.log = r.log.With("replica", r.replicaAddr())
	return r, nil
}

// Upstream is what replicas ask of the upstream side.
type Upstream interface {
	// WantRefresh asks for a snapshot refresh now (a replica waits for one).
	WantRefresh(why string)
	// ReplicaAcked wakes the ACK policy's upstream ACKs.
	ReplicaAcked()
	// Refreshing reports whether a refresh runs; LastRefresh how the last went.
	Refreshing() bool
	LastRefresh() vocab.RefreshStatus
}

// QueuedFullSyncs is the number of replicas waiting for a full-sync slot.
func (d *Downstream) QueuedFullSyncs() int64 { return d.queued.Load() }

// Status is the replica side's state now.
func (d *Downstream) Status(end int64, now time.Time) vocab.DownstreamStatus {
	return vocab.DownstreamStatus{Replicas: d.Replicas(end, now), Queued: d.QueuedFullSyncs()}
}
