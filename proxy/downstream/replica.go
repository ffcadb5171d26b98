package downstream

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/proxy/handoff"
	"github.com/replproxy/replproxy/proxy/plan"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync/backlog"
)

// Replica is a session's connection once SYNC or PSYNC made it a replica
// link. The session's fields it keeps (id, connection, reader, logger,
// context, identity, what REPLCONF announced) are set before it is
// registered; the rest is atomic, or its own goroutine's.
type Replica struct {
	d *Downstream
	handoff.Announce
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
	req     syncRequest                    // what SYNC or PSYNC asked
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

// Replica state codes (vocab.ReplicaStateByCode names them).
const (
	stateHandshake  int32 = iota // before PSYNC
	stateWaitBgsave              // full sync: waiting for a slot or a snapshot
	stateSendBulk                // full sync: sending the snapshot
	stateOnline                  // streaming
)

// Close ends the replica link once, counting the first reason, and the
// session's connection with it.
func (s *Replica) Close(reason vocab.DisconnectReason) {
	s.closeOnce.Do(func() {
		s.d.stats.Disconnects.Add(reason, vocab.DownError)
		s.log.Info("replica disconnected", "reason", reason, "ack_offset", s.ackOff.Load())
	})
	s.endSession(reason)
}

// syncRequest is a SYNC or PSYNC's arguments: "?" and -1 ask for a full
// sync.
type syncRequest struct {
	cmd    string
	replid string
	offset int64
}

// parseSync reads SYNC or PSYNC's arguments as Redis does; the error is
// Redis' reply.
func parseSync(cmd string, args [][]byte) (syncRequest, error) {
	req := syncRequest{cmd: cmd, replid: "?", offset: -1}
	if cmd == "sync" {
		if len(args) != 1 {
			return req, errors.New("ERR wrong number of arguments for 'sync' command")
		}
		return req, nil
	}
	switch {
	case len(args) < 3:
		return req, errors.New("ERR wrong number of arguments for 'psync' command")
	case len(args) > 3 && strings.EqualFold(string(args[3]), "failover"):
		return req, errors.New("ERR PSYNC FAILOVER can't be sent to replproxy: it never becomes a master")
	case len(args) > 3:
		return req, errors.New("ERR syntax error")
	}
	n, err := strconv.ParseInt(string(args[2]), 10, 64)
	if err != nil {
		return req, errors.New("ERR value is not an integer or out of range")
	}
	req.replid, req.offset = string(args[1]), n
	return req, nil
}

// Run serves the replica link (SYNC or PSYNC) until it ends. The reply
// line is written in one write; before it, only keepalive newlines, which
// stock replicas skip while they wait.
func (s *Replica) Run(ctx context.Context) error {
	s.d.add(s)
	defer s.d.remove(s)
	id, off, cmd := s.req.replid, s.req.offset, s.req.cmd
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

// write sends bytes with a write deadline.
func (s *Replica) write(b []byte) error {
	_ = s.conn.SetWriteDeadline(time.Now().Add(s.d.cfg.ReplicaTimeout))
	_, err := s.conn.Write(b)
	return err
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

// onlineStock reports whether the replica streams the live history as a
// stock replica does: PSYNC (not SYNC: it ACKs), not delayed, online (an
// rdb-only client is online only with rdb-filter-only "", streaming).
func (s *Replica) onlineStock() bool {
	return !s.legacy && !s.delayed && s.state.Load() == stateOnline
}
