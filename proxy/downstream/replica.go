package downstream

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/proxy/plan"
	"github.com/replproxy/replproxy/proxy/request"
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

// replica is a session's connection once SYNC or PSYNC made it a replica
// link. The session's fields it keeps (id, connection, reader, logger,
// context, identity, what REPLCONF announced) are set before it is
// registered; the rest is atomic, or its own goroutine's.
type Replica struct {
	d *Downstream
	Announce
	id      int64
	conn    net.Conn  // *tls.Conn on the TLS listener
	raw     net.Conn  // the TCP connection under conn
	out     io.Writer // conn, buffered for TLS (no sendfile there)
	br      *bufio.Reader
	addr    string
	tls     bool
	delayed bool // on --delayed-listen: the stream up to the delay's horizon only
	log     *slog.Logger
	ctx     context.Context // ends with the session
	ident   vocab.Identity  // who the session authenticated as
	// errorf answers an error reply the way its session counts them;
	// endSession closes the session's connection (once).
	errorf     func(format string, a ...any) error
	endSession func(reason vocab.DisconnectReason)

	legacy  bool                           // SYNC: no +FULLRESYNC, no ACKs
	cur     atomic.Pointer[backlog.Cursor] // set while streaming
	state   atomic.Int32
	ackOff  atomic.Int64
	ackTime atomic.Int64 // unix nanoseconds
	// sentRDB: the RDB version of the snapshot sent on this link (0: none);
	// acked: an ACK arrived. A replica that hangs up in between most likely
	// could not load the snapshot.
	sentRDB   atomic.Int32
	acked     atomic.Bool
	closeOnce sync.Once
}

// announce is what a replica says of itself with REPLCONF before PSYNC.
type Announce struct {
	ListeningPort int
	IPAddress     string
	CapaPsync2    bool
	CapaEOF       bool
	RDBOnly       bool
	FilterAll     bool // rdb-filter-only "": an empty RDB, then the stream from now
	// filterFunctions: rdb-filter-only functions, the snapshot's function
	// libraries only (redis-cli --functions-rdb).
	FilterFunctions bool
	Version         string // REPLCONF version: only Valkey 8+ announce one
}

// Replica state codes (vocab.ReplicaStateByCode names them).
const (
	stateHandshake  int32 = iota // before PSYNC
	stateWaitBgsave              // full sync: waiting for a slot or a snapshot
	stateSendBulk                // full sync: sending the snapshot
	stateOnline                  // streaming
)

// close ends the replica link once, counting the first reason, and the
// session's connection with it.
func (s *Replica) Close(reason vocab.DisconnectReason) {
	s.closeOnce.Do(func() {
		s.d.stats.Disconnects.Add(reason, vocab.DownError)
		s.log.Info("replica disconnected", "reason", reason, "ack_offset", s.ackOff.Load())
	})
	s.endSession(reason)
}

// run serves the replica link (SYNC or PSYNC) until it ends. (SYNC or PSYNC) and
// feeds it until it ends. The reply line is written in one write; before it,
// only keepalive newlines, which stock replicas skip while they wait.
func (s *Replica) Run(ctx context.Context, cmd string, args [][]byte) error {
	id, off := "?", int64(-1)
	if cmd == "sync" {
		if len(args) != 1 {
			return s.errorf("ERR wrong number of arguments for 'sync' command")
		}
		s.legacy = true
	} else {
		switch {
		case len(args) < 3:
			return s.errorf("ERR wrong number of arguments for 'psync' command")
		case len(args) > 3 && strings.EqualFold(string(args[3]), "failover"):
			return s.errorf("ERR PSYNC FAILOVER can't be sent to replproxy: it never becomes a master")
		case len(args) > 3:
			return s.errorf("ERR syntax error")
		}
		id = string(args[1])
		n, err := strconv.ParseInt(string(args[2]), 10, 64)
		if err != nil {
			return s.errorf("ERR value is not an integer or out of range")
		}
		off = n
	}
	// Everything others read once they see a replica (the logger, the
	// announced address) is written before it is published.
	s.log = s.log.With("replica", s.replicaAddr())
	s.d.add(s)
	defer s.d.remove(s)
	s.log.Info("replica sync requested", "command", cmd, "replid", id, "offset", off, "rdb_only", s.RDBOnly)

	var cur *backlog.Cursor
	var err error
	if s.RDBOnly && !s.FilterAll {
		if err := s.awaitFreshSnapshot(ctx); err != nil {
			return err
		}
	}
	switch {
	case s.FilterAll:
		cur, err = s.syncEmpty()
	case s.FilterFunctions:
		err = s.syncFunctions()
	default:
		cur, err = s.sync(ctx, plan.Request{Legacy: s.legacy, RDBOnly: s.RDBOnly, ReplID: id, Offset: off, Version: s.Version})
	}
	if err != nil || cur == nil {
		return err
	}
	defer cur.Close()
	return s.stream(ctx, cur)
}

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

// write sends bytes with a write deadline.
func (s *Replica) write(b []byte) error {
	_ = s.conn.SetWriteDeadline(time.Now().Add(s.d.cfg.ReplicaTimeout))
	_, err := s.conn.Write(b)
	return err
}

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
	for {
		pub := p.store.Published()
		pos := p.store.Position()
		if s.delayed {
			pos = p.store.DelayedPosition(pos)
		}
		pl := plan.Sync(plan.Input{Req: req, Pos: pos.Plan(), HoldAhead: time.Now().Before(holdUntil), FullSync: full})
		if pl.Kind == plan.Continue {
			cur, err := p.store.Backlog.NewCursorGen(req.Offset, pos.Gen)
			if err != nil { // trimmed or reset since the position: judge again
				continue
			}
			return cur, s.continued(cur, pos)
		}
		if pl.Kind == plan.Hold && !pl.WaitSnapshot { // just ahead of our end: the upstream is refilling it
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

// stream feeds the replica from its cursor and reads its ACKs until the link
// ends. Nothing but stream bytes at the right offsets is ever written here.
func (s *Replica) stream(ctx context.Context, cur *backlog.Cursor) error {
	cur.UseTail(s.tls) // TLS cannot use sendfile; plain sockets measured faster with it
	s.cur.Store(cur)
	defer s.cur.Store(nil)
	// The ACK reader ends when the connection closes, which every way out
	// of the loop below does first.
	var acks sync.WaitGroup
	defer acks.Wait()
	acks.Go(s.readAcks)
	var pk parker
	for {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.d.cfg.ReplicaTimeout))
		var n int64
		var err error
		if s.delayed {
			n, err = s.copyDelayed(ctx, cur)
		} else {
			n, err = cur.CopyTo(s.out)
		}
		s.d.stats.SentStreamBytes.Add(n)
		if err == nil && !s.delayed {
			parked := false
			if fan := s.d.fanout; fan != nil && !s.tls {
				parked, err = fan.park(ctx, &pk, s.conn, cur, s.d.store.Backlog)
			}
			if parked && err == nil {
				continue // handed back: copy what the fan-out did not write
			}
			if err == nil {
				err = cur.Wait(ctx)
			}
		}
		if err != nil {
			switch {
			case errors.Is(err, backlog.ErrTrimmed):
				s.log.Warn("replica fell behind the backlog front; disconnecting", "offset", cur.Pos())
				s.Close(vocab.DownOffsetTrimmed)
			case errors.Is(err, backlog.ErrReset):
				s.Close(vocab.DownHistoryReset)
			case errors.Is(err, backlog.ErrClosed), ctx.Err() != nil:
				s.Close(vocab.DownShutdown)
			case isTimeout(err):
				s.Close(vocab.DownTimeout)
			default:
				s.Close(vocab.DownError)
			}
			return err
		}
	}
}

// delayedPoll: how often a caught-up delayed replica looks at the
// horizon again (it moves with time, not with appends).
const delayedPoll = 100 * time.Millisecond

// copyDelayed sends what the horizon allows, then waits for it to move.
func (s *Replica) copyDelayed(ctx context.Context, cur *backlog.Cursor) (int64, error) {
	n, err := cur.CopyUpTo(s.out, s.d.store.Horizon())
	if err != nil || n > 0 {
		return n, err
	}
	t := time.NewTimer(delayedPoll)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-t.C:
		return 0, nil
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// readAcks reads what a replica may send after PSYNC: REPLCONF ACK and bare
// newlines. A replica silent for ReplicaTimeout is dropped (not SYNC clients,
// which never ACK).
func (s *Replica) readAcks() {
	rd := request.NewReader(s.br)
	for {
		if !s.legacy {
			_ = s.conn.SetReadDeadline(time.Now().Add(s.d.cfg.ReplicaTimeout))
		}
		args, err := rd.Next()
		if err != nil {
			switch {
			case isTimeout(err):
				s.log.Warn("replica timed out: no ACK", "timeout", s.d.cfg.ReplicaTimeout.String())
				s.Close(vocab.DownTimeout)
			case s.sentRDB.Load() != 0 && !s.acked.Load() && !s.legacy && errors.Is(err, io.EOF):
				s.log.Warn("replica hung up after a full sync without acknowledging it; "+
					"its log says why (e.g. \"Can't handle RDB format version\": it is older than the upstream)",
					"rdb_version", s.sentRDB.Load())
				if s.ListeningPort > 0 {
					s.d.noteRefusal(s.replicaAddr(), int(s.sentRDB.Load()))
				}
				s.Close(vocab.DownClosedBeforeAck)
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
				s.Close(vocab.DownClosed)
			default:
				s.Close(vocab.DownError)
			}
			return
		}
		now := time.Now().UnixNano()
		if len(args) == 0 {
			s.ackTime.Store(now)
			continue
		}
		if !strings.EqualFold(string(args[0]), "replconf") || len(args) < 3 {
			s.log.Warn("unexpected command on a replica link; disconnecting", "command", vocab.Truncate(string(args[0]), 32))
			s.Close(vocab.DownProtocolError)
			return
		}
		if strings.EqualFold(string(args[1]), "ack") {
			off, err := strconv.ParseInt(string(args[2]), 10, 64)
			if err != nil {
				continue
			}
			for {
				old := s.ackOff.Load()
				if off <= old || s.ackOff.CompareAndSwap(old, off) {
					break
				}
			}
			s.ackTime.Store(now)
			s.acked.Store(true)
			s.d.up.ReplicaAcked()
			acked := s.ackOff.Load()
			end := s.d.store.Backlog.End()
			s.d.cfg.Observer.ObserveAck(max(end-acked, 0), s.d.store.Arrivals.LagSeconds(acked, time.Unix(0, now)))
		}
	}
}

// replicaAddr is the replica as INFO names it: announced IP or peer IP, and
// its listening port.
func (s *Replica) replicaAddr() string {
	return net.JoinHostPort(s.replicaIP(), strconv.Itoa(s.ListeningPort))
}

func (s *Replica) replicaIP() string {
	if s.IPAddress != "" {
		return s.IPAddress
	}
	host, _, err := net.SplitHostPort(s.addr)
	if err != nil {
		return s.addr
	}
	return host
}

// bufferedWriter feeds a TLS connection from files with one reused buffer
// per session: sendfile cannot encrypt, and io.Copy would allocate 32 KB
// per call. Writes pass straight through; nothing is held back.
type bufferedWriter struct {
	w   io.Writer
	buf []byte
}

// tlsCopyBuf: four full TLS records per write.
const tlsCopyBuf = 64 << 10

func (b *bufferedWriter) Write(p []byte) (int, error) { return b.w.Write(p) }

func (b *bufferedWriter) ReadFrom(r io.Reader) (int64, error) {
	if b.buf == nil {
		b.buf = make([]byte, tlsCopyBuf)
	}
	return io.CopyBuffer(struct{ io.Writer }{b.w}, r, b.buf)
}

// newBufferedWriter wraps a TLS connection for copies from files.
func NewBufferedWriter(w io.Writer) io.Writer { return &bufferedWriter{w: w} }
