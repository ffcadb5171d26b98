package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/backlog"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// Proxy is one relay: one upstream history, its snapshot and backlog, and the
// downstream replicas served from them.
type Proxy struct {
	cfg      Config
	log      *slog.Logger
	runID    string
	started  time.Time
	stateDir string
	snapDir  string
	lockFile *os.File
	bl       *backlog.Log
	ln       net.Listener

	mu        sync.Mutex
	hist      psync.History
	snap      *snapshot.Info
	snapReady chan struct{} // closed and replaced whenever a snapshot is installed
	sessions  map[*session]struct{}
	link      linkStatus
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
	refresh atomic.Bool // a snapshot refresh is running
	// snapOffset mirrors snap.Offset for the append path, which checks
	// the budget without taking mu; kick wakes maintain when it is due.
	snapOffset atomic.Int64
	kick       chan struct{}
	arrivals   *arrivalIndex
	keyspace   keyspaceStats
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
		stateDir: cfg.DataDir, snapDir: filepath.Join(cfg.DataDir, "snapshots"),
		snapReady: make(chan struct{}), sessions: map[*session]struct{}{},
		link: linkStatus{state: LinkConnect, downSince: time.Now()}, upstream: cfg.Upstream,
		movedCh: make(chan struct{}, 1),
		kick:    make(chan struct{}, 1), arrivals: newArrivalIndex(),
		stats: newStats(),
		gate:  newForkGate(cfg.FullSyncRetryMin, cfg.FullSyncRetryMax, filepath.Join(cfg.DataDir, "fullsync-backoff")),
	}
	if cfg.MaxParallelFullSyncs > 0 {
		p.slots = make(chan struct{}, cfg.MaxParallelFullSyncs)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(cfg.DataDir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("data dir %s is in use by another replproxy: %w", cfg.DataDir, err)
	}
	p.lockFile = lf
	if err := p.gate.load(); err != nil {
		log.Warn("full-sync backoff state unreadable; starting without it", "err", err)
	}
	if gs := p.gate.status(); !gs.NextAt.IsZero() {
		log.Warn("a full sync from the upstream failed or was cut before this start; the next one waits",
			"next_attempt_in", time.Until(gs.NextAt).Round(time.Second).String(), "last_failure", gs.LastClass, "err", gs.LastError)
	}
	if err := p.recover(); err != nil {
		lf.Close()
		return nil, err
	}
	return p, nil
}

func (p *Proxy) statePath() string { return filepath.Join(p.stateDir, "state") }

// recover loads the state file and backlog and checks that they describe one
// consistent history: the backlog belongs to the state (same tag) and covers
// every byte after the snapshot. Anything inconsistent is
// discarded, which leads to a full resync from upstream rather than serving
// bytes of the wrong history.
func (p *Proxy) recover() error {
	st, err := loadState(p.statePath())
	if err != nil {
		return err
	}
	bl, rep, err := backlog.Open(filepath.Join(p.cfg.DataDir, "backlog"), backlog.Options{
		SegmentSize: p.cfg.SegmentSize, Fsync: p.cfg.Fsync, ValidPrefix: streamValidPrefix,
		OnSyncError: func(err error) {
			p.log.Error("backlog fsync failed; bytes since the last fsync may not survive a power loss", "err", err)
		},
	})
	if err != nil {
		return err
	}
	p.bl = bl
	if rep.TruncatedBytes > 0 || rep.DroppedBytes > 0 {
		p.log.Warn("backlog repaired", "truncated_bytes", rep.TruncatedBytes, "dropped_bytes", rep.DroppedBytes)
	}
	first, end := bl.Range()
	reason := ""
	switch {
	case st.History.Empty():
		reason = "no history"
	case st.Snapshot == nil:
		reason = "no snapshot"
	case st.BacklogTag == "" || st.BacklogTag != bl.Tag():
		reason = "backlog belongs to another history"
	case first == 0 || first > st.Snapshot.Offset+1 || end < st.Snapshot.Offset:
		reason = fmt.Sprintf("backlog [%d, %d] does not cover the stream after snapshot offset %d", first, end, st.Snapshot.Offset)
	}
	if reason == "" {
		f, err := snapshot.Open(p.snapDir, st.Snapshot)
		if err != nil {
			reason = err.Error()
		} else {
			f.Close()
		}
	}
	keep := ""
	if reason == "" {
		p.hist, keep = st.History, st.Snapshot.Name
		p.setSnapshotLocked(st.Snapshot)
		// Recovered bytes arrived before now; when exactly is not kept.
		p.arrivals.record(end, time.Now())
		p.log.Info("recovered state", "replid", p.hist.ReplID, "replid2", p.hist.ReplID2,
			"backlog_first", first, "offset", end, "snapshot_offset", p.snap.Offset)
	} else if !st.History.Empty() || first != 0 {
		p.log.Warn("discarding stored history; a full resync follows", "reason", reason)
	}
	removed, err := snapshot.Cleanup(p.snapDir, keep)
	for _, name := range removed {
		p.log.Info("removed stale snapshot file", "file", name)
	}
	return err
}

// setSnapshotLocked makes info the served snapshot; called with mu held.
func (p *Proxy) setSnapshotLocked(info *snapshot.Info) {
	p.snap = info
	p.snapOffset.Store(info.Offset)
	close(p.snapReady)
	p.snapReady = make(chan struct{})
}

// maybeKick wakes maintain when the backlog needs trimming or the snapshot
// a refresh; it is cheap enough for every append.
func (p *Proxy) maybeKick(end int64) {
	if end-p.snapOffset.Load() > int64(float64(p.cfg.BacklogSize)*p.cfg.RefreshRatio) || p.bl.Size() > p.cfg.BacklogSize {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// persistLocked writes the state file; called with p.mu held.
func (p *Proxy) persistLocked() error {
	st := persisted{History: p.hist, Snapshot: p.snap, BacklogTag: p.bl.Tag()}
	if err := saveState(p.statePath(), st); err != nil {
		p.log.Error("persist state failed", "err", err)
		return err
	}
	return nil
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
		wg.Go(func() { p.keyspace.scan(ctx, p.snapDir, snap, p.log) })
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
	p.mu.Lock()
	var errs []error
	if !p.hist.Empty() {
		errs = append(errs, p.persistLocked())
	}
	p.mu.Unlock()
	errs = append(errs, p.bl.Close())
	if p.lockFile != nil {
		p.lockFile.Close()
	}
	err := errors.Join(errs...)
	if err != nil {
		p.log.Error("shutdown", "err", err)
	} else {
		p.log.Info("replproxy stopped", "offset", p.bl.End())
	}
	return err
}

// position is a consistent view of history, backlog range and snapshot.
type position struct {
	hist  psync.History
	first int64
	end   int64
	snap  *snapshot.Info
}

func (p *Proxy) position() position {
	p.mu.Lock()
	defer p.mu.Unlock()
	first, end := p.bl.Range()
	return position{hist: p.hist, first: first, end: end, snap: p.snap}
}

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
		if n, err := p.bl.Trim(pos.snap.Offset+1, p.cfg.BacklogSize); err != nil {
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
	first, _ := p.bl.Range()
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := range p.sessions {
		if c := s.cur.Load(); c != nil && c.Pos() < first {
			s.log.Warn("replica fell behind the backlog front; disconnecting", "offset", c.Pos(), "backlog_first", first)
			s.close(DownOffsetTrimmed)
		}
	}
}

// closeSessions disconnects the replicas that hold a position in the
// stream (all connections on shutdown). Replicas still waiting for a
// snapshot have none yet and are left waiting.
func (p *Proxy) closeSessions(reason DisconnectReason) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for s := range p.sessions {
		if reason == DownShutdown || (s.replica.Load() && s.state.Load() != stateWaitBgsave) {
			s.close(reason)
			n++
		}
	}
	return n
}
