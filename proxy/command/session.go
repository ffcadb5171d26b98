package command

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/resp"

	"github.com/replproxy/replproxy/internal/acl"
	"github.com/replproxy/replproxy/proxy/downstream"
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

// session is one downstream connection: a client until SYNC/PSYNC, then a
// replica fed from the backlog. Publication rule: id, conn, addr and log
// are set before the session joins the downstream's set; the handshake
// fields (name, listening port, capabilities...) are written only by the
// session's goroutine before replica is stored true, and others read them
// only after loading replica == true; everything else is atomic.
type session struct {
	srv  *Server
	id   int64
	conn net.Conn  // *tls.Conn on the TLS listener
	raw  net.Conn  // the TCP connection under conn
	out  io.Writer // conn, buffered for TLS (no sendfile there)
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
	downstream.Announce
	// rep is the replica the connection became at SYNC/PSYNC; nil before.
	rep       atomic.Pointer[downstream.Replica]
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
	if r := s.rep.Load(); r != nil {
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

func (s *session) errorf(format string, a ...any) error {
	return s.reply(resp.ErrorValue(fmt.Errorf(format, a...)))
}

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

// supportedCommands are the commands a session answers.
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
		// Enough for redis-cli (COMMAND DOCS for hints) and tools that
		// count: the commands a proxy answers.
		if argc == 1 {
			return s.reply(commandInfo(nil))
		}
		switch strings.ToLower(string(args[1])) {
		case "count":
			return s.reply(resp.IntegerValue(len(SupportedCommands)))
		case "info":
			return s.reply(commandInfo(args[2:]))
		case "list":
			var names []resp.Value
			for _, n := range SupportedCommands {
				names = append(names, resp.StringValue(n))
			}
			return s.reply(resp.ArrayValue(names))
		}
		return s.reply(resp.ArrayValue(nil)) // DOCS: no docs, which redis-cli accepts
	case "config":
		if argc >= 3 && strings.EqualFold(string(args[1]), "get") {
			return s.reply(p.configGet(args[2:]))
		}
		if argc == 2 && strings.EqualFold(string(args[1]), "rewrite") {
			return s.ok() // Sentinel's follow-up to SLAVEOF: REPLICAOF is persisted already
		}
		if argc == 2 && strings.EqualFold(string(args[1]), "resetstat") {
			p.commands.reset()
			return s.ok()
		}
		return s.errorf("ERR replproxy supports only CONFIG GET, CONFIG REWRITE and CONFIG RESETSTAT; its settings are flags")
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
		return s.latency(args[1:])
	case "slowlog":
		return s.slowlog(args[1:])
	case "select":
		if argc == 2 && string(args[1]) == "0" {
			return s.ok()
		}
		return s.errorf("ERR replproxy serves no data; only DB 0 can be selected")
	}
	return s.errorf("ERR unknown command '%s': replproxy is a replication proxy and serves no data", vocab.Truncate(string(args[0]), 64))
}

// replicaof moves the upstream, as REPLICAOF moves a Redis replica: for an
// operator repointing the proxy after a failover. The proxy never becomes a
// master, so NO ONE is refused.
func (s *session) replicaof(host, port string) error {
	if strings.EqualFold(host, "no") && strings.EqualFold(port, "one") {
		return s.errorf("ERR replproxy never becomes a master; promote a Redis replica and point replproxy at it with REPLICAOF <host> <port>")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return s.errorf("ERR Invalid master port")
	}
	if host == "" || strings.ContainsAny(host, " \r\n") {
		return s.errorf("ERR Invalid master host")
	}
	if s.srv.isSelf(host, n) {
		return s.errorf("ERR %s:%d is this replproxy itself", host, n)
	}
	if !s.srv.daemon.MoveUpstream(net.JoinHostPort(host, port)) {
		return s.reply(resp.SimpleStringValue("OK Already connected to specified master"))
	}
	return s.ok()
}

// replproxyCommand is REPLPROXY GUARD STATUS|ACCEPT: the operator's side
// of the empty-origin guard.
func (s *session) replproxyCommand(args [][]byte) error {
	if len(args) != 2 || !strings.EqualFold(string(args[0]), "guard") {
		return s.errorf("ERR usage: REPLPROXY GUARD STATUS|ACCEPT")
	}
	switch strings.ToLower(string(args[1])) {
	case "status":
		return s.reply(resp.StringValue(GuardText(s.srv.daemon.Status().Guard)))
	case "accept":
		err := s.srv.daemon.GuardAccept()
		switch {
		case errors.Is(err, vocab.ErrNothingHeld):
			return s.errorf("ERR the guard holds no history: nothing to accept")
		case err != nil:
			s.log.Error("guard accept failed", "err", err)
			return s.errorf("ERR guard accept failed: %s", vocab.OneLine(err.Error()))
		}
		s.log.Warn("guard: an operator accepted the held history")
		return s.ok()
	}
	return s.errorf("ERR unknown REPLPROXY GUARD subcommand '%s': want STATUS or ACCEPT", vocab.Truncate(string(args[1]), 32))
}

func (s *session) auth(args [][]byte) error {
	pass := args[len(args)-1]
	user := acl.DefaultUser
	if len(args) == 2 {
		user = string(args[0])
	} else if s.srv.sec.Users.Load().DefaultOpen() {
		// As Redis: the one-argument form with a nopass default user.
		return s.errorf("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
	}
	if err := s.checkAuth([]byte(user), pass); err != nil {
		return s.reply(resp.ErrorValue(err)) // counted and logged by checkAuth
	}
	return s.ok()
}

func (s *session) hello(args [][]byte) error {
	if len(args) > 0 {
		if v, err := strconv.Atoi(string(args[0])); err != nil || v < 2 || v > 3 {
			return s.errorf("NOPROTO unsupported protocol version")
		} else if v == 3 {
			return s.errorf("NOPROTO replproxy speaks RESP2 only")
		}
		for i := 1; i < len(args); i++ {
			switch strings.ToLower(string(args[i])) {
			case "auth":
				if i+2 >= len(args) {
					return s.errorf("ERR Syntax error in HELLO option 'auth'")
				}
				if err := s.checkAuth(args[i+1], args[i+2]); err != nil {
					return s.reply(resp.ErrorValue(err))
				}
				i += 2
			case "setname":
				if i+1 >= len(args) {
					return s.errorf("ERR Syntax error in HELLO option 'setname'")
				}
				s.clientName.Store(string(args[i+1]))
				i++
			default:
				return s.errorf("ERR Syntax error in HELLO option '%s'", vocab.Truncate(string(args[i]), 32))
			}
		}
	}
	if !s.authed {
		return s.reply(resp.ErrorValue(errors.New("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")))
	}
	return s.reply(resp.ArrayValue([]resp.Value{
		resp.StringValue("server"), resp.StringValue("redis"),
		resp.StringValue("version"), resp.StringValue(s.srv.daemon.RedisVersion()),
		resp.StringValue("proto"), resp.IntegerValue(2),
		resp.StringValue("id"), resp.IntegerValue(int(s.id)),
		resp.StringValue("mode"), resp.StringValue("standalone"),
		resp.StringValue("role"), resp.StringValue("replica"),
		resp.StringValue("modules"), resp.ArrayValue(nil),
	}))
}

func (s *session) checkAuth(user, pass []byte) error {
	users := s.srv.sec.Users.Load()
	name := string(user)
	if fail := users.Check(name, pass); fail != "" {
		s.srv.sec.AuthFailed(string(fail), s.addr, nil)
		return errWrongPass
	}
	s.authed = true
	s.user.Store(name)
	return nil
}

// authUser is the user the session authenticated as; "" before.
func (s *session) authUser() string {
	u, _ := s.user.Load().(string)
	return u
}

// identity is who the session authenticated as: its user and, on TLS, the
// CN of a verified client certificate.
func (s *session) identity() vocab.Identity {
	id := vocab.Identity{User: s.authUser()}
	if tc, ok := s.conn.(*tls.Conn); ok {
		if cs := tc.ConnectionState(); len(cs.VerifiedChains) > 0 && len(cs.PeerCertificates) > 0 {
			id.CN = cs.PeerCertificates[0].Subject.CommonName
		}
	}
	return id
}

// replconf follows replconfCommand(): option/value pairs, +OK, no reply for
// ack and getack, unknown capabilities ignored.
func (s *session) replconf(args [][]byte) error {
	if len(args)%2 != 0 || len(args) == 0 {
		return s.errorf("ERR syntax error")
	}
	for i := 0; i < len(args); i += 2 {
		opt, val := strings.ToLower(string(args[i])), string(args[i+1])
		switch opt {
		case "listening-port":
			port, err := strconv.Atoi(val)
			if err != nil || port < 0 || port > 65535 {
				return s.errorf("ERR value is not an integer or out of range")
			}
			s.ListeningPort = port
		case "ip-address":
			if len(val) >= 256 {
				return s.errorf("ERR REPLCONF ip-address provided by replica instance is too long: %d bytes", len(val))
			}
			s.IPAddress = val
		case "capa":
			switch strings.ToLower(val) {
			case "eof":
				s.CapaEOF = true
			case "psync2":
				s.CapaPsync2 = true
			}
		case "ack", "getack":
			return nil // no reply; ACKs matter only once the link is a replica
		case "rdb-only":
			switch val {
			case "0":
				s.RDBOnly = false
			case "1":
				s.RDBOnly = true
			default:
				return s.errorf("ERR syntax error")
			}
		case "rdb-filter-only":
			// As Redis 7: a space-separated list of filters, "functions"
			// the only one; none at all means no data.
			s.FilterAll, s.FilterFunctions = false, false
			for _, f := range strings.Fields(val) {
				if !strings.EqualFold(f, "functions") {
					return s.errorf("ERR Unsupported rdb-filter-only option: %s", vocab.Truncate(f, 64))
				}
				s.FilterFunctions = true
			}
			s.FilterAll = !s.FilterFunctions // redis-cli --replica: no data, the live stream only
		case "version":
			s.Version = vocab.Truncate(val, 32)
		default:
			return s.errorf("ERR Unrecognized REPLCONF option: %s", vocab.Truncate(string(args[i]), 64))
		}
	}
	return s.ok()
}

func (s *session) client(args [][]byte) error {
	if len(args) == 0 {
		return s.errorf("ERR wrong number of arguments for 'client' command")
	}
	switch strings.ToLower(string(args[0])) {
	case "setname":
		if len(args) != 2 {
			return s.errorf("ERR wrong number of arguments for 'client|setname' command")
		}
		s.clientName.Store(string(args[1]))
		return s.ok()
	case "getname":
		name, _ := s.clientName.Load().(string)
		if name == "" {
			return s.reply(resp.NullValue())
		}
		return s.reply(resp.StringValue(name))
	case "setinfo":
		return s.ok()
	case "id":
		return s.reply(resp.IntegerValue(int(s.id)))
	case "list":
		now := time.Now()
		var b strings.Builder
		for _, o := range s.srv.selectSessions(func(*session) bool { return true }) {
			b.WriteString(o.clientLine(now) + "\n")
		}
		return s.reply(resp.StringValue(b.String()))
	case "info":
		return s.reply(resp.StringValue(s.clientLine(time.Now()) + "\n"))
	case "kill":
		if len(args) < 2 {
			return s.errorf("ERR wrong number of arguments for 'client|kill' command")
		}
		return s.clientKill(args[1:])
	}
	return s.errorf("ERR replproxy supports CLIENT SETNAME, GETNAME, SETINFO, ID, LIST, INFO and KILL")
}

// becomeReplica hands the connection to the downstream as a replica link
// (SYNC or PSYNC) and serves it until it ends.
func (s *session) becomeReplica(ctx context.Context, cmd string, args [][]byte) error {
	r := s.srv.down.NewReplica(s.id, s.conn, s.raw, s.out, s.br, s.addr, s.tls, s.delayed, s.log, s.ctx, s.identity(), s.Announce,
		s.errorf, s.closeConn)
	s.rep.Store(r)
	return r.Run(ctx, cmd, args)
}
