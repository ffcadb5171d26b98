package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/proxy/pubsub"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
)

const (
	backoffMin = 100 * time.Millisecond
	BackoffMax = 5 * time.Second
	readBuf    = 256 << 10
)

// Follower owns the upstream side: the connection, the stream scanner,
// the reconnect and full-sync backoffs, the ACKs, the link state and the
// snapshot refreshes. Its goroutines are follow and maintain (both run by
// Serve) and their children: the ACK ticker of a link (joined when the
// link ends) and one refresh at a time (joined by maintain).
type Follower struct {
	cfg   Options
	log   *slog.Logger
	stats *vocab.UpstreamCounters
	store *store.Store
	down  Replicas          // to disconnect replicas when the history moves
	sec   *security.Service // TLS client configurations

	// mu guards the link status and the upstream address; nothing holds
	// it across I/O.
	mu   sync.Mutex
	link vocab.LinkStatus
	// upstream is where the follower connects: --upstream, until an
	// operator's REPLICAOF moves it. cutLink ends the current connection.
	upstream string
	cutLink  context.CancelCauseFunc
	movedCh  chan struct{} // wakes a reconnect backoff after a move

	scanner psync.Scanner // the stream's position within a command; follow's goroutine only
	// publishes finds the stream's PUBLISH commands for pubsub's
	// subscribers; follow's goroutine only, as scanner.
	publishes streamPublishes
	stopped   chan struct{} // closed when Follow returns: no request is served after
	following atomic.Bool   // Follow runs (or ran): requests will be served or refused
	pubsub    *pubsub.Registry
	Refresh   atomic.Bool // a snapshot refresh is running
	// refreshLast: when the running refresh began, how the last one went.
	refreshLast refreshTimes
	kick        chan struct{} // wakes maintain when trimming or a refresh is due
	gate        *forkGate     // spaces out requests that cost the origin a fork
	guard       *guard        // the empty-origin guard's held history
	maint       *maintainer   // the maintain goroutine's part: trimming, refreshes
	full        *fullSyncer   // receiving and installing full syncs
	// delayShort: the budget cannot hold the stream delayed replicas need.
	delayShort atomic.Bool
	// ackKick wakes the upstream ACK loop when a replica ACKs, under
	// --ack-policy replicas:N (capacity 1: kicks coalesce).
	ackKick chan struct{}
	// upstreamSource says why upstream is what it is (under mu).
	upstreamSource string

	refreshWanted atomic.Bool        // lazy mode: a replica waits for a fresh snapshot
	refreshCancel context.CancelFunc // ends the refresh in flight; guarded by mu
	// trust names the identities whose replicas may serve refreshes;
	// refusals remembers the replicas that could not.
	trust    []trustRule
	refusals *sourceRefusals

	// follow's goroutine only: advice given (once per cause and upstream
	// address), and whether the last link had reached streaming.
	advised      map[vocab.UpstreamReason]bool
	streamedLast bool
	windowShort  atomic.Bool // the backlog is full and covers under minBacklogWindow
	// follow's goroutine only: the upstream's last hang-up on a streaming
	// link (set by stream), kept as burst until a link streams again.
	lastCut, burst *burstCut
	calm           calmStatus  // the wait for a burst to calm, for INFO and metrics
	kickAdvice     atomic.Bool // set by a move; follow clears advised
}

// noteDown records why the link went down, for INFO and the status page.
func (f *Follower) noteDown(reason vocab.UpstreamReason, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.link.DownReason, f.link.DownErr = reason, ""
	if err != nil {
		f.link.DownErr = err.Error()
	}
}

// WantRefresh asks for a refresh now: in lazy mode a replica needs a full
// sync and the snapshot has lapsed; in any mode an rdb-only client wants
// a younger snapshot than the stored one.
func (f *Follower) WantRefresh(why string) {
	if f.refreshWanted.CompareAndSwap(false, true) {
		f.log.Info("snapshot refresh requested", "reason", why)
	}
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// cancelRefresh ends a refresh in flight: its snapshot would not fit the
// history any more (a history change, REPLICAOF).
func (m *maintainer) cancelRefresh(why string) {
	f := m.f
	f.mu.Lock()
	cancel := f.refreshCancel
	f.mu.Unlock()
	if cancel != nil {
		f.log.Info("snapshot refresh cancelled", "reason", why)
		cancel()
	}
}

func New(cfg Options, log *slog.Logger, stats *vocab.UpstreamCounters, st *store.Store, down Replicas, sec *security.Service,
	ps *pubsub.Registry) (*Follower, error) {
	f := &Follower{cfg: cfg, log: log, stats: stats, store: st, down: down, sec: sec, pubsub: ps,
		link:    vocab.LinkStatus{State: vocab.LinkConnect, DownSince: time.Now()},
		movedCh: make(chan struct{}, 1), kick: make(chan struct{}, 1), ackKick: make(chan struct{}, 1),
		gate:    newForkGate(cfg.FullSyncRetryMin, cfg.FullSyncRetryMax, store.Layout{Dir: cfg.DataDir}.FullSyncGate()),
		stopped: make(chan struct{}), refusals: newSourceRefusals(log, stats.SourceRefusals),
	}
	f.guard = &guard{dir: store.Layout{Dir: cfg.DataDir}, accepts: make(chan acceptRequest, 1), f: f}
	f.maint, f.full, f.calm.f = &maintainer{f: f}, &fullSyncer{f: f}, f
	if !st.Position().Hist.Empty() { // a restart: replicas were here and come back
		f.maint.graceUntil = time.Now().Add(refreshStartGrace)
	}
	f.trust, _ = ParseTrust(cfg.RefreshTrust) // Validate has checked them
	f.refreshLast.lastSecs.Store(-1)          // as Redis before its first BGSAVE
	warnSharedTrust(cfg, sec, log)
	addr, source, note := store.LoadUpstream(cfg.DataDir, cfg.Upstream)
	if note != nil {
		log.Warn("persisted REPLICAOF not used", "reason", note.Error())
	}
	if source == store.UpstreamFromReplicaof {
		log.Warn("following the upstream set by REPLICAOF before the restart, not --upstream", "upstream", addr, "configured", cfg.Upstream)
	}
	f.upstream, f.upstreamSource = addr, source
	if err := f.guard.loadHeld(); err != nil {
		return nil, fmt.Errorf("the guard's held history in %s: %w (move the directory away to start without it)", f.guard.dir.Held(), err)
	}
	cut, err := f.gate.load()
	if err != nil {
		log.Warn("full-sync backoff state unreadable; starting without it", "err", err)
	}
	for _, purpose := range cut {
		countFullSync(stats, purpose, vocab.FailInterrupted)
		log.Warn("a request that could make the origin fork was cut by this process's own stop (kill, crash, power loss); it counts as a failed full sync",
			"purpose", purpose)
	}
	if gs := f.gate.status(); !gs.NextAt.IsZero() {
		log.Warn("a full sync from the upstream failed or was cut before this start; the next one waits",
			"next_attempt_in", time.Until(gs.NextAt).Round(time.Second).String(), "last_failure", gs.LastClass, "err", gs.LastError)
	}
	return f, nil
}

// deadlineReader extends the read deadline before every read, so a link is
// declared dead after timeout of silence, whatever phase it is in.
type deadlineReader struct {
	conn    net.Conn
	timeout time.Duration
	onRead  func()
}

func (r *deadlineReader) Read(b []byte) (int, error) {
	if err := r.conn.SetReadDeadline(time.Now().Add(r.timeout)); err != nil {
		return 0, err
	}
	n, err := r.conn.Read(b)
	if n > 0 && r.onRead != nil {
		r.onRead()
	}
	return n, err
}

// upstreamConn is one connection to the origin in the replica role. Writes
// are serialised: ACKs come from a ticker and from the stream reader.
type upstreamConn struct {
	conn    net.Conn
	br      *bufio.Reader
	dr      *deadlineReader // its timeout may change between phases (owner's goroutine only)
	wmu     sync.Mutex
	eofForm bool // the payload came in the $EOF: framing
}

func (u *upstreamConn) Write(b []byte) (int, error) {
	u.wmu.Lock()
	defer u.wmu.Unlock()
	if err := u.conn.SetWriteDeadline(time.Now().Add(vocab.WriteTimeout)); err != nil {
		return 0, err
	}
	return u.conn.Write(b)
}

func (u *upstreamConn) ack(offset int64) error {
	_, err := u.Write(psync.AckCommand(offset))
	return err
}

// dialUpstream connects and runs the handshake up to PSYNC.
func (f *Follower) dialUpstream(ctx context.Context, rdbOnly bool, onRead func()) (*upstreamConn, error) {
	port := f.cfg.AnnouncePort
	if port == 0 {
		port = f.down.Port()
	}
	addr := f.UpstreamAddr()
	var tlsCfg *tls.Config
	if f.cfg.UpstreamTLS {
		if f.cfg.UpstreamTLSInsecure {
			f.log.Warn("connecting to the upstream over TLS without verifying its certificate (--upstream-tls-insecure-skip-verify)", "upstream", addr)
		}
		tlsCfg = f.sec.ClientConfig(addr, false)
	}
	u, err := f.dial(ctx, "upstream", addr, tlsCfg, psync.HandshakeConfig{
		User: f.cfg.UpstreamUser, Password: f.cfg.UpstreamPassword,
		ListeningPort: port, IPAddress: f.cfg.AnnounceIP, RDBOnly: rdbOnly, Version: f.cfg.AnnounceVersion,
	}, onRead, f.cfg.ReplTimeout)
	return u, err
}

// dial connects to addr (the upstream, or a replica for a refresh) and runs
// the replica handshake up to PSYNC; reads time out after timeout of
// silence.
func (f *Follower) dial(ctx context.Context, what, addr string, tlsCfg *tls.Config, hs psync.HandshakeConfig, onRead func(), timeout time.Duration) (*upstreamConn, error) {
	conn, err := security.DialTLS(ctx, addr, timeout, tlsCfg)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", what, err)
	}
	u := &upstreamConn{conn: conn, dr: &deadlineReader{conn: conn, timeout: timeout, onRead: onRead}}
	u.br = bufio.NewReaderSize(u.dr, readBuf)
	if err := psync.Handshake(u, u.br, hs); err != nil {
		conn.Close()
		return nil, err
	}
	return u, nil
}

// UpstreamOrigin is the upstream and why it is the one followed.
func (f *Follower) UpstreamOrigin() (addr, source string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.upstream, f.upstreamSource
}

// UpstreamAddr is the address the follower connects to.
func (f *Follower) UpstreamAddr() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.upstream
}

// MoveUpstream points the follower at another upstream (REPLICAOF) and ends
// the current link; the next one PSYNCs the new address with the current
// history, so a promoted replica of the same history answers +CONTINUE.
// It reports false when addr is the current upstream already.
func (f *Follower) MoveUpstream(addr string) bool {
	if !f.repoint(addr) {
		return false
	}
	if err := store.PersistUpstream(f.cfg.DataDir, addr, f.cfg.Upstream, f.cfg.SyncFile); err != nil {
		f.log.Error("REPLICAOF not persisted: a restart would follow --upstream", "err", err)
	}
	f.kickAdvice.Store(true) // a new address: advice may be given again
	f.gate.moved()           // a new upstream has its own costs; persisted outside mu
	f.maint.cancelRefresh("REPLICAOF")
	return true
}

func (f *Follower) repoint(addr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if addr == f.upstream {
		return false
	}
	f.log.Warn("upstream moved by REPLICAOF; persisted: a restart follows it while --upstream stays the same",
		"from", f.upstream, "to", addr, "configured", f.cfg.Upstream)
	f.upstream, f.upstreamSource = addr, store.UpstreamFromReplicaof
	if f.cutLink != nil {
		f.cutLink(errMoved)
	}
	select { // cut a backoff short
	case f.movedCh <- struct{}{}:
	default:
	}
	return true
}

func (f *Follower) touchIO() {
	f.mu.Lock()
	f.link.LastIO = time.Now()
	f.mu.Unlock()
}

// Follow keeps the upstream link alive until ctx ends, reconnecting with
// capped exponential backoff and jitter.
func (f *Follower) Follow(ctx context.Context) {
	f.following.Store(true)
	defer close(f.stopped)
	backoff := backoffMin
	for ctx.Err() == nil {
		f.guard.serveAccept()
		if !f.full.awaitFullSyncTurn(ctx) {
			return
		}
		f.stats.UpstreamConnects.Add(1)
		endBefore := f.store.Backlog.End()
		streamed, err := f.syncOnce(ctx)
		f.setLink(vocab.LinkConnect)
		if ctx.Err() != nil {
			f.stats.UpstreamDisconnects.Add(vocab.UpShutdown, vocab.UpError)
			return
		}
		if errors.Is(err, errAccepting) { // an operator's order, not a failure: serve it, connect at once
			f.log.Info("upstream link cut to accept the held history", "upstream", f.UpstreamAddr())
			f.guard.serveAccept()
			backoff = backoffMin
			continue
		}
		reason := disconnectReason(err)
		f.stats.UpstreamDisconnects.Add(reason, vocab.UpError)
		f.streamedLast = streamed
		if f.kickAdvice.Swap(false) {
			f.advised = nil
		}
		f.noteDown(reason, err)
		f.adviseOnce(reason, err)
		if errors.Is(err, errMoved) { // an operator's order, not a failure: connect at once
			f.burst, f.lastCut = nil, nil // a new upstream's rate is its own
			f.calm.infoRefused = false
			f.log.Info("upstream link moved by REPLICAOF", "upstream", f.UpstreamAddr())
			backoff = backoffMin
			continue
		}
		// Only a link that stored something was healthy. One that streamed
		// but could not store (a full disk) would, retried at once, have the
		// origin resend its backlog every few milliseconds.
		if streamed && f.store.Backlog.End() != endBefore {
			backoff = backoffMin
		}
		// A streaming link the upstream hung up on: the next full sync
		// waits for a burst to calm (awaitCalm decides at once whether there
		// is one). A full sync that failed meanwhile (a burst cuts it too)
		// waits again; a link that streamed and ended otherwise forgets it.
		switch {
		case f.lastCut != nil:
			f.burst, f.lastCut = f.lastCut, nil
		case streamed:
			f.burst = nil
		}
		sleep := backoff/2 + rand.N(backoff/2+1)
		// After a failed full sync the next connection most likely needs
		// one again: it waits the cost backoff, not the cheap one.
		sleep = max(sleep, f.gate.wait(true, f.store.Position().Hist.Empty()))
		f.log.Warn("upstream link down", "upstream", f.UpstreamAddr(), "reason", reason, "err", err,
			"retry_in", sleep.Round(time.Millisecond).String())
		select {
		case <-ctx.Done():
			return
		case <-f.movedCh:
			backoff = backoffMin
			continue
		case req := <-f.guard.accepts:
			req.done <- f.guard.acceptHeld(req.replid)
			backoff = backoffMin
			continue
		case <-time.After(sleep):
		}
		backoff = min(backoff*2, BackoffMax)
		if f.burst != nil {
			f.calm.awaitCalm(ctx, f.burst)
		}
	}
}

// syncOnce runs one connection: handshake, PSYNC, optional full sync, then
// streaming until an error. streamed reports whether it reached streaming.
func (f *Follower) syncOnce(ctx context.Context) (streamed bool, err error) {
	ctx, cut := context.WithCancelCause(ctx)
	f.mu.Lock()
	f.cutLink = cut
	select { // a move before now is already in effect: this dial uses it
	case <-f.movedCh:
	default:
	}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.cutLink = nil
		f.mu.Unlock()
		if cause := context.Cause(ctx); errors.Is(cause, errMoved) || errors.Is(cause, errAccepting) {
			err = cause // an operator's order, whatever the cut connection reported
		}
		cut(nil)
	}()
	f.setLink(vocab.LinkConnecting)
	u, err := f.dialUpstream(ctx, false, f.touchIO)
	if err != nil {
		return false, err
	}
	defer u.conn.Close()
	stop := context.AfterFunc(ctx, func() { u.conn.Close() })
	defer stop()
	f.setLink(vocab.LinkHandshake)

	pos := f.store.Position()
	id, off := "", int64(-1)
	if !pos.Hist.Empty() {
		id, off = pos.Hist.ReplID, pos.End+1
	}
	heldID, heldNext, holding := f.guard.heldPosition()
	if holding { // continue the held history: asking for the served one would be a fork
		id, off = heldID, heldNext
	}
	purpose := vocab.PurposeHistoryChange
	if pos.Hist.Empty() {
		purpose = vocab.PurposeInitial
	}
	f.gate.asking(purpose) // persisted first: a kill before the answer still counts
	reply, err := psync.Psync(u, u.br, id, off, nil)
	if err != nil || reply.Kind != psync.ReplyFullResync {
		f.gate.askEnded(purpose)
	}
	if err != nil {
		return false, err
	}
	switch reply.Kind {
	case psync.ReplyContinue:
		f.stats.UpstreamPartialSyncs.Add(1)
		f.gate.continued()
		if holding {
			f.log.Info("upstream partial resync of the held history", "offset", off)
			break
		}
		f.onContinue(reply.ReplID, off)
	case psync.ReplyFullResync:
		f.log.Info("upstream full resync", "replid", reply.ReplID, "offset", reply.Offset, "purpose", purpose)
		f.gate.started(purpose)
		info, got, err := f.full.receiveFullSync(u, reply)
		if err != nil && ctx.Err() != nil { // shutdown or REPLICAOF: no failure of the origin's
			f.gate.aborted(purpose)
			return false, fmt.Errorf("full sync: %w", err)
		}
		if err != nil {
			f.stats.UpstreamSyncFailures.Add(1)
			f.full.fullSyncFailed(purpose, err, got)
			return false, fmt.Errorf("full sync: %w", err)
		}
		f.full.fullSyncSucceeded(purpose, info)
	case psync.ReplyTryLater:
		return false, &upstreamReplyError{step: "PSYNC", line: reply.Line}
	default:
		return false, &upstreamReplyError{step: "PSYNC", line: reply.Line}
	}
	f.setLink(vocab.LinkConnected)
	f.log.Info("upstream link up", "upstream", f.UpstreamAddr(), "replid", f.store.Position().Hist.ReplID, "offset", f.store.Backlog.End())
	return true, f.stream(ctx, u)
}

// disconnectReason classifies why an upstream connection ended.
func disconnectReason(err error) vocab.UpstreamReason {
	var ne net.Error
	if line := upstreamErrorLine(err); line != "" {
		return replyClass(line)
	}
	switch {
	case errors.Is(err, errBacklogWrite):
		return vocab.UpBacklogWrite
	case errors.Is(err, errMoved):
		return vocab.UpReplicaof
	case errors.Is(err, errLocal):
		return vocab.UpDataDir
	case errors.As(err, &ne) && ne.Timeout():
		return vocab.UpTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, psync.ErrShortPayload),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, net.ErrClosed):
		return vocab.UpClosed
	}
	return vocab.UpError
}

// onContinue handles +CONTINUE: with a new ID the history shifts and the
// downstream replicas are disconnected to learn it through replid2.
func (f *Follower) onContinue(newID string, off int64) {
	old, changed := f.store.ShiftHistory(newID)
	if !changed {
		f.log.Info("upstream partial resync", "offset", off)
		return
	}
	f.maint.cancelRefresh("replication ID changed")
	n := f.down.CloseReplicas(vocab.DownReplIDChanged)
	f.log.Info("upstream replication ID changed", "replid", newID, "replid2", old,
		"second_repl_offset", off, "replicas_disconnected", n)
}

// localWriter marks a receiver's write errors as the data dir's.
type localWriter struct{ w io.Writer }

func (l localWriter) Write(b []byte) (int, error) {
	n, err := l.w.Write(b)
	if err != nil {
		err = localError(err)
	}
	return n, err
}

// errMoved: REPLICAOF cut the link to point it elsewhere.
var errMoved = errors.New("upstream moved by REPLICAOF")

// linkStatus returns a copy of the link's state.
func (f *Follower) linkStatus() vocab.LinkStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.link
}

func (f *Follower) LinkUp() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.link.Up
}

func (f *Follower) setLink(state vocab.LinkState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	wasUp := f.link.Up
	f.link.State = state
	f.link.Up = state == vocab.LinkConnected
	if wasUp != f.link.Up {
		f.stats.UpstreamLinkChanges.Add(1)
		now := time.Now()
		f.link.Changed = now
		if wasUp {
			f.link.DownSince = now
		} else {
			f.stats.UpstreamDownNanos.Add(int64(now.Sub(f.link.DownSince)))
		}
	}
}

// WarnConfig says, at start, what in the configuration will hurt.
func (f *Follower) WarnConfig() {
	if f.cfg.ReplTimeout <= originPingPeriod {
		f.log.Warn("--repl-timeout does not exceed the origin's default repl-ping-replica-period: an idle link will time out between PINGs and resync; use 60s (Redis' repl-timeout) or more",
			"repl_timeout", f.cfg.ReplTimeout.String(), "origin_ping_period", originPingPeriod.String())
	}
	if f.cfg.ReplicaTimeout < originPingPeriod {
		f.log.Warn("--replica-timeout is short: a replica that pauses (a fork, a slow disk) is dropped and resyncs",
			"replica_timeout", f.cfg.ReplicaTimeout.String())
	}
}
