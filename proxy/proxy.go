package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/psync"
)

// Proxy is one relay: one upstream history, its snapshot and backlog, and the
// downstream replicas served from them.
type Proxy struct {
	cfg     Config
	log     *slog.Logger
	runID   string
	started time.Time
	store   *store
	ln      net.Listener

	// mu guards the session set, the link status and the upstream address;
	// nothing does I/O while holding it.
	mu       sync.Mutex
	sessions map[*session]struct{}
	link     linkStatus
	// upstream is where the follower connects: --upstream, until an
	// operator's REPLICAOF moves it. cutLink ends the current connection.
	upstream string
	cutLink  context.CancelCauseFunc
	movedCh  chan struct{} // wakes a reconnect backoff after a move
	scanner  psync.Scanner // stream position within a command, kept across reconnects
	nextID   int64

	slots   chan struct{} // full-sync slots; nil when unlimited
	queued  atomic.Int64
	stats   *Stats
	refresh atomic.Bool   // a snapshot refresh is running
	kick    chan struct{} // wakes maintain when trimming or a refresh is due
	// gate spaces out requests that cost the origin a fork.
	gate *forkGate
}

// Stats are the event counters shown in INFO and metrics.
type Stats struct {
	UpstreamConnects     atomic.Int64
	UpstreamLinkChanges  atomic.Int64
	UpstreamDownNanos    atomic.Int64 // time the link was down, closed periods only
	UpstreamDisconnects  counts[UpstreamReason]
	UpstreamFullSyncs    atomic.Int64
	UpstreamPartialSyncs atomic.Int64
	UpstreamSyncFailures atomic.Int64 // payloads rejected or cut
	UpstreamRDBBytes     atomic.Int64
	UpstreamStreamBytes  atomic.Int64
	Refreshes            atomic.Int64
	RefreshFailures      atomic.Int64
	SyncFull             atomic.Int64 // served to replicas
	SyncPartialOK        atomic.Int64
	SyncPartialErr       atomic.Int64
	SentRDBBytes         atomic.Int64
	SentStreamBytes      atomic.Int64
	Rejections           [5]atomic.Int64 // by psync.ContinueVerdict
	Disconnects          counts[DisconnectReason]
	RejectedConns        atomic.Int64 // refused at --max-clients
	// UpstreamFullSyncOutcomes counts full syncs the upstream started (each
	// a fork on the origin) by purpose and outcome (SyncOutcomes order).
	UpstreamFullSyncOutcomes [3][4]atomic.Int64
}

// countFullSync counts one upstream full sync; class "" is success.
func (s *Stats) countFullSync(purpose syncPurpose, class failureClass) {
	outcome := "ok"
	if class != "" {
		outcome = string(class)
	}
	for i, pp := range syncPurposes {
		for j, o := range SyncOutcomes {
			if pp == purpose && o == outcome {
				s.UpstreamFullSyncOutcomes[i][j].Add(1)
			}
		}
	}
}

// FullSyncs returns the upstream full-sync counts by purpose, then outcome.
func (s *Stats) FullSyncs() map[string]map[string]int64 {
	out := map[string]map[string]int64{}
	for i, pp := range syncPurposes {
		out[string(pp)] = map[string]int64{}
		for j, o := range SyncOutcomes {
			out[string(pp)][o] = s.UpstreamFullSyncOutcomes[i][j].Load()
		}
	}
	return out
}

func newStats() *Stats {
	return &Stats{UpstreamDisconnects: newCounts(UpstreamReasons), Disconnects: newCounts(DisconnectReasons)}
}

// linkStatus is the upstream link as INFO shows it.
type linkStatus struct {
	state     LinkState
	up        bool
	lastIO    time.Time
	downSince time.Time
	changed   time.Time // last up/down transition
	syncTotal int64     // payload size; 0 for EOF-form
	syncRead  int64
}

// New opens the data dir, recovers it and returns a proxy ready to Run. It
// takes an exclusive lock on the data dir.
func New(cfg Config, log *slog.Logger) (*Proxy, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rnd [20]byte
	_, _ = rand.Read(rnd[:])
	p := &Proxy{
		cfg: cfg, log: log, runID: hex.EncodeToString(rnd[:]), started: time.Now(),
		sessions: map[*session]struct{}{},
		link:     linkStatus{state: LinkConnect, downSince: time.Now()}, upstream: cfg.Upstream,
		movedCh: make(chan struct{}, 1),
		kick:    make(chan struct{}, 1),
		stats:   newStats(),
		gate:    newForkGate(cfg.FullSyncRetryMin, cfg.FullSyncRetryMax, filepath.Join(cfg.DataDir, "fullsync-backoff")),
	}
	if cfg.MaxParallelFullSyncs > 0 {
		p.slots = make(chan struct{}, cfg.MaxParallelFullSyncs)
	}
	st, err := openStore(storeOptions{dataDir: cfg.DataDir, segmentSize: cfg.SegmentSize, fsync: cfg.Fsync, syncFile: cfg.syncFile}, log)
	if err != nil {
		return nil, err
	}
	p.store = st
	if err := p.gate.load(); err != nil {
		log.Warn("full-sync backoff state unreadable; starting without it", "err", err)
	}
	if gs := p.gate.status(); !gs.NextAt.IsZero() {
		log.Warn("a full sync from the upstream failed or was cut before this start; the next one waits",
			"next_attempt_in", time.Until(gs.NextAt).Round(time.Second).String(), "last_failure", gs.LastClass, "err", gs.LastError)
	}
	return p, nil
}

// maybeKick wakes maintain when the backlog needs trimming or the snapshot
// a refresh; it is cheap enough for every append.
func (p *Proxy) maybeKick(end int64) {
	if end-p.store.snapOffset.Load() > int64(float64(p.cfg.BacklogSize)*p.cfg.RefreshRatio) || p.store.bl.Size() > p.cfg.BacklogSize {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// Run serves until ctx is cancelled, then shuts down: it stops the upstream
// link and downstream sessions, syncs the backlog and persists state.
func (p *Proxy) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", p.cfg.Listen)
	if err != nil {
		p.shutdown()
		return fmt.Errorf("listen %s: %w", p.cfg.Listen, err)
	}
	return p.Serve(ctx, ln)
}

// Serve is Run on an existing listener.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	p.ln = ln
	p.log.Info("replproxy started", "listen", ln.Addr().String(), "upstream", p.upstreamAddr(),
		"data_dir", p.cfg.DataDir, "backlog_size", p.cfg.BacklogSize, "fsync", p.cfg.Fsync.String())
	var wg sync.WaitGroup
	wg.Go(func() { p.follow(ctx) })
	wg.Go(func() { p.maintain(ctx) })
	wg.Go(func() { p.acceptLoop(ctx, ln) })
	if snap := p.position().snap; snap != nil && snap.Keyspace == nil {
		wg.Go(func() { p.store.keyspace.scan(ctx, p.store.snapDir, snap, p.log) })
	}
	<-ctx.Done()
	ln.Close()
	p.closeSessions(DownShutdown)
	wg.Wait()
	return p.shutdown()
}

// Addr is the listening address once Serve has started.
func (p *Proxy) Addr() net.Addr {
	if p.ln == nil {
		return nil
	}
	return p.ln.Addr()
}

func (p *Proxy) shutdown() error {
	end := p.store.bl.End()
	err := p.store.close()
	if err != nil {
		p.log.Error("shutdown", "err", err)
	} else {
		p.log.Info("replproxy stopped", "offset", end)
	}
	return err
}

func (p *Proxy) position() position { return p.store.position() }

// maintain trims the backlog to its budget and refreshes the snapshot before
// the stream since it outgrows the budget.
func (p *Proxy) maintain(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var refreshes sync.WaitGroup // joined before maintain returns
	defer refreshes.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.kick:
		}
		pos := p.position()
		if pos.snap == nil {
			continue
		}
		if n, err := p.store.bl.Trim(pos.snap.Offset+1, p.cfg.BacklogSize); err != nil {
			p.log.Error("backlog trim failed", "err", err)
		} else if n > 0 {
			p.log.Debug("backlog trimmed", "bytes", n)
			p.dropTrimmedReplicas()
		}
		// A snapshot from before an ID shift stays servable: its offset is
		// below second_repl_offset, so it continues through replid2. Only
		// the budget triggers a refresh; a failover must not fork the
		// newly promoted master.
		since := pos.end - pos.snap.Offset
		if since <= int64(float64(p.cfg.BacklogSize)*p.cfg.RefreshRatio) || !p.linkUp() || p.refresh.Load() ||
			p.gate.wait(false, false) > 0 || !p.roomForSnapshot(max(pos.snap.Size, p.gate.expected())) {
			continue
		}
		p.refresh.Store(true)
		refreshes.Go(func() {
			defer p.refresh.Store(false)
			p.refreshSnapshot(ctx, since)
		})
	}
}

func (p *Proxy) linkUp() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.link.up
}

func (p *Proxy) setLink(state LinkState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	wasUp := p.link.up
	p.link.state = state
	p.link.up = state == LinkConnected
	if wasUp != p.link.up {
		p.stats.UpstreamLinkChanges.Add(1)
		now := time.Now()
		p.link.changed = now
		if wasUp {
			p.link.downSince = now
		} else {
			p.stats.UpstreamDownNanos.Add(int64(now.Sub(p.link.downSince)))
		}
	}
}

// dropTrimmedReplicas disconnects replicas whose next byte was trimmed
// away. Their writers may be blocked on a full socket and would otherwise
// notice only at the replica timeout.
func (p *Proxy) dropTrimmedReplicas() {
	first, _ := p.store.bl.Range()
	behind := p.selectSessions(func(s *session) bool {
		c := s.cur.Load()
		return c != nil && c.Pos() < first
	})
	for _, s := range behind {
		s.log.Warn("replica fell behind the backlog front; disconnecting", "backlog_first", first)
		s.close(DownOffsetTrimmed)
	}
}

// closeSessions disconnects the replicas that hold a position in the
// stream (all connections on shutdown). Replicas still waiting for a
// snapshot have none yet and are left waiting.
func (p *Proxy) closeSessions(reason DisconnectReason) int {
	victims := p.selectSessions(func(s *session) bool {
		return reason == DownShutdown || (s.replica.Load() && s.state.Load() != stateWaitBgsave)
	})
	for _, s := range victims {
		s.close(reason)
	}
	return len(victims)
}

// selectSessions returns the sessions that match; the caller acts on them
// outside mu (closing logs and touches sockets).
func (p *Proxy) selectSessions(match func(*session) bool) []*session {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*session
	for s := range p.sessions {
		if match(s) {
			out = append(out, s)
		}
	}
	return out
}
