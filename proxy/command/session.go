package command

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

	"github.com/tidwall/resp"

	"github.com/replproxy/replproxy/proxy/handoff"
	"github.com/replproxy/replproxy/proxy/pubsub"
	"github.com/replproxy/replproxy/proxy/request"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// Redis' replies, byte for byte (the final period included).
var (
	errNoAuth    = redisError("NOAUTH Authentication required.")
	errWrongPass = redisError("WRONGPASS invalid username-password pair or user is disabled.")
)

// redisError is an error reply in Redis' exact words.
type redisError string

func (e redisError) Error() string { return string(e) }

// session is one client connection, handed to the downstream as a replica
// at SYNC/PSYNC. Publication rule: id, conn, addr and log are set before
// the session joins the server's set; what REPLCONF announced is written
// only by the session's goroutine, before it is handed over with the
// connection; what other sessions read (name, user, subscription counts,
// the replica it became) is atomic.
type session struct {
	srv  *Server
	id   int64
	conn net.Conn // *tls.Conn on the TLS listener
	raw  net.Conn // the TCP connection under conn
	tls  bool
	// delayed: on --delayed-listen, the session sees the stream only up to
	// the delay's horizon.
	delayed bool
	addr    string
	br      *bufio.Reader
	log     *slog.Logger
	ctx     context.Context // ends with the session
	cancel  context.CancelFunc

	authed     bool
	clientName atomic.Value // string: name, for other sessions' CLIENT LIST
	// closeAfterReply: CLIENT KILL SKIPME no killed this session itself.
	closeAfterReply bool
	// multi is MULTI's queue (nil outside a transaction), as Sentinel's
	// failover sends one.
	multi [][][]byte
	user  atomic.Value // string: the user authenticated as (read by reloads)
	// announce is what REPLCONF said, handed to the replica at PSYNC.
	handoff.Announce
	// rep is the replica the connection became at SYNC/PSYNC; nil before.
	rep       atomic.Value // Replica, once SYNC/PSYNC made the connection one
	startTime time.Time
	// Owned by the session's goroutine: error replies sent (for
	// Commandstats' failed_calls), the current call was refused before it
	// ran, the subscriptions (nil: not in pub/sub mode).
	errReplies int
	rejected   bool
	subs       *pubsub.Subscriber
	subsView   atomic.Pointer[pubsub.Subscriber] // subs, published for the status views
	// subCount, psubCount: the subscriptions, for CLIENT LIST.
	subCount, psubCount atomic.Int32

	closeOnce   sync.Once
	closeReason atomic.Value
}

// close ends the session; a replica's counts its reason first.
func (s *session) close(reason vocab.DisconnectReason) {
	if r, ok := s.rep.Load().(Replica); ok {
		r.Close(reason) // which ends the connection
		return
	}
	s.closeConn(reason)
}

// closeConn closes the connection once; the first reason is kept.
func (s *session) closeConn(reason vocab.DisconnectReason) {
	s.closeOnce.Do(func() {
		s.closeReason.Store(reason)
		s.cancel()
		// The TCP socket, not the TLS layer: its close_notify could block
		// for seconds on a replica that stopped reading.
		s.raw.Close()
	})
}

func (s *session) reply(v resp.Value) error {
	b, err := v.MarshalRESP()
	if err != nil {
		return err
	}
	if v.Type() == resp.Error {
		s.errReplies++
		s.srv.commands.recordError(v.String())
	}
	return s.clientWrite(b)
}

// clientWrite sends b to the client, counted as Redis counts client output.
func (s *session) clientWrite(b []byte) error {
	if s.subs != nil {
		return s.subs.Send(b) // the subscriber's writer owns the socket
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(vocab.WriteTimeout))
	n, err := s.conn.Write(b)
	s.srv.stats.NetOutputBytes.Add(int64(n))
	s.srv.stats.WritesProcessed.Add(1)
	return err
}

// run executes one command and counts it in INFO's Commandstats: failed
// when it answered an error, rejected when refused before running.
func (s *session) run(cmd string, args [][]byte) error {
	start, errs := time.Now(), s.errReplies
	s.rejected = false
	err := s.command(cmd, args)
	s.count(cmd, args, start, errs)
	return err
}

// count records a call that began at start, when the session had sent
// errs error replies.
func (s *session) count(cmd string, args [][]byte, start time.Time, errs int) {
	name := statName(cmd, args)
	if name == "" {
		return
	}
	if !s.rejected {
		s.srv.stats.CommandsProcessed.Add(1)
	}
	s.srv.commands.record(name, time.Since(start), s.rejected, s.errReplies > errs)
}

func (s *session) ok() error { return s.reply(resp.SimpleStringValue("OK")) }

func (s *session) errorf(format string, a ...any) error { return s.reply(errorValue(format, a...)) }

// serve reads and answers commands until SYNC/PSYNC turns the connection
// into a replica link, or it ends.
func (s *session) serve(ctx context.Context) error {
	rd := request.NewReader(s.br)
	for {
		args, err := rd.Next()
		if err != nil {
			var pe *request.ProtocolError
			if errors.As(err, &pe) {
				_ = s.reply(resp.ErrorValue(errors.New("ERR " + pe.Error())))
				s.log.Info("protocol error from client", "err", err)
			}
			return err
		}
		if len(args) == 0 {
			continue // bare newline
		}
		cmd := strings.ToLower(string(args[0]))
		s.rejected = false
		if !s.authed && cmd != "auth" && cmd != "hello" && cmd != "quit" {
			s.rejected = true
			s.count(cmd, args, time.Now(), s.errReplies)
			if err := s.reply(resp.ErrorValue(errNoAuth)); err != nil {
				return err
			}
			continue
		}
		if s.subs != nil && s.subs.Count() > 0 && !allowedSubscribed[cmd] {
			s.rejected = true
			s.count(cmd, args, time.Now(), s.errReplies)
			if err := s.errorf("ERR Can't execute '%s': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context", vocab.Truncate(cmd, 64)); err != nil {
				return err
			}
			continue
		}
		if s.multi != nil {
			start, errs := time.Now(), s.errReplies
			err := s.queue(cmd, args)
			if cmd == "exec" || cmd == "discard" || cmd == "multi" {
				s.rejected = cmd == "multi" // nested: refused
				if cmd == "exec" {
					errs = s.errReplies // the queued commands' errors are theirs, not EXEC's
				}
				s.count(cmd, args, start, errs)
			}
			if err != nil {
				return err
			}
			continue
		}
		switch cmd {
		case "psync", "sync":
			s.count(cmd, args, time.Now(), s.errReplies)
			return s.becomeReplica(ctx, cmd, args)
		case "quit":
			_ = s.ok()
			return nil
		case "multi":
			s.multi = [][][]byte{}
			s.count(cmd, args, time.Now(), s.errReplies)
			if err := s.ok(); err != nil {
				return err
			}
			continue
		case "exec", "discard":
			s.rejected = true
			s.count(cmd, args, time.Now(), s.errReplies)
			if err := s.errorf("ERR %s without MULTI", strings.ToUpper(cmd)); err != nil {
				return err
			}
			continue
		}
		if err := s.run(cmd, args); err != nil {
			return err
		}
		if s.closeAfterReply {
			return nil
		}
	}
}

// SupportedCommands are the commands a session answers.
var SupportedCommands = []string{"auth", "client", "command", "config", "discard", "echo", "exec", "hello", "info",
	"latency", "multi", "ping", "psubscribe", "psync", "publish", "punsubscribe", "quit", "replconf", "replicaof",
	"replproxy", "reset", "role", "select", "slaveof", "slowlog", "subscribe", "sync", "unsubscribe"}

// queue handles a command inside MULTI: EXEC runs the queue, each command
// writing its reply inside one array, as Redis answers EXEC.
func (s *session) queue(cmd string, args [][]byte) error {
	switch cmd {
	case "multi":
		return s.errorf("ERR MULTI calls can not be nested")
	case "discard":
		s.multi = nil
		return s.ok()
	case "exec":
		q := s.multi
		s.multi = nil
		if err := s.clientWrite([]byte("*" + strconv.Itoa(len(q)) + "\r\n")); err != nil {
			return err
		}
		for _, a := range q {
			if err := s.run(strings.ToLower(string(a[0])), a); err != nil {
				return err
			}
		}
		if s.closeAfterReply {
			return io.EOF
		}
		return nil
	case "psync", "sync", "subscribe", "psubscribe", "unsubscribe", "punsubscribe", "quit", "reset":
		return s.errorf("ERR Command not allowed inside a transaction")
	}
	own := make([][]byte, len(args)) // the reader reuses its buffer for the next command
	for i, a := range args {
		own[i] = append([]byte(nil), a...)
	}
	s.multi = append(s.multi, own)
	return s.reply(resp.SimpleStringValue("QUEUED"))
}

func (s *session) command(cmd string, args [][]byte) error {
	p := s.srv
	argc := len(args)
	arity := func(min, max int) bool { return argc >= min && (max < 0 || argc <= max) }
	wrongArgs := func() error {
		s.rejected = true
		return s.errorf("ERR wrong number of arguments for '%s' command", cmd)
	}
	switch cmd {
	case "ping":
		if !arity(1, 2) {
			return wrongArgs()
		}
		if s.subs != nil && s.subs.Count() > 0 {
			return s.pingSubscribed(args)
		}
		if argc == 2 {
			return s.reply(resp.BytesValue(args[1]))
		}
		return s.reply(resp.SimpleStringValue("PONG"))
	case "echo":
		if argc != 2 {
			return wrongArgs()
		}
		return s.reply(resp.BytesValue(args[1]))
	case "auth":
		if !arity(2, 3) {
			return wrongArgs()
		}
		return s.auth(args[1:])
	case "hello":
		return s.hello(args[1:])
	case "replconf":
		return s.replconf(args[1:])
	case "info":
		sections := make([]string, 0, argc-1)
		for _, a := range args[1:] {
			sections = append(sections, string(a))
		}
		return s.reply(resp.StringValue(s.srv.Info(sections...)))
	case "role":
		return s.reply(p.role())
	case "client":
		return s.client(args[1:])
	case "command":
		return s.reply(commandReply(args[1:]))
	case "config":
		return s.reply(p.config(args[1:]))
	case "subscribe", "psubscribe":
		if argc < 2 {
			return wrongArgs()
		}
		return s.subscribeCommand(cmd, args[1:])
	case "unsubscribe", "punsubscribe":
		return s.subscribeCommand(cmd, args[1:])
	case "publish":
		if argc != 3 {
			return wrongArgs()
		}
		return s.reply(resp.IntegerValue(p.pubsub.Publish(args[1], args[2])))
	case "reset":
		return s.reset()
	case "replicaof", "slaveof":
		if argc != 3 {
			return wrongArgs()
		}
		return s.replicaof(string(args[1]), string(args[2]))
	case "replproxy":
		return s.replproxyCommand(args[1:])
	case "latency":
		return s.reply(latencyReply(s.srv.commands, args[1:]))
	case "slowlog":
		return s.reply(slowlogReply(args[1:]))
	case "select":
		if argc == 2 && string(args[1]) == "0" {
			return s.ok()
		}
		return s.errorf("ERR replproxy serves no data; only DB 0 can be selected")
	}
	return s.errorf("ERR unknown command '%s': replproxy is a replication proxy and serves no data", vocab.Truncate(string(args[0]), 64))
}

// becomeReplica hands the connection to the downstream as a replica link
// (SYNC or PSYNC) and serves it until it ends; a malformed SYNC or PSYNC
// is answered with an error and makes no replica.
func (s *session) becomeReplica(ctx context.Context, cmd string, args [][]byte) error {
	r, err := s.srv.replicas.NewReplica(handoff.Link{ID: s.id, Conn: s.conn, Raw: s.raw, Reader: s.br, Addr: s.addr, TLS: s.tls,
		Delayed: s.delayed, Log: s.log, Ctx: s.ctx, Identity: s.identity(), Announce: s.Announce, Errorf: s.errorf,
		EndSession: s.closeConn}, cmd, args)
	if r == nil {
		return err
	}
	s.rep.Store(r)
	return r.Run(ctx)
}
