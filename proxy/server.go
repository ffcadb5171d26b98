package proxy

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
	"time"

	"github.com/replproxy/replproxy/internal/acl"
	"github.com/replproxy/replproxy/proxy/downstream"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// server owns the client side: the listeners and the sessions on them.
// A session reads commands and answers them until SYNC/PSYNC hands its
// connection to the downstream as a replica. Its goroutines: acceptLoop
// (run by Serve), one per session (joined by acceptLoop before it
// returns).
type server struct {
	cfg   Config
	log   *slog.Logger
	stats *vocab.ClientCounters
	p     *Proxy       // what sessions answer from: INFO, ROLE, REPLICAOF
	ln    net.Listener // plaintext; nil without --listen
	tlsLn net.Listener // nil without --tls-listen
	// delayedLn serves delayed replicas; nil without --delayed-listen.
	delayedLn net.Listener

	// mu guards the session set; nothing holds it across I/O.
	mu       sync.Mutex
	sessions map[*session]struct{}
	nextID   int64
}

func newServer(p *Proxy) *server {
	return &server{cfg: p.cfg, log: p.log, stats: p.stats.ClientCounters, p: p, sessions: map[*session]struct{}{}}
}

// closeAll ends every session (shutdown).
func (d *server) closeAll(reason vocab.DisconnectReason) {
	for _, s := range d.selectSessions(func(*session) bool { return true }) {
		s.close(reason)
	}
}

// addr is the listening address once serving; nil before.
func (d *server) addr() net.Addr {
	if d.ln == nil {
		return nil
	}
	return d.ln.Addr()
}

// port is the listening port announced upstream: the plaintext one, else
// the TLS one (0 before serving).
func (d *server) Port() int {
	return cmp.Or(listenerPort(d.ln), listenerPort(d.tlsLn))
}

// acceptLoop accepts connections until the listener closes, then waits for
// the sessions it started: Serve closes them all on shutdown.
func (d *server) acceptLoop(ctx context.Context, ln net.Listener, isTLS, delayed bool) {
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

func (d *server) handleConn(ctx context.Context, conn net.Conn, isTLS, delayed bool) {
	sctx, cancel := context.WithCancel(ctx)
	s := &session{p: d.p, conn: conn, raw: conn, out: conn, addr: conn.RemoteAddr().String(), ctx: sctx, cancel: cancel, tls: isTLS, delayed: delayed, startTime: time.Now()}
	var tc *tls.Conn
	if isTLS {
		// The handshake runs after the --max-clients check, on the
		// session's goroutine; closing the session closes it too.
		tc = tls.Server(conn, d.p.sec.Server.ServerConfig(d.p.sec.Auth))
		s.conn, s.out = tc, downstream.NewBufferedWriter(tc)
	}
	s.br = bufio.NewReaderSize(countingReader{s.conn, d.stats}, 16<<10)
	if d.p.sec.Users.Load().DefaultOpen() {
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
			d.p.pubsub.Drop(s.subs)
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
	stats *vocab.ClientCounters
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
func (d *server) admit(s *session, tc *tls.Conn) bool {
	sec := d.p.sec
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

// dropUnusableUsers disconnects sessions authenticated as a user that a
// users reload removed or turned off (as Redis 7.2's ACL LOAD does).
func (d *server) dropUnusableUsers() {
	users := d.p.sec.Users.Load()
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
func (d *server) selectSessions(match func(*session) bool) []*session {
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
func (d *server) isSelf(host string, port int) bool {
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

// sourcePorts are the ports a refresh source's master_port may name: the
// listeners replicas follow (not the delayed one) and the announced port.
func (d *server) SourcePorts() []int {
	var out []int
	for _, port := range []int{listenerPort(d.ln), listenerPort(d.tlsLn), d.cfg.AnnouncePort} {
		if port != 0 {
			out = append(out, port)
		}
	}
	return out
}

// sessionCount is the number of connections, replicas included.
func (d *server) sessionCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sessions)
}
