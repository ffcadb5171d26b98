package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/backlog"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// sendChunk bounds one sendfile call, so a replica that stops reading is
// dropped after ReplicaTimeout without progress rather than never.
const sendChunk = 4 << 20

// startReplica turns the session into a replica link (SYNC or PSYNC) and
// feeds it until it ends. The reply line is written in one write; before it,
// only keepalive newlines, which stock replicas skip while they wait.
func (s *session) startReplica(ctx context.Context, cmd string, args [][]byte) error {
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
	s.replica.Store(true)
	s.log.Info("replica sync requested", "command", cmd, "replid", id, "offset", off, "rdb_only", s.rdbOnly)

	var cur *backlog.Cursor
	if !s.legacy && !s.rdbOnly {
		var err error
		if cur, err = s.tryContinue(ctx, id, off); err != nil {
			return err
		}
	}
	if cur == nil {
		var err error
		if cur, err = s.fullSync(ctx); err != nil || cur == nil {
			return err
		}
	}
	defer cur.Close()
	return s.stream(ctx, cur)
}

// tryContinue applies the partial-resync rule. A request just ahead of our
// end (we are catching up after a restart) is held until we reach it. It
// returns nil, nil when a full sync is needed.
func (s *session) tryContinue(ctx context.Context, id string, off int64) (*backlog.Cursor, error) {
	p := s.p
	deadline := time.Now().Add(p.cfg.HoldAhead)
	lastKeepalive := time.Now()
	for {
		p.mu.Lock()
		first, end := p.bl.Range()
		v := p.hist.CanContinue(id, off, first, end)
		replid := p.hist.ReplID
		var cur *backlog.Cursor
		var err error
		if v == psync.Continue {
			cur, err = p.bl.NewCursor(off)
		}
		p.mu.Unlock()
		if v == psync.Continue && err == nil {
			line := "+CONTINUE\r\n"
			if s.capaPsync2 {
				line = "+CONTINUE " + replid + "\r\n"
			}
			if werr := s.write([]byte(line)); werr != nil {
				cur.Close()
				return nil, werr
			}
			p.stats.SyncPartialOK.Add(1)
			s.state.Store(stateOnline)
			s.ackOff.Store(off - 1)
			s.ackTime.Store(time.Now().UnixNano())
			s.log.Info("partial resync accepted", "offset", off, "backlog_end", end)
			return cur, nil
		}
		if v == psync.RejectAhead && time.Now().Before(deadline) {
			if time.Since(lastKeepalive) >= time.Second {
				if err := s.write([]byte{'\n'}); err != nil {
					return nil, err
				}
				lastKeepalive = time.Now()
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		if v == psync.Continue {
			v = psync.RejectBehind // trimmed between the check and the cursor
		}
		if id != "?" {
			p.stats.SyncPartialErr.Add(1)
		}
		p.stats.Rejections[v].Add(1)
		s.log.Info("partial resync not possible", "reason", v.String(), "replid", id, "offset", off,
			"backlog_first", first, "backlog_end", end)
		return nil, nil
	}
}

// errRDBVersion: the replica announced a release that cannot load the
// stored snapshot's RDB version.
var errRDBVersion = errors.New("replica cannot load the snapshot's RDB version")

// write sends bytes with a write deadline.
func (s *session) write(b []byte) error {
	_ = s.conn.SetWriteDeadline(time.Now().Add(s.p.cfg.ReplicaTimeout))
	_, err := s.conn.Write(b)
	return err
}

// fullSync waits for a full-sync slot and a snapshot, holding the replica
// with one newline a second, then sends +FULLRESYNC, the snapshot with a
// known length, and returns a cursor at the byte after the snapshot. For
// rdb-only clients it returns nil after the payload.
func (s *session) fullSync(ctx context.Context) (*backlog.Cursor, error) {
	p := s.p
	s.state.Store(stateWaitBgsave)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	keepalive := func() error { return s.write([]byte{'\n'}) }

	if p.slots != nil {
		p.queued.Add(1)
		acquired := false
		for !acquired {
			select {
			case p.slots <- struct{}{}:
				acquired = true
			case <-tick.C:
				if err := keepalive(); err != nil {
					p.queued.Add(-1)
					return nil, err
				}
			case <-ctx.Done():
				p.queued.Add(-1)
				return nil, ctx.Err()
			}
		}
		p.queued.Add(-1)
		defer func() { <-p.slots }()
	}

	var f *os.File
	var cur *backlog.Cursor
	var snap *snapshot.Info
	var replid string
	for cur == nil {
		p.mu.Lock()
		snap, replid = p.snap, p.hist.ReplID
		ready := p.snapReady
		var err error
		if snap != nil && !p.hist.Empty() {
			if f, err = snapshot.Open(p.snapDir, snap); err == nil {
				if cur, err = p.bl.NewCursor(snap.Offset + 1); err != nil {
					f.Close()
				} else {
					// Under mu, so an ID change from now on disconnects us.
					s.state.Store(stateSendBulk)
				}
			}
		}
		p.mu.Unlock()
		if snap != nil && err != nil {
			s.log.Warn("snapshot not servable; waiting for the next", "err", err)
		}
		if cur != nil {
			break
		}
		select {
		case <-ready:
		case <-tick.C:
			if err := keepalive(); err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	defer f.Close()
	switch replicaRDBCompat(s.version, snap.RDBVersion) {
	case rdbRejects:
		cur.Close()
		s.log.Warn("replica cannot load the stored snapshot; full sync refused",
			"replica_version", s.version, "rdb_version", snap.RDBVersion)
		_ = s.errorf("ERR replproxy holds an RDB version %d snapshot, which version %s cannot load; "+
			"replicate from an upstream of a release it can read", snap.RDBVersion, s.version)
		s.close(DownRDBVersion)
		return nil, errRDBVersion
	case rdbMayReject:
		s.log.Warn("replica may refuse the stored snapshot (Valkey rdb-version-check strict)",
			"replica_version", s.version, "rdb_version", snap.RDBVersion)
	}
	p.stats.SyncFull.Add(1)
	start := time.Now()
	var head string
	if !s.legacy {
		head = fmt.Sprintf("+FULLRESYNC %s %d\r\n", replid, snap.Offset)
	}
	head += fmt.Sprintf("$%d\r\n", snap.Size)
	if err := s.write([]byte(head)); err != nil {
		cur.Close()
		return nil, err
	}
	s.log.Info("full sync started", "replid", replid, "offset", snap.Offset, "bytes", snap.Size)
	for sent := int64(0); sent < snap.Size; {
		_ = s.conn.SetWriteDeadline(time.Now().Add(p.cfg.ReplicaTimeout))
		n, err := io.Copy(s.conn, io.LimitReader(f, min(sendChunk, snap.Size-sent)))
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
	if s.rdbOnly {
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
func (s *session) stream(ctx context.Context, cur *backlog.Cursor) error {
	s.cur.Store(cur)
	defer s.cur.Store(nil)
	go s.readAcks()
	for {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.p.cfg.ReplicaTimeout))
		n, err := cur.CopyTo(s.conn)
		s.p.stats.SentStreamBytes.Add(n)
		if err == nil {
			err = cur.Wait(ctx)
		}
		if err != nil {
			switch {
			case errors.Is(err, backlog.ErrTrimmed):
				s.log.Warn("replica fell behind the backlog front; disconnecting", "offset", cur.Pos())
				s.close(DownOffsetTrimmed)
			case errors.Is(err, backlog.ErrReset):
				s.close(DownHistoryReset)
			case errors.Is(err, backlog.ErrClosed), ctx.Err() != nil:
				s.close(DownShutdown)
			case isTimeout(err):
				s.close(DownTimeout)
			default:
				s.close(DownError)
			}
			return err
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// readAcks reads what a replica may send after PSYNC: REPLCONF ACK and bare
// newlines. A replica silent for ReplicaTimeout is dropped (not SYNC clients,
// which never ACK).
func (s *session) readAcks() {
	rd := newCmdReader(s.br)
	for {
		if !s.legacy {
			_ = s.conn.SetReadDeadline(time.Now().Add(s.p.cfg.ReplicaTimeout))
		}
		args, err := rd.next()
		if err != nil {
			switch {
			case isTimeout(err):
				s.log.Warn("replica timed out: no ACK", "timeout", s.p.cfg.ReplicaTimeout.String())
				s.close(DownTimeout)
			case s.sentRDB.Load() != 0 && !s.acked.Load() && !s.legacy && errors.Is(err, io.EOF):
				s.log.Warn("replica hung up after a full sync without acknowledging it; "+
					"its log says why (e.g. \"Can't handle RDB format version\": it is older than the upstream)",
					"rdb_version", s.sentRDB.Load())
				s.close(DownClosedBeforeAck)
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
				s.close(DownClosed)
			default:
				s.close(DownError)
			}
			return
		}
		now := time.Now().UnixNano()
		if len(args) == 0 {
			s.ackTime.Store(now)
			continue
		}
		if !strings.EqualFold(string(args[0]), "replconf") || len(args) < 3 {
			s.log.Warn("unexpected command on a replica link; disconnecting", "command", truncate(string(args[0]), 32))
			s.close(DownProtocolError)
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
			acked := s.ackOff.Load()
			end := s.p.bl.End()
			s.p.cfg.Observer.ObserveAck(max(end-acked, 0), s.p.arrivals.lagSeconds(acked, time.Unix(0, now)))
		}
	}
}

// replicaAddr is the replica as INFO names it: announced IP or peer IP, and
// its listening port.
func (s *session) replicaAddr() string {
	return net.JoinHostPort(s.replicaIP(), strconv.Itoa(s.listeningPort))
}

func (s *session) replicaIP() string {
	if s.ipAddress != "" {
		return s.ipAddress
	}
	host, _, err := net.SplitHostPort(s.addr)
	if err != nil {
		return s.addr
	}
	return host
}
