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
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/internal/acl"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// downstream owns the replica side: the listener and the sessions. Each
// session is a thin executor around the sync planner (plan.Sync): it reads
// commands, writes replies and streams from the store's backlog. Its
// goroutines: acceptLoop (run by Serve), one per session (joined by
// acceptLoop before it returns) and each replica's ACK reader (joined by
// its session).
type downstream struct {
	cfg   Config
	log   *slog.Logger
	stats *vocab.Stats
	p     *Proxy       // what sessions answer from: INFO, ROLE, the store, REPLICAOF
	ln    net.Listener // plaintext; nil without --listen
	tlsLn net.Listener // nil without --tls-listen
	// delayedLn serves delayed replicas; nil without --delayed-listen.
	delayedLn net.Listener

	// mu guards the session set; nothing holds it across I/O.
	mu       sync.Mutex
	sessions map[*session]struct{}
	nextID   int64

	slots chan struct{} // full-sync slots; nil when unlimited
	// fullSyncRate bounds the bytes/s of all full syncs together; nil: none.
	fullSyncRate *rateLimiter

	// refusedMu guards refused: replicas (by announced address) that hung
	// up after a full sync of an RDB version without ACKing, most likely
	// unable to load it, and until when they are not sent it again.
	refusedMu sync.Mutex
	refused   map[string]refusal
	queued    atomic.Int64 // replicas waiting for a slot
}

func newDownstream(p *Proxy) *downstream {
	d := &downstream{cfg: p.cfg, log: p.log, stats: p.stats, p: p, sessions: map[*session]struct{}{},
		fullSyncRate: newRateLimiter(p.cfg.FullSyncRateLimit, rateChunk), refused: map[string]refusal{}}
	if p.cfg.MaxParallelFullSyncs > 0 {
		d.slots = make(chan struct{}, p.cfg.MaxParallelFullSyncs)
	}
	return d
}

// addr is the listening address once serving; nil before.
func (d *downstream) addr() net.Addr {
	if d.ln == nil {
		return nil
	}
	return d.ln.Addr()
}

// port is the listening port announced upstream: the plaintext one, else
// the TLS one (0 before serving).
func (d *downstream) Port() int {
	return cmp.Or(listenerPort(d.ln), listenerPort(d.tlsLn))
}

// acceptLoop accepts connections until the listener closes, then waits for
// the sessions it started: Serve closes them all on shutdown.
func (d *downstream) acceptLoop(ctx context.Context, ln net.Listener, isTLS, delayed bool) {
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

func (d *downstream) handleConn(ctx context.Context, conn net.Conn, isTLS, delayed bool) {
	sctx, cancel := context.WithCancel(ctx)
	s := &session{p: d.p, conn: conn, raw: conn, out: conn, addr: conn.RemoteAddr().String(), ctx: sctx, cancel: cancel, tls: isTLS, delayed: delayed, startTime: time.Now()}
	var tc *tls.Conn
	if isTLS {
		// The handshake runs after the --max-clients check, on the
		// session's goroutine; closing the session closes it too.
		tc = tls.Server(conn, d.p.sec.Server.ServerConfig(d.p.sec.Auth))
		s.conn, s.out = tc, &bufferedWriter{w: tc}
	}
	s.br = bufio.NewReaderSize(countingReader{s.conn, d.stats}, 16<<10)
	if d.p.sec.Users.Load().DefaultOpen() {
		s.authed = true
		s.user.Store(acl.DefaultUser)
	}
	s.ackOff.Store(-1)
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
func (d *downstream) admit(s *session, tc *tls.Conn) bool {
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
func (d *downstream) dropUnusableUsers() {
	users := d.p.sec.Users.Load()
	for _, s := range d.selectSessions(func(s *session) bool {
		u := s.authUser()
		return u != "" && !users.Usable(u)
	}) {
		s.log.Warn("disconnecting a client whose user was removed or disabled", "user", s.authUser())
		s.close(vocab.DownUserRevoked)
	}
}

// dropTrimmedReplicas disconnects replicas whose next byte was trimmed
// away. Their writers may be blocked on a full socket and would otherwise
// notice only at the replica timeout.
func (d *downstream) DropTrimmedReplicas() {
	first, _ := d.p.store.Backlog.Range()
	behind := d.selectSessions(func(s *session) bool {
		c := s.cur.Load()
		return c != nil && c.Pos() < first
	})
	for _, s := range behind {
		s.log.Warn("replica fell behind the backlog front; disconnecting", "backlog_first", first)
		s.close(vocab.DownOffsetTrimmed)
	}
}

// closeSessions disconnects the replicas that hold a position in the
// stream (all connections on shutdown). Replicas still waiting for a
// snapshot have none yet and are left waiting.
func (d *downstream) CloseSessions(reason vocab.DisconnectReason) int {
	victims := d.selectSessions(func(s *session) bool {
		return reason == vocab.DownShutdown || (s.replica.Load() && s.state.Load() != stateWaitBgsave)
	})
	for _, s := range victims {
		s.close(reason)
	}
	return len(victims)
}

// selectSessions returns the sessions that match; the caller acts on them
// outside mu (closing logs and touches sockets).
func (d *downstream) selectSessions(match func(*session) bool) []*session {
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
func (d *downstream) isSelf(host string, port int) bool {
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

// nthAck is the offset at least n online replicas have acknowledged (0
// when fewer are online).
func (d *downstream) NthAck(n int) int64 {
	var offs []int64
	for _, s := range d.selectSessions(func(s *session) bool {
		return s.replica.Load() && !s.legacy && !s.delayed && s.state.Load() == stateOnline
	}) {
		offs = append(offs, s.ackOff.Load())
	}
	if len(offs) < n {
		return 0
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] > offs[j] })
	return max(offs[n-1], 0)
}

// candidateAckAge: replicas ACK every second; one silent for longer is
// not asked for a snapshot.
const candidateAckAge = 3 * time.Second

// refreshCandidates lists the replicas a snapshot refresh may ask, most
// caught up first: online (so not busy with a full sync), ACKing (a frozen
// replica still accepts connections, and would hold the refresh for the
// repl-timeout), with an announced listening port. The one asked last time
// and those refused before go last while others exist.
func (d *downstream) RefreshCandidates(avoid string, refused func(addr string) bool) []vocab.Candidate {
	type cand struct {
		vocab.Candidate
		ack   int64
		later bool
	}
	recent := time.Now().Add(-candidateAckAge).UnixNano()
	var cs []cand
	for _, s := range d.selectSessions(func(s *session) bool {
		return s.replica.Load() && !s.legacy && !s.rdbOnly && !s.delayed && s.listeningPort > 0 && s.state.Load() == stateOnline &&
			s.ackTime.Load() >= recent
	}) {
		addr := s.replicaAddr()
		cs = append(cs, cand{Candidate: vocab.Candidate{Addr: addr, TLS: s.tls, ID: s.identity()},
			ack: s.ackOff.Load(), later: addr == avoid || refused(addr)})
	}
	sort.SliceStable(cs, func(i, j int) bool {
		if cs[i].later != cs[j].later {
			return cs[j].later
		}
		if cs[i].ack != cs[j].ack {
			return cs[i].ack > cs[j].ack
		}
		return cs[i].Addr < cs[j].Addr
	})
	out := make([]vocab.Candidate, len(cs))
	for i, c := range cs {
		out[i] = c.Candidate
	}
	return out
}

// sourcePorts are the ports a refresh source's master_port may name: the
// listeners replicas follow (not the delayed one) and the announced port.
func (d *downstream) SourcePorts() []int {
	var out []int
	for _, port := range []int{listenerPort(d.ln), listenerPort(d.tlsLn), d.cfg.AnnouncePort} {
		if port != 0 {
			out = append(out, port)
		}
	}
	return out
}

// refusal is a replica that could not load an RDB version.
type refusal struct {
	rdbVersion int
	until      time.Time
}

// maxRefusals bounds the memory of refusals (a flood of addresses).
const maxRefusals = 4096

// noteRefusal remembers that the replica at addr hung up after a full sync
// of rdbVersion without acknowledging it.
func (d *downstream) noteRefusal(addr string, rdbVersion int) {
	d.refusedMu.Lock()
	defer d.refusedMu.Unlock()
	now := time.Now()
	if len(d.refused) >= maxRefusals {
		for k, r := range d.refused {
			if now.After(r.until) {
				delete(d.refused, k)
			}
		}
	}
	if len(d.refused) < maxRefusals {
		d.refused[addr] = refusal{rdbVersion: rdbVersion, until: now.Add(d.cfg.RDBRefusalTTL)}
	}
}

// abandonedSyncWait bounds awaitAbandonedSync: a replica's hang-up is
// read within milliseconds; a link still up after this is not abandoned.
const abandonedSyncWait = 2 * time.Second

// awaitAbandonedSync: a replica that cannot load a full sync hangs up and
// asks again at once, so its new request can be read before its old
// link's hang-up is, and the same payload would go out again. Before a
// full sync, wait (at most limit) for the end of every earlier link of
// the same replica that got a payload and never ACKed: its refusal, if
// any, is noted by then.
func (d *downstream) awaitAbandonedSync(ctx context.Context, self *session, limit time.Duration) {
	addr := self.replicaAddr()
	pending := func() bool {
		return len(d.selectSessions(func(s *session) bool {
			return s != self && s.replica.Load() && !s.legacy && s.listeningPort > 0 &&
				s.sentRDB.Load() != 0 && !s.acked.Load() && s.replicaAddr() == addr
		})) > 0
	}
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for pending() {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			return
		case <-poll.C:
		}
	}
}

// refusedVersion reports whether the replica at addr failed to load
// rdbVersion lately: then it is answered with an error, not another payload.
func (d *downstream) refusedVersion(addr string, rdbVersion int) (time.Duration, bool) {
	d.refusedMu.Lock()
	defer d.refusedMu.Unlock()
	r, ok := d.refused[addr]
	if !ok || r.rdbVersion != rdbVersion || time.Now().After(r.until) {
		return 0, false
	}
	return time.Until(r.until), true
}
