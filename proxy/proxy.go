package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is one relay: one upstream history, its snapshot and backlog, and
// the downstream replicas served from them. It composes three components,
// each the one owner of its state (see the package doc): the store, the
// follower and the downstream.
type Proxy struct {
	cfg      Config
	log      *slog.Logger
	runID    string
	started  time.Time
	stats    *Stats
	store    *store
	follower *follower
	down     *downstream
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
	// RefreshAttempts counts refresh attempts by "source/outcome".
	RefreshAttempts counts[string]
	// UpstreamFullSyncOutcomes counts full syncs the upstream started (each
	// a fork on the origin) by "purpose/outcome" (SyncPurposes, SyncOutcomes).
	UpstreamFullSyncOutcomes counts[string]
}

// countFullSync counts one upstream full sync; class "" is success.
func (s *Stats) countFullSync(purpose syncPurpose, class failureClass) {
	outcome := "ok"
	if class != "" {
		outcome = string(class)
	}
	s.UpstreamFullSyncOutcomes[string(purpose)+"/"+outcome].Add(1)
}

// pairs lists "a/b" for every a, then b.
func pairs(as, bs []string) []string {
	var out []string
	for _, a := range as {
		for _, b := range bs {
			out = append(out, a+"/"+b)
		}
	}
	return out
}

func newStats() *Stats {
	return &Stats{UpstreamDisconnects: newCounts(UpstreamReasons), Disconnects: newCounts(DisconnectReasons),
		RefreshAttempts:          newCounts(pairs(SnapshotSources, RefreshOutcomes)),
		UpstreamFullSyncOutcomes: newCounts(pairs(SyncPurposes(), SyncOutcomes))}
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
	// downReason and downErr: why the last connection ended, the upstream's
	// words included.
	downReason UpstreamReason
	downErr    string
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
	p := &Proxy{cfg: cfg, log: log, runID: hex.EncodeToString(rnd[:]), started: time.Now(), stats: newStats()}
	st, err := openStore(storeOptions{dataDir: cfg.DataDir, segmentSize: cfg.SegmentSize, fsync: cfg.Fsync, syncFile: cfg.syncFile}, log)
	if err != nil {
		return nil, err
	}
	p.store = st
	p.down = newDownstream(p)
	p.follower = newFollower(cfg, log, p.stats, st, p.down)
	gate := p.follower.gate
	if err := gate.load(); err != nil {
		log.Warn("full-sync backoff state unreadable; starting without it", "err", err)
	}
	if gs := gate.status(); !gs.NextAt.IsZero() {
		log.Warn("a full sync from the upstream failed or was cut before this start; the next one waits",
			"next_attempt_in", time.Until(gs.NextAt).Round(time.Second).String(), "last_failure", gs.LastClass, "err", gs.LastError)
	}
	return p, nil
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
//
// It runs and joins every goroutine of the daemon: the follower's follow
// and maintain loops, the downstream's accept loop (which joins its
// sessions) and a keyspace scan of a recovered snapshot. Shutdown closes
// the listener and every session, waits for all of them, then closes the
// store (persist, backlog, lock).
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	p.down.ln = ln // before any goroutine reads it
	p.log.Info("replproxy started", "listen", ln.Addr().String(), "upstream", p.follower.upstreamAddr(),
		"data_dir", p.cfg.DataDir, "backlog_size", p.cfg.BacklogSize, "fsync", p.cfg.Fsync.String())
	p.follower.warnConfig()
	var wg sync.WaitGroup
	wg.Go(func() { p.follower.follow(ctx) })
	wg.Go(func() { p.follower.maintain(ctx) })
	wg.Go(func() { p.down.acceptLoop(ctx, ln) })
	if snap := p.position().snap; snap != nil && snap.Keyspace == nil {
		wg.Go(func() { p.store.keyspace.scan(ctx, p.store.snapDir, snap, p.log) })
	}
	<-ctx.Done()
	ln.Close()
	p.down.closeSessions(DownShutdown)
	wg.Wait()
	return p.shutdown()
}

// Addr is the listening address once Serve has started.
func (p *Proxy) Addr() net.Addr { return p.down.addr() }

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
