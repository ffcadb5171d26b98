package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// A snapshot refresh fetches a fresh RDB of the current history, so the
// backlog may be trimmed past the old one. Every online downstream replica
// holds a full copy at the proxy's replication ID: asked first, it forks
// and the origin does not. The upstream is asked last, under the cost
// backoff of full syncs.

// Refresh modes, --snapshot-refresh.
const (
	RefreshEager = "eager"
	RefreshLazy  = "lazy"
)

// When the upstream is asked for a refresh, --snapshot-refresh-upstream.
const (
	// RefreshUpstreamOnDemand: only when a replica needs a full sync (or an
	// rdb-only client a younger snapshot) and no replica could serve.
	RefreshUpstreamOnDemand = "on-demand"
	// RefreshUpstreamEager: also whenever the budget calls for a refresh.
	RefreshUpstreamEager = "eager"
)

// refreshStartGrace: after a restart, replicas reconnect within seconds (a
// stock replica retries every second); until then "no replica can serve"
// is not judged, so a restart does not send a refresh to the upstream. A
// first start (no history) has no replicas to wait for.
const refreshStartGrace = 15 * time.Second

// Refresh sources, in --snapshot-refresh-from.
const (
	SourceReplicas = "replicas"
	SourceUpstream = "upstream"
)

// errNoReplica: no online replica to ask (an expected state, not a fault).
var errNoReplica = errors.New("no online replica with an announced address to ask")

// replicaHandshakeTimeout bounds a replica's answers up to +FULLRESYNC.
const replicaHandshakeTimeout = 5 * time.Second

// ReplicaStallTimeout bounds a source replica's silence while it saves:
// it sends a newline a second until its fork starts, then the payload, so
// a longer silence is a replica that froze after answering (SIGSTOP, a
// stuck disk). The refresh moves on to the next source rather than wait
// the repl-timeout while the snapshot lapses.
const ReplicaStallTimeout = 15 * time.Second

// replicaRefreshAttempts bounds the replicas one refresh tries.
const replicaRefreshAttempts = 2

// Backoff between refreshes that failed from every source: replicas fork
// too, so a refresh that cannot succeed must not run every tick.
const (
	refreshRetryMin = 5 * time.Second
	refreshRetryMax = 5 * time.Minute
)

// refreshSnapshot runs one refresh through the configured sources in order.
// demand says a replica (or an rdb-only client) waits for it; only then,
// or when the operator asked for eager upstream refreshes, is the
// upstream asked: a refresh the budget calls for must not fork the origin.
func (m *maintainer) refreshSnapshot(ctx context.Context, since int64, demand bool) {
	f := m.f
	f.log.Info("snapshot refresh started", "stream_since_snapshot", since, "sources", strings.Join(f.cfg.RefreshFrom, ","), "demand", demand)
	start := time.Now()
	f.refreshLast.started.Store(start.UnixNano())
	defer f.refreshLast.started.Store(0)
	var errs []error
	for _, src := range f.cfg.RefreshFrom {
		var info *snapshot.Info
		var err error
		switch src {
		case SourceReplicas:
			info, err = m.refreshFromReplicas(ctx)
		case SourceUpstream:
			// A replica that began to wait during this refresh makes it one
			// on demand.
			demand = demand || f.refreshWanted.Swap(false)
			if !demand && !m.upstreamRefreshEager() {
				err = errUpstreamOnDemand
				break
			}
			if wait := time.Until(m.graceUntil); wait > 0 && m.awaitingReplicas(errs) {
				// Replicas may still be reconnecting: ask them again, each
				// second, until the grace ends.
				if !m.graceLogged {
					m.graceLogged = true
					f.log.Info("snapshot refresh: waiting for replicas to reconnect before asking the upstream", "at_most", wait.Round(time.Second).String())
				}
				m.retryIn(demand, time.Second)
				return
			}
			if d := f.gate.wait(false, false); d > 0 {
				err = fmt.Errorf("upstream: the full-sync backoff holds it for %v", d.Round(time.Second))
				break
			}
			info, err = m.fetchSnapshot(ctx)
			m.countRefresh(vocab.SnapFromUpstream, err)
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			f.stats.Refreshes.Add(1)
			f.refreshLast.done(start, true)
			m.retryBudget.backoff, m.retryDemand.backoff = 0, 0
			f.log.Info("snapshot refreshed", "source", info.Source, "replid", info.ReplID, "offset", info.Offset,
				"bytes", info.Size, "seconds", time.Since(start).Seconds())
			return
		}
		errs = append(errs, err)
		switch {
		case errors.Is(err, errNoReplica):
			f.log.Info("snapshot refresh: no replica to ask", "next_source", nextSource(f.cfg.RefreshFrom, src))
		case errors.Is(err, errUpstreamOnDemand):
			f.log.Info("snapshot refresh: the upstream is asked only when a replica needs a full sync (--snapshot-refresh-upstream on-demand)")
		default:
			f.log.Warn("snapshot refresh from "+src+" failed", "next_source", nextSource(f.cfg.RefreshFrom, src), "err", err)
		}
	}
	if time.Now().Before(m.graceUntil) && m.awaitingReplicas(errs) {
		f.log.Debug("snapshot refresh: no replica has reconnected since the start yet; asking again in a second")
		m.retryIn(demand, time.Second)
		return
	}
	f.stats.RefreshFailures.Add(1)
	f.refreshLast.done(start, false)
	retry := m.retryFor(demand)
	retry.backoff = min(max(retry.backoff*2, refreshRetryMin), refreshRetryMax)
	wait := time.Duration(float64(retry.backoff) * (0.75 + 0.25*rand.Float64()))
	m.retryIn(demand, wait)
	f.log.Warn("snapshot refresh failed from every source; the backlog grows past its budget until one succeeds",
		"sources", strings.Join(f.cfg.RefreshFrom, ","), "next_attempt_in", wait.Round(time.Second).String(), "err", errors.Join(errs...))
}

// refreshRetry spaces out refreshes after failures. Refreshes a replica
// waits for and refreshes the budget calls for keep one each, so failures
// of the latter (nobody to ask) never delay the former.
type refreshRetry struct {
	backoff   time.Duration // one refresh at a time touches it
	notBefore atomic.Int64  // unix nanoseconds; read by maintain
}

// retryFor is the schedule of a refresh on demand or for the budget.
func (m *maintainer) retryFor(demand bool) *refreshRetry {
	if demand {
		return &m.retryDemand
	}
	return &m.retryBudget
}

// retryIn schedules the next refresh of its kind after d; a replica that
// waited still waits.
func (m *maintainer) retryIn(demand bool, d time.Duration) {
	f := m.f
	m.retryFor(demand).notBefore.Store(time.Now().Add(d).UnixNano())
	if demand {
		f.refreshWanted.Store(true)
	}
}

// awaitingReplicas reports whether a refresh found nobody to ask (no
// replica, or none that could serve), so that after a start it is only
// waiting for replicas to reconnect: no failure, no growing backoff.
func (m *maintainer) awaitingReplicas(errs []error) bool {
	for _, err := range errs {
		if !errors.Is(err, errNoReplica) && !errors.Is(err, errUpstreamOnDemand) {
			return false
		}
	}
	return len(errs) > 0
}

// errUpstreamOnDemand: the budget alone does not ask the upstream.
var errUpstreamOnDemand = errors.New("upstream: asked only when a replica needs a full sync (--snapshot-refresh-upstream on-demand)")

// upstreamRefreshEager reports whether the budget alone may ask the
// upstream: when the operator said so, or named the upstream as the only
// source.
func (m *maintainer) upstreamRefreshEager() bool {
	f := m.f
	return f.cfg.RefreshUpstream == RefreshUpstreamEager || !f.cfg.hasRefreshSource(SourceReplicas)
}

// refreshTimes are the last refresh's facts for INFO's Persistence
// section (rdb_* fields: a refresh is the proxy's BGSAVE).
type refreshTimes struct {
	started  atomic.Int64 // unix nanoseconds of the one running, 0: none
	failed   atomic.Bool  // the last one failed
	lastSecs atomic.Int64 // seconds the last one took: rdb_last_bgsave_time_sec, -1 before any (newFollower)
	doneAt   atomic.Int64 // unix nanoseconds the last one ended
}

func (r *refreshTimes) done(start time.Time, ok bool) {
	r.failed.Store(!ok)
	r.lastSecs.Store(int64(time.Since(start).Seconds()))
	r.doneAt.Store(time.Now().UnixNano())
}

func (r *refreshTimes) status(now time.Time) vocab.RefreshStatus {
	st := vocab.RefreshStatus{Failed: r.failed.Load(), LastSecs: r.lastSecs.Load(), CurrentSecs: r.current(now)}
	if at := r.doneAt.Load(); at != 0 {
		st.DoneAt = time.Unix(0, at)
	}
	return st
}

// current is rdb_current_bgsave_time_sec: -1 when none runs.
func (r *refreshTimes) current(now time.Time) int64 {
	if st := r.started.Load(); st != 0 {
		return int64(now.Sub(time.Unix(0, st)).Seconds())
	}
	return -1
}

// nextSource names the source tried after src, "none" when it is the last.
func nextSource(order []string, src string) string {
	for i, s := range order {
		if s == src && i+1 < len(order) {
			return order[i+1]
		}
	}
	return "none"
}

// countRefresh counts one attempt from a source.
func (m *maintainer) countRefresh(source string, err error) {
	f := m.f
	outcome := "ok"
	if err != nil {
		outcome = "failed"
	}
	f.stats.RefreshAttempts[source+"/"+outcome].Add(1)
}

// refreshFromReplicas asks downstream replicas for a snapshot: trusted
// ones only, the most caught-up online one first, not the one asked last
// time nor one refused before while others exist. At most
// replicaRefreshAttempts of them are asked for a snapshot (each a fork on
// the replica); refusals before that cost nothing and do not count.
func (m *maintainer) refreshFromReplicas(ctx context.Context) (*snapshot.Info, error) {
	f := m.f
	cands := f.down.RefreshCandidates(m.lastRefreshReplica, f.refusals.refused)
	if len(cands) == 0 {
		return nil, errNoReplica
	}
	var errs []error
	asked := 0
	for _, c := range cands {
		if asked == replicaRefreshAttempts {
			break
		}
		if !trusts(f.trust, c.ID) {
			f.refusals.note(c.Addr, &errSourceRefused{vocab.RefusedUntrusted, "authenticated as " + c.ID.String()})
			errs = append(errs, fmt.Errorf("replica %s: not trusted (%s)", c.Addr, c.ID))
			continue
		}
		info, err := m.fetchFromReplica(ctx, c)
		var refused *errSourceRefused
		if errors.As(err, &refused) {
			f.refusals.note(c.Addr, refused)
			errs = append(errs, fmt.Errorf("replica %s: %w", c.Addr, err))
			continue
		}
		asked++
		m.countRefresh(vocab.SnapFromReplica, err)
		if err == nil {
			m.lastRefreshReplica = c.Addr
			f.refusals.served(c.Addr)
			return info, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		f.log.Warn("snapshot refresh from a replica failed; trying the next source", "replica", c.Addr, "err", err)
		errs = append(errs, fmt.Errorf("replica %s: %w", c.Addr, err))
	}
	if asked == 0 {
		return nil, fmt.Errorf("%w: %w", errNoReplica, errors.Join(errs...))
	}
	return nil, errors.Join(errs...)
}

// fetchFromReplica takes a snapshot from the replica at addr, as a replica
// of it: after checking that it is a read-only replica of the proxy's
// history, REPLCONF rdb-only 1, PSYNC ? -1. It is accepted only as an
// upstream snapshot would be (header, CRC, version) and only of the current
// history at an offset the backlog holds.
func (m *maintainer) fetchFromReplica(ctx context.Context, c vocab.Candidate) (*snapshot.Info, error) {
	f := m.f
	var tlsCfg *tls.Config
	if c.TLS {
		tlsCfg = f.sec.ClientConfig(c.Addr, true)
	}
	// A healthy replica answers the handshake at once; a frozen one still
	// accepts the connection, and must not hold the refresh for long.
	u, err := f.dial(ctx, "replica", c.Addr, tlsCfg, psync.HandshakeConfig{
		User: f.cfg.ReplicaAuthUser, Password: f.cfg.ReplicaAuthPassword,
	}, nil, min(f.cfg.ReplTimeout, replicaHandshakeTimeout))
	if err != nil {
		return nil, refusedBecause(err)
	}
	defer u.conn.Close()
	check := sourceCheck{replID: f.store.Position().Hist.ReplID, ports: f.down.SourcePorts()}
	if err := check.verify(u, u.br); err != nil {
		return nil, err
	}
	if err := askRDBOnly(u); err != nil {
		return nil, err
	}
	reply, stop, err := askSnapshot(ctx, u)
	if err != nil {
		return nil, err
	}
	defer stop()
	u.dr.timeout = min(f.cfg.ReplTimeout, ReplicaStallTimeout) // the payload: keepalives come while it saves
	if cur := f.store.Position(); reply.ReplID != cur.Hist.ReplID {
		return nil, fmt.Errorf("%w: the replica is at history %s, the proxy at %s", store.ErrRefreshRejected, reply.ReplID, cur.Hist.ReplID)
	}
	info, _, err := f.full.receiveRefresh(ctx, u, reply, vocab.SnapFromReplica)
	return info, err
}

// askRDBOnly sends REPLCONF rdb-only 1: the source sends a snapshot and
// no stream.
func askRDBOnly(u *upstreamConn) error {
	if _, err := u.Write(psync.EncodeCommand("REPLCONF", "rdb-only", "1")); err != nil {
		return fmt.Errorf("send REPLCONF rdb-only: %w", err)
	}
	line, err := psync.ReadLine(u.br, psync.MaxReplyLine)
	if err != nil {
		return fmt.Errorf("read REPLCONF rdb-only reply: %w", err)
	}
	if strings.HasPrefix(line, "-") {
		return refusedBecause(&psync.HandshakeError{Step: "REPLCONF rdb-only", Reply: line})
	}
	return nil
}

// fetchSnapshot takes a snapshot from the upstream on a second connection
// while the main link keeps streaming: REPLCONF rdb-only 1 and PSYNC ? -1,
// or a plain second sync dropped after the payload when rdb-only is
// refused. Each is a fork on the origin.
func (m *maintainer) fetchSnapshot(ctx context.Context) (*snapshot.Info, error) {
	f := m.f
	u, err := f.dialUpstream(ctx, true, nil)
	if errors.Is(err, psync.ErrRDBOnlyRefused) {
		f.log.Info("upstream refuses rdb-only; refreshing with a plain sync")
		u, err = f.dialUpstream(ctx, false, nil)
	}
	if err != nil {
		return nil, err
	}
	defer u.conn.Close()
	f.gate.asking(vocab.PurposeRefresh) // persisted first: a kill before the answer still counts
	reply, stop, err := askSnapshot(ctx, u)
	if err != nil {
		f.gate.askEnded(vocab.PurposeRefresh)
		return nil, err
	}
	defer stop()
	// The origin forks now: from here on, a failure is a wasted fork.
	f.gate.started(vocab.PurposeRefresh)
	info, got, err := f.full.receiveRefresh(ctx, u, reply, vocab.SnapFromUpstream)
	switch {
	case err == nil:
		f.full.fullSyncSucceeded(vocab.PurposeRefresh, info)
	case ctx.Err() == nil:
		f.full.fullSyncFailed(vocab.PurposeRefresh, err, got)
	default: // a shutdown or a cancel is no failure of the origin's
		f.gate.aborted(vocab.PurposeRefresh)
	}
	return info, err
}

// askSnapshot sends PSYNC ? -1 on a handshaken connection and expects a
// full sync. Until stop is called, the connection closes when ctx ends.
func askSnapshot(ctx context.Context, u *upstreamConn) (psync.PsyncReply, func() bool, error) {
	stop := context.AfterFunc(ctx, func() { u.conn.Close() })
	reply, err := psync.Psync(u, u.br, "", -1, nil)
	if err == nil && reply.Kind != psync.ReplyFullResync {
		err = fmt.Errorf("PSYNC ? -1 answered %q", reply.Line)
	}
	if err != nil {
		stop()
		return reply, nil, err
	}
	return reply, stop, nil
}
