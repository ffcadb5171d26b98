package downstream

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/replproxy/replproxy/proxy/plan"
	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/backlog"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// sendChunk bounds one sendfile call, so a replica that stops reading is
// dropped after ReplicaTimeout without progress rather than never.
const sendChunk = 4 << 20

// rateChunk: under --full-sync-rate-limit, the budget is taken in these
// steps, so the rate is smooth at a second's scale.
const rateChunk = 256 << 10

// syncEmpty answers a sync that filtered every key out (REPLCONF
// rdb-filter-only "", as redis-cli --replica sends): an empty RDB at the
// current end, then the stream from there, as Redis does. No snapshot is
// read, and no full sync is counted.
func (s *Replica) syncEmpty() (*backlog.Cursor, error) {
	pos := s.d.store.Position()
	if pos.Hist.Empty() {
		_ = s.errorf("ERR replproxy has no replication history yet: its upstream has not synced")
		return nil, errNoHistory
	}
	cur, err := s.d.store.Backlog.NewCursorGen(pos.End+1, pos.Gen)
	if err != nil {
		_ = s.errorf("ERR replication history changed; retry")
		return nil, err
	}
	rdbVersion := 10
	if pos.Snap != nil && pos.Snap.RDBVersion > 0 {
		rdbVersion = pos.Snap.RDBVersion
	}
	rdb := []byte(fmt.Sprintf("REDIS%04d\xff", rdbVersion))
	rdb = binary.LittleEndian.AppendUint64(rdb, psync.CRC64(0, rdb))
	var head []byte
	if !s.legacy {
		head = psync.EncodeFullResync(pos.Hist.ReplID, pos.End)
	}
	head = append(append(head, psync.EncodePayloadHeader(int64(len(rdb)))...), rdb...)
	if err := s.write(head); err != nil {
		cur.Close()
		return nil, err
	}
	s.state.Store(stateOnline)
	s.ackOff.Store(pos.End)
	s.ackTime.Store(time.Now().UnixNano())
	s.log.Info("empty-RDB sync (rdb-filter-only \"\"): streaming from the current end", "offset", pos.End+1)
	return cur, nil
}

// syncFunctions answers REPLCONF rdb-filter-only functions with rdb-only
// (redis-cli --functions-rdb): the stored snapshot reduced to its header,
// aux fields, module aux data and function libraries, with a new EOF and
// checksum, as Redis sends it. The client is closed after it.
func (s *Replica) syncFunctions() error {
	if !s.RDBOnly {
		return s.errorf("ERR rdb-filter-only functions is served only with REPLCONF rdb-only 1, as redis-cli --functions-rdb sends it")
	}
	p := s.d
	pos := p.store.Position()
	if pos.Snap == nil || pos.Hist.Empty() {
		_ = s.errorf("ERR replproxy has no snapshot yet: its upstream has not synced")
		return errNoHistory
	}
	f, err := snapshot.Open(p.store.SnapDir, pos.Snap)
	if err != nil {
		_ = s.errorf("ERR the snapshot was replaced while opening it; retry")
		return err
	}
	defer f.Close()
	pre, err := snapshot.ReadPrelude(f, pos.Snap.Size)
	if err != nil {
		_ = s.errorf("ERR cannot read the stored snapshot's functions: %s", vocab.OneLine(err.Error()))
		return err
	}
	// The prelude is copied from the file, not buffered (function
	// libraries and module aux data have no size bound); the checksum is
	// taken on the way and follows the new EOF.
	size := pre.End + 1
	withCRC := pos.Snap.RDBVersion >= 5
	if withCRC {
		size += 8
	}
	var head []byte
	if !s.legacy {
		head = psync.EncodeFullResync(pos.Hist.ReplID, pos.Snap.Offset)
	}
	p.stats.SyncFull.Add(1)
	if err := s.write(append(head, psync.EncodePayloadHeader(size)...)); err != nil {
		return err
	}
	cw := &crcWriter{s: s}
	if _, err := io.Copy(cw, io.NewSectionReader(f, 0, pre.End)); err != nil {
		return fmt.Errorf("send functions-only RDB: %w", err)
	}
	trailer := []byte{0xff} // EOF
	if withCRC {
		trailer = binary.LittleEndian.AppendUint64(trailer, psync.CRC64(cw.crc, trailer))
	}
	if err := s.write(trailer); err != nil {
		return err
	}
	p.stats.SentRDBBytes.Add(size)
	s.log.Info("functions-only RDB sent (rdb-filter-only functions)", "functions", pre.Functions, "bytes", size,
		"snapshot_offset", pos.Snap.Offset, "snapshot_age_seconds", int64(time.Since(pos.Snap.Created).Seconds()))
	return nil
}

// crcWriter writes to the session, each write with its deadline, and
// keeps the CRC-64 of what went through.
type crcWriter struct {
	s   *Replica
	crc uint64
}

func (w *crcWriter) Write(b []byte) (int, error) {
	if err := w.s.write(b); err != nil {
		return 0, err
	}
	w.crc = psync.CRC64(w.crc, b)
	return len(b), nil
}

// freshWaitStart bounds the wait for a refresh to begin once asked; past
// it the refresh cannot run now (link down, backoff, no disk room).
const freshWaitStart = 30 * time.Second

// awaitFreshSnapshot holds an rdb-only client (redis-cli --rdb) while the
// stored snapshot is older than --rdb-only-max-age: it asks for a refresh
// (which prefers a replica) and waits for a younger snapshot, sending
// Redis' keepalive newlines. A refresh that fails or cannot start is an
// error for the client, never a silent old snapshot.
func (s *Replica) awaitFreshSnapshot(ctx context.Context) error {
	p, f := s.d, s.d.up
	maxAge := p.cfg.RDBOnlyMaxAge
	if maxAge <= 0 {
		return nil
	}
	fresh := func() (*snapshot.Info, bool) {
		snap := p.store.Position().Snap
		return snap, snap != nil && time.Since(snap.Created) <= maxAge
	}
	snap, ok := fresh()
	if ok {
		return nil
	}
	age := "none"
	if snap != nil {
		age = time.Since(snap.Created).Round(time.Second).String()
	}
	asked := time.Now()
	s.log.Info("rdb-only client: the stored snapshot is older than --rdb-only-max-age; taking a fresh one",
		"snapshot_age", age, "max_age", maxAge.String())
	if !f.Refreshing() { // one already running ends after now: its snapshot will do
		f.WantRefresh("an rdb-only client asked for a snapshot younger than --rdb-only-max-age")
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if _, ok := fresh(); ok {
			return nil
		}
		if rl := f.LastRefresh(); rl.DoneAt.After(asked) && rl.Failed {
			_ = s.errorf("ERR the stored snapshot is %s old (--rdb-only-max-age %s) and a fresh one failed; see the proxy's log", age, maxAge)
			return errors.New("fresh snapshot for an rdb-only client failed")
		}
		if !f.Refreshing() && time.Since(asked) > freshWaitStart {
			_ = s.errorf("ERR the stored snapshot is %s old (--rdb-only-max-age %s) and no refresh could start (upstream link, backoff or disk room; see INFO)", age, maxAge)
			return errors.New("no refresh could start for an rdb-only client")
		}
		if err := s.write([]byte{'\n'}); err != nil { // Redis' keepalive while a BGSAVE runs
			return err
		}
	}
}

// errNoHistory: nothing to stream yet.
var errNoHistory = errors.New("no replication history yet")

// errRDBVersion: the replica announced a release that cannot load the
// stored snapshot's RDB version.
var errRDBVersion = errors.New("replica cannot load the snapshot's RDB version")

// sync carries out the planner's answers (plan.Sync) until the replica
// continues, has been sent a snapshot, or is refused: it writes the
// replies, holds the replica with one newline a second while it waits (a
// full-sync slot, a snapshot, the upstream catching up), and asks again.
// It returns the cursor to stream from, or nil when nothing follows (an
// rdb-only client).
func (s *Replica) sync(ctx context.Context, req plan.Request) (*backlog.Cursor, error) {
	p := s.d
	holdUntil := time.Now().Add(p.cfg.HoldAhead)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	keepalive := func() error { return s.write([]byte{'\n'}) }
	full := false // the continue rule has been judged: a full sync it is
	held := false // logged once
	for {
		pub := p.store.Published()
		pos := p.store.Position()
		if s.delayed {
			pos = p.store.DelayedPosition(pos)
		}
		pl := plan.Sync(plan.Input{Req: req, Pos: planPosition(pos), HoldAhead: time.Now().Before(holdUntil), FullSync: full})
		if pl.Kind == plan.Continue {
			cur, err := p.store.Backlog.NewCursorGen(req.Offset, pos.Gen)
			if err != nil { // trimmed or reset since the position: judge again
				continue
			}
			return cur, s.continued(cur, pos)
		}
		if pl.Kind == plan.Hold && !pl.WaitSnapshot { // just ahead of our end: the upstream is refilling it
			if !held {
				held = true
				s.log.Info("replica is ahead of the backlog (stream lost with a restart); holding it while the upstream resends",
					"offset", req.Offset, "backlog_end", pos.End, "hold_ahead", p.cfg.HoldAhead)
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-tick.C:
				if err := keepalive(); err != nil {
					return nil, err
				}
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if !full {
			full = true
			if !req.Legacy && !req.RDBOnly {
				if pl.Counted {
					p.stats.SyncPartialErr.Add(1)
				}
				p.stats.Rejections[pl.Verdict].Add(1)
				s.log.Info("partial resync not possible", "reason", pl.Verdict.String(), "replid", req.ReplID,
					"offset", req.Offset, "backlog_first", pos.First, "backlog_end", pos.End)
			}
			s.state.Store(stateWaitBgsave)
			release, err := s.fullSyncSlot(ctx, tick.C, keepalive)
			if err != nil {
				return nil, err
			}
			defer release()
			continue // the position may have moved while queued
		}
		switch pl.Kind {
		case plan.Refuse:
			s.log.Warn("replica cannot load the stored snapshot; full sync refused",
				"replica_version", req.Version, "rdb_version", pl.Snap.RDBVersion)
			_ = s.errorf("ERR replproxy holds an RDB version %d snapshot, which version %s cannot load; "+
				"replicate from an upstream of a release it can read", pl.Snap.RDBVersion, req.Version)
			s.Close(vocab.DownRDBVersion)
			return nil, errRDBVersion
		case plan.FullSync:
			if s.ListeningPort > 0 {
				s.d.awaitAbandonedSync(ctx, s, abandonedSyncWait)
			}
			if left, ok := s.d.refusedVersion(s.replicaAddr(), pl.Snap.RDBVersion); ok && s.ListeningPort > 0 {
				// The same payload again would fail again: say why, cheaply.
				s.log.Warn("replica failed to load this RDB version after its last full sync; refused instead of sending it again",
					"rdb_version", pl.Snap.RDBVersion, "retry_in", left.Round(time.Second).String())
				_ = s.errorf("ERR replproxy holds an RDB version %d snapshot (upstream %s) that this replica could not load after its last full sync; "+
					"upgrade the replica or replicate from an upstream of its release (retried in %s)",
					pl.Snap.RDBVersion, s.d.store.UpstreamVersion(), left.Round(time.Second))
				s.Close(vocab.DownRDBVersion)
				return nil, errRDBVersion
			}
			f, cur, err := s.openSnapshot(pl.Snap, pos, pub)
			if err != nil {
				s.log.Warn("snapshot not servable; waiting for the next", "err", err)
			} else if cur != nil {
				defer f.Close()
				if pl.RDBWarn {
					s.log.Warn("replica may refuse the stored snapshot (Valkey rdb-version-check strict)",
						"replica_version", req.Version, "rdb_version", pl.Snap.RDBVersion)
				}
				return s.sendSnapshot(f, cur, pl.Snap, pos.Hist.ReplID)
			}
		}
		if pl.Stale {
			p.up.WantRefresh("a replica needs a full sync and the snapshot has lapsed")
		}
		select { // no snapshot to serve yet: wait for the next one
		case <-pub.Next:
		case <-tick.C:
			if err := keepalive(); err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// continued answers +CONTINUE and puts the replica online at the offset.
func (s *Replica) continued(cur *backlog.Cursor, pos store.Position) error {
	if err := s.write(psync.EncodeContinue(pos.Hist.ReplID, s.CapaPsync2)); err != nil {
		cur.Close()
		return err
	}
	off := cur.Pos()
	s.d.stats.SyncPartialOK.Add(1)
	s.state.Store(stateOnline)
	s.ackOff.Store(off - 1)
	s.ackTime.Store(time.Now().UnixNano())
	s.log.Info("partial resync accepted", "offset", off, "backlog_end", pos.End)
	return nil
}

// fullSyncSlot waits for one of --max-parallel-full-syncs, with
// keepalives; release gives it back.
func (s *Replica) fullSyncSlot(ctx context.Context, tick <-chan time.Time, keepalive func() error) (release func(), err error) {
	p := s.d
	if p.slots == nil {
		return func() {}, nil
	}
	p.queued.Add(1)
	defer p.queued.Add(-1)
	for {
		select {
		case p.slots <- struct{}{}:
			return func() { <-p.slots }, nil
		case <-tick:
			if err := keepalive(); err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// openSnapshot opens snap and a cursor at the byte after it. It returns a
// nil cursor when the history moved on meanwhile (the caller asks again):
// the replica is marked as receiving the snapshot before the re-check, so
// a history change published after it disconnects the replica.
func (s *Replica) openSnapshot(snap *snapshot.Info, pos store.Position, pub *store.Published) (*os.File, *backlog.Cursor, error) {
	f, err := snapshot.Open(s.d.store.SnapDir, snap)
	if err != nil {
		return nil, nil, err
	}
	cur, err := s.d.store.Backlog.NewCursorGen(snap.Offset+1, pos.Gen)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	s.state.Store(stateSendBulk)
	if s.d.store.Published() != pub {
		s.state.Store(stateWaitBgsave)
		cur.Close()
		f.Close()
		return nil, nil, nil
	}
	return f, cur, nil
}

// sendSnapshot sends +FULLRESYNC (not to SYNC clients) and the snapshot
// with a known length; the replica is then online at the snapshot's
// offset. For rdb-only clients it returns a nil cursor.
func (s *Replica) sendSnapshot(f *os.File, cur *backlog.Cursor, snap *snapshot.Info, replid string) (*backlog.Cursor, error) {
	p := s.d
	p.stats.SyncFull.Add(1)
	start := time.Now()
	var head []byte
	if !s.legacy {
		head = psync.EncodeFullResync(replid, snap.Offset)
	}
	head = append(head, psync.EncodePayloadHeader(snap.Size)...)
	if err := s.write(head); err != nil {
		cur.Close()
		return nil, err
	}
	s.log.Info("full sync started", "replid", replid, "offset", snap.Offset, "bytes", snap.Size,
		"rdb_only", s.RDBOnly, "snapshot_age_seconds", int64(time.Since(snap.Created).Seconds()))
	for sent := int64(0); sent < snap.Size; {
		chunk := min(sendChunk, snap.Size-sent)
		if p.fullSyncRate != nil {
			chunk = min(chunk, rateChunk)
			if err := p.fullSyncRate.wait(s.ctx, chunk); err != nil {
				cur.Close()
				return nil, err
			}
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(p.cfg.ReplicaTimeout))
		n, err := io.Copy(s.out, io.LimitReader(f, chunk))
		sent += n
		p.stats.SentRDBBytes.Add(n)
		if err == nil && n == 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			cur.Close()
			return nil, fmt.Errorf("send snapshot after %d bytes: %w", sent, err)
		}
	}
	s.log.Info("full sync payload sent", "bytes", snap.Size, "seconds", time.Since(start).Seconds())
	p.cfg.Observer.ObserveDownstreamFullSync(time.Since(start).Seconds())
	if s.RDBOnly {
		cur.Close()
		return nil, nil
	}
	s.sentRDB.Store(int32(snap.RDBVersion))
	s.state.Store(stateOnline)
	s.ackOff.Store(snap.Offset)
	s.ackTime.Store(time.Now().UnixNano())
	return cur, nil
}

// planPosition is the part of the store's position the planner reads.
func planPosition(pos store.Position) plan.Position {
	return plan.Position{Hist: pos.Hist, First: pos.First, End: pos.End, Snap: pos.Snap}
}
