package command

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/internal/acl"
	"github.com/replproxy/replproxy/internal/tlsconf"
	"github.com/replproxy/replproxy/proxy/handoff"
	"github.com/replproxy/replproxy/proxy/pubsub"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// Server owns the client side: the listeners and the sessions on them.
// A session reads commands and answers them until SYNC/PSYNC hands its
// connection to the downstream as a replica. Its goroutines: acceptLoop
// (run by Serve), one per session (joined by acceptLoop before it
// returns).
type Server struct {
	cfg      Options
	log      *slog.Logger
	stats    *vocab.Stats // INFO shows them all; the server writes ClientCounters
	daemon   Daemon       // what sessions answer from: INFO, ROLE, REPLICAOF
	sec      *security.Service
	pubsub   *pubsub.Registry
	replicas Replicas // sessions become its replicas at SYNC/PSYNC
	commands *commandStats
	memPeak  atomic.Int64 // the highest used_memory INFO has seen
	ln       net.Listener // plaintext; nil without --listen
	tlsLn    net.Listener // nil without --tls-listen
	// delayedLn serves delayed replicas; nil without --delayed-listen.
	delayedLn net.Listener

	// mu guards the session set; nothing holds it across I/O.
	mu       sync.Mutex
	sessions map[*session]struct{}
	nextID   int64
}

// Options are what the command surface reads of the configuration
// (see the flags of the same names); INFO and CONFIG GET show them.
type Options struct {
	MaxClients      int
	AnnounceIP      string
	AnnouncePort    int
	ConfigFile      string
	BacklogSize     int64
	ReplTimeout     time.Duration
	DataDir         string
	RefreshTrust    []string
	RefreshUpstream string
	TLSAuthClients  string
	Upstream        string
	UpstreamTLS     bool
	Fanout          bool // the fan-out writer is on
}

// Replicas takes over the connections that SYNC or PSYNC make replica
// links.
type Replicas interface {
	// NewReplica takes link for the SYNC or PSYNC in cmd and args; a
	// malformed one is answered and gives no replica (nil, and the
	// reply's write error).
	NewReplica(link handoff.Link, cmd string, args [][]byte) (Replica, error)
}

// Replica is a replica link, run on its session's goroutine.
type Replica interface {
	// Run serves the link until it ends.
	Run(ctx context.Context) error
	// Close ends the link, counting reason, and the session with it.
	Close(reason vocab.DisconnectReason)
}

// Daemon is what the command surface asks of the rest of the proxy.
type Daemon interface {
	// Status is the proxy's state for INFO, ROLE and CLIENT.
	Status() vocab.Status
	// RedisVersion is the redis_version tools see (HELLO).
	RedisVersion() string
	// MoveUpstream is REPLICAOF host:port; false when it is the upstream already.
	MoveUpstream(addr string) bool
	// GuardAccept installs the history the empty-origin guard holds.
	GuardAccept() error
}

func New(cfg Options, log *slog.Logger, stats *vocab.Stats, sec *security.Service, ps *pubsub.Registry,
	replicas Replicas, d Daemon) *Server {
	return &Server{cfg: cfg, log: log, stats: stats, daemon: d, sec: sec, pubsub: ps, replicas: replicas, commands: newCommandStats(),
		sessions: map[*session]struct{}{}}
}

// closeAll ends every session (shutdown).
func (d *Server) closeAll(reason vocab.DisconnectReason) {
	for _, s := range d.selectSessions(func(*session) bool { return true }) {
		s.close(reason)
	}
}

// Port is the listening port announced upstream: the plaintext one, else
// the TLS one (0 before serving).
func (d *Server) Port() int {
	return cmp.Or(listenerPort(d.ln), listenerPort(d.tlsLn))
}

// acceptLoop accepts connections until the listener closes, then waits for
// the sessions it started: Serve closes them all on shutdown.
func (d *Server) acceptLoop(ctx context.Context, ln net.Listener, isTLS, delayed bool) {
	var sessions sync.WaitGroup
	defer sessions.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			d.log.Warn("accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		sessions.Go(func() { d.handleConn(ctx, conn, isTLS, delayed) })
	}
}

func (d *Server) handleConn(ctx context.Context, conn net.Conn, isTLS, delayed bool) {
	sctx, cancel := context.WithCancel(ctx)
	s := &session{srv: d, conn: conn, raw: conn, addr: conn.RemoteAddr().String(), ctx: sctx, cancel: cancel, tls: isTLS, delayed: delayed, startTime: time.Now()}
	var tc *tls.Conn
	if isTLS {
		// The handshake runs after the --max-clients check, on the
		// session's goroutine; closing the session closes it too.
		tc = tls.Server(conn, d.sec.Server.ServerConfig(d.sec.Auth))
		s.conn = tc
	}
	s.br = bufio.NewReaderSize(countingReader{s.conn, d.stats}, 16<<10)
	if d.sec.Users.Load().DefaultOpen() {
		s.authed = true
		s.user.Store(acl.DefaultUser)
	}
	d.mu.Lock()
	if ctx.Err() != nil { // shutting down: closeSessions has run or will not see us
		d.mu.Unlock()
		conn.Close()
		cancel()
		return
	}
	if len(d.sessions) >= d.cfg.MaxClients {
		d.mu.Unlock()
		d.stats.RejectedConns.Add(1)
		// As Redis (networking.c:acceptCommonHandler): one error line, then close.
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = conn.Write([]byte("-ERR max number of clients reached\r\n"))
		conn.Close()
		cancel()
		return
	}
	d.nextID++
	d.stats.ConnectionsReceived.Add(1)
	s.id = d.nextID
	s.log = d.log.With("client", s.id, "addr", s.addr) // before others can see the session
	d.sessions[s] = struct{}{}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.sessions, s)
		d.mu.Unlock()
		s.close(vocab.DownClosed)
		if s.subs != nil {
			d.pubsub.Drop(s.subs)
			s.subs.End()
		}
	}()
	if !d.admit(s, tc) {
		return
	}
	if err := s.serve(sctx); err != nil && sctx.Err() == nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		s.log.Info("client connection ended", "err", err)
	}
}

// countingReader counts a session's input for INFO's Stats.
type countingReader struct {
	r     io.Reader
	stats *vocab.Stats
}

func (c countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.stats.NetInputBytes.Add(int64(n))
	c.stats.ReadsProcessed.Add(1)
	return n, err
}

// admit runs the TLS handshake (with a deadline), or on the plaintext
// port refuses a TLS ClientHello, which would otherwise wait for a
// newline forever. A refused client has had no byte of data.
func (d *Server) admit(s *session, tc *tls.Conn) bool {
	sec := d.sec
	if tc == nil {
		// No deadline: a client may connect and type later, as with Redis.
		b, err := s.br.Peek(1)
		if err == nil && b[0] == 0x16 { // a TLS handshake record
			sec.AuthFailed(security.AuthTLSOnPlainPort, s.addr, nil)
			return false
		}
		return err == nil
	}
	_ = tc.SetDeadline(time.Now().Add(security.TLSHandshakeTimeout))
	err := tc.Handshake()
	_ = tc.SetDeadline(time.Time{})
	if err != nil {
		sec.AuthFailed(security.ClassifyHandshake(err), s.addr, err)
		return false
	}
	if user := sec.UserFromCert(tc); user != "" {
		s.authed = true
		s.user.Store(user)
		s.log.Info("client authenticated by its certificate", "user", user)
	}
	return true
}

// DropUnusableUsers disconnects sessions authenticated as a user that a
// users reload removed or turned off (as Redis 7.2's ACL LOAD does).
func (d *Server) DropUnusableUsers() {
	users := d.sec.Users.Load()
	for _, s := range d.selectSessions(func(s *session) bool {
		u := s.authUser()
		return u != "" && !users.Usable(u)
	}) {
		s.log.Warn("disconnecting a client whose user was removed or disabled", "user", s.authUser())
		s.close(vocab.DownUserRevoked)
	}
}

// selectSessions returns the sessions that match; the caller acts on them
// outside mu (closing logs and touches sockets).
func (d *Server) selectSessions(match func(*session) bool) []*session {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*session
	for s := range d.sessions {
		if match(s) {
			out = append(out, s)
		}
	}
	return out
}

// isSelf reports whether host:port is one of this proxy's own listeners:
// a local address (or the announced IP) on a listening port.
func (d *Server) isSelf(host string, port int) bool {
	for _, ln := range []net.Listener{d.ln, d.tlsLn, d.delayedLn} {
		if ln == nil {
			continue
		}
		if a, ok := ln.Addr().(*net.TCPAddr); ok && a.Port == port && isLocal(a, host, d.cfg.AnnounceIP) {
			return true
		}
	}
	return false
}

func isLocal(a *net.TCPAddr, host, announceIP string) bool {
	if host == announceIP {
		return true
	}
	if strings.EqualFold(host, "localhost") {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return false // a name: not resolved here
	case ip.Equal(a.IP):
		return true
	case !a.IP.IsUnspecified():
		return false
	case ip.IsLoopback():
		return true
	}
	addrs, _ := net.InterfaceAddrs()
	for _, ad := range addrs {
		if n, ok := ad.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// SourcePorts are the ports a refresh source's master_port may name: the
// listeners replicas follow (not the delayed one) and the announced port.
func (d *Server) SourcePorts() []int {
	var out []int
	for _, port := range []int{listenerPort(d.ln), listenerPort(d.tlsLn), d.cfg.AnnouncePort} {
		if port != 0 {
			out = append(out, port)
		}
	}
	return out
}

// SessionCount is the number of connections, replicas included.
func (d *Server) SessionCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sessions)
}

// Attach sets the listeners (plaintext, TLS, delayed; any may be nil)
// before any goroutine reads them.
func (d *Server) Attach(ln, tlsLn, delayedLn net.Listener) {
	d.ln, d.tlsLn, d.delayedLn = ln, tlsLn, delayedLn
}

// Serve accepts on the attached listeners until ctx ends, then closes
// them and every session and returns once all have ended.
func (d *Server) Serve(ctx context.Context) {
	var loops sync.WaitGroup
	for _, l := range []struct {
		ln             net.Listener
		isTLS, delayed bool
	}{{d.ln, false, false}, {d.tlsLn, true, false}, {d.delayedLn, false, true}} {
		if l.ln != nil {
			loops.Go(func() { d.acceptLoop(ctx, l.ln, l.isTLS, l.delayed) })
		}
	}
	<-ctx.Done()
	for _, l := range []net.Listener{d.ln, d.tlsLn, d.delayedLn} {
		if l != nil {
			l.Close()
		}
	}
	d.closeAll(vocab.DownShutdown)
	loops.Wait()
}

// listenAddr is a listener's address, nil without one.
func listenAddr(ln net.Listener) net.Addr {
	if ln == nil {
		return nil
	}
	return ln.Addr()
}

// Addrs are the listening addresses: plaintext, TLS and delayed (nil
// without one).
func (d *Server) Addrs() (plain, tls, delayed net.Addr) {
	return listenAddr(d.ln), listenAddr(d.tlsLn), listenAddr(d.delayedLn)
}

// WarnUnprotected is Redis' protected mode in spirit: a listener reachable
// beyond loopback with neither a password nor client certificates.
func (p *Server) WarnUnprotected() {
	open := p.sec.Users.Load().DefaultOpen()
	for _, l := range []struct {
		ln       net.Listener
		certAuth bool
	}{{p.ln, false}, {p.tlsLn, p.sec.Auth == tlsconf.AuthYes}} {
		if l.ln == nil || !open || l.certAuth {
			continue
		}
		if a, ok := l.ln.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
			p.log.Warn("listener open to the network with no authentication: anyone who reaches it can take the data; set --requirepass, a users file or TLS client certificates",
				"addr", a.String())
		}
	}
}
