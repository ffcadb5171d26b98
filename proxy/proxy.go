package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/replproxy/replproxy/internal/acl"
	"github.com/replproxy/replproxy/internal/tlsconf"
	"github.com/replproxy/replproxy/proxy/command"
	"github.com/replproxy/replproxy/proxy/downstream"
	"github.com/replproxy/replproxy/proxy/handoff"
	"github.com/replproxy/replproxy/proxy/pubsub"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/upstream"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// Proxy is one relay: one upstream history, its snapshot and backlog, and
// the downstream replicas served from them. It composes three components,
// each the one owner of its state (see the package doc): the store, the
// follower and the downstream.
type Proxy struct {
	cfg      Config
	log      *slog.Logger
	runID    string
	started  time.Time
	stats    *vocab.Stats
	store    *store.Store
	follower *upstream.Follower
	down     *downstream.Downstream
	srv      *command.Server
	// delayedLn is the delayed listener until Serve attaches it.
	delayedLn net.Listener
	sec       *security.Service
	pubsub    *pubsub.Registry
	fanout    *downstream.Fanout // nil with DisableFanout
}

func newStats() *vocab.Stats {
	return &vocab.Stats{UpstreamCounters: upstream.NewCounters(),
		ReplicaCounters: &vocab.ReplicaCounters{Disconnects: vocab.NewCounts(vocab.DisconnectReasons)},
		ClientCounters:  &vocab.ClientCounters{AuthFailures: vocab.NewCounts(security.AuthFailureReasons())}}
}

// New opens the data dir, recovers it and returns a proxy ready to Run. It
// takes an exclusive lock on the data dir.
func New(cfg Config, log *slog.Logger) (*Proxy, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rnd [20]byte
	_, _ = rand.Read(rnd[:])
	p := &Proxy{cfg: cfg, log: log, runID: hex.EncodeToString(rnd[:]), started: time.Now(), stats: newStats(),
		pubsub: pubsub.New()}
	sec, err := security.New(cfg.securityOptions(func() { p.srv.DropUnusableUsers() }), log, p.stats.AuthFailures)
	if err != nil {
		return nil, err
	}
	p.sec = sec
	var deliver func(start int64, chunk []byte, busy bool)
	storeOpts := store.Options{DataDir: cfg.DataDir, SegmentSize: cfg.SegmentSize, Fsync: cfg.Fsync, SyncFile: cfg.syncFile,
		TailSize: tailSize(cfg), WriteBehind: max(cfg.IntakeBuffer, 0), Delay: cfg.Delay}
	if !cfg.DisableFanout {
		p.fanout = downstream.NewFanout(p.stats.ReplicaCounters)
		deliver, storeOpts.AfterReset = p.fanout.Deliver, p.fanout.ReleaseAll
	}
	if p.store, err = store.Open(storeOpts, log); err != nil {
		return nil, err
	}
	if p.follower, err = upstream.New(cfg.upOptions(deliver), log, p.stats.UpstreamCounters, p.store, replicaView{p}, sec, p.pubsub); err != nil {
		p.store.Close()
		return nil, err
	}
	p.down = downstream.New(cfg.downOptions(), log, p.stats.ReplicaCounters, p.store, p.follower, p.fanout)
	p.srv = command.New(cfg.cmdOptions(), log, p.stats, sec, p.pubsub, replicaMaker{p.down}, p)
	return p, nil
}

// tailSize is the in-memory tail of the backlog: only TLS replicas read
// from it, so without a TLS listener it would be memory for nothing.
func tailSize(cfg Config) int64 {
	if cfg.TLSListen == "" {
		return 0
	}
	return max(cfg.TailBuffer, 0)
}

// Run serves until ctx is cancelled, then shuts down: it stops the upstream
// link and downstream sessions, syncs the backlog and persists state.
func (p *Proxy) Run(ctx context.Context) error {
	var lns [2]net.Listener
	for i, addr := range []string{p.cfg.Listen, p.cfg.TLSListen} {
		if addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				if l != nil {
					l.Close()
				}
			}
			p.shutdown()
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		lns[i] = ln
	}
	if lns[0] == nil && lns[1] == nil {
		p.shutdown()
		return errors.New("no listener: Listen and TLSListen are both empty")
	}
	if p.cfg.DelayedListen != "" {
		ln, err := net.Listen("tcp", p.cfg.DelayedListen)
		if err != nil {
			for _, l := range lns {
				if l != nil {
					l.Close()
				}
			}
			p.shutdown()
			return fmt.Errorf("listen %s: %w", p.cfg.DelayedListen, err)
		}
		p.delayedLn = ln
	}
	return p.ServeListeners(ctx, lns[0], lns[1])
}

// Serve is Run on an existing plaintext listener.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	return p.ServeListeners(ctx, ln, nil)
}

// ServeListeners is Run on existing listeners: plaintext and TLS (the
// handshake is the proxy's; pass a plain TCP listener), either may be nil.
//
// It runs and joins every goroutine of the daemon: the follower's follow
// and maintain loops, the security file watch, the command server (its
// accept loops join their sessions) and a keyspace scan of a recovered
// snapshot. Shutdown closes the listeners and every session, waits for
// all of them, then closes the store (persist, backlog, lock).
func (p *Proxy) ServeListeners(ctx context.Context, ln, tlsLn net.Listener) error {
	if ln == nil && tlsLn == nil {
		p.shutdown()
		return fmt.Errorf("no listener")
	}
	if tlsLn != nil && p.sec.Server == nil {
		tlsLn.Close()
		p.shutdown()
		return fmt.Errorf("a TLS listener needs --tls-listen with its certificate")
	}
	p.srv.Attach(ln, tlsLn, p.delayedLn) // before any goroutine reads them
	p.log.Info("replproxy started", "listen", addrText(ln), "tls_listen", addrText(tlsLn), "upstream", p.follower.UpstreamAddr(),
		"upstream_tls", p.cfg.UpstreamTLS, "data_dir", p.cfg.DataDir, "backlog_size", p.cfg.BacklogSize, "fsync", p.cfg.Fsync.String())
	p.follower.WarnConfig()
	p.srv.WarnUnprotected()
	var wg sync.WaitGroup
	wg.Go(func() { p.follower.Follow(ctx) })
	wg.Go(func() { p.follower.Maintain(ctx) })
	wg.Go(func() { p.sec.Watch(ctx) })
	wg.Go(func() { p.srv.Serve(ctx) })
	if snap := p.position().Snap; snap != nil && snap.Keyspace == nil {
		wg.Go(func() { p.store.Keyspace.Scan(ctx, p.store.SnapDir, snap, p.log) })
	}
	wg.Wait() // until ctx ends: the server closes its listeners and sessions

	return p.shutdown()
}

// Addr is the plaintext listening address once Serve has started (nil
// without one).
func (p *Proxy) Addr() net.Addr {
	a, _, _ := p.srv.Addrs()
	return a
}

// SetDelayedListener serves delayed replicas on ln (for callers of Serve
// that open their own listeners); before Serve.
func (p *Proxy) SetDelayedListener(ln net.Listener) { p.delayedLn = ln }

// DelayedAddr is the delayed listener's address (nil without one).
func (p *Proxy) DelayedAddr() net.Addr {
	_, _, a := p.srv.Addrs()
	return a
}

// TLSAddr is the TLS listening address once Serve has started (nil
// without one).
func (p *Proxy) TLSAddr() net.Addr {
	_, a, _ := p.srv.Addrs()
	return a
}

// Reload re-reads the certificate and users files (SIGHUP). A file that
// does not load keeps its previous version; the error says which.
func (p *Proxy) Reload() error { return p.sec.Reload(true) }

// MetricsTLSConfig serves the metrics listener over HTTPS with the live
// --metrics-tls-* certificate; nil when none is configured.
func (p *Proxy) MetricsTLSConfig() *tls.Config {
	if p.sec.Metrics == nil {
		return nil
	}
	return p.sec.Metrics.ServerConfig(tlsconf.AuthNo)
}

// GuardStatus reports the empty-origin guard.
func (p *Proxy) GuardStatus() vocab.GuardStatus { return p.follower.GuardStatus() }

// GuardText is REPLPROXY GUARD STATUS's reply.
func (p *Proxy) GuardText() string { return command.GuardText(p.GuardStatus()) }

// Authenticate checks a credential as AUTH does (counted when refused),
// for endpoints outside the Redis port.
func (p *Proxy) Authenticate(user, pass, addr string) bool {
	users := p.sec.Users.Load()
	if user == acl.DefaultUser && users.DefaultOpen() {
		return true
	}
	if fail := users.Check(user, []byte(pass)); fail != "" {
		p.sec.AuthFailed(string(fail), addr, nil)
		return false
	}
	return true
}

// GuardAccept installs the history the guard holds.
func (p *Proxy) GuardAccept() error { return p.follower.AcceptHeld() }

// ReloadStatus reports the watched files: certificates and users.
func (p *Proxy) ReloadStatus() []security.ReloadStatus { return p.sec.Status() }

func addrText(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

func (p *Proxy) shutdown() error {
	end := p.store.Backlog.End()
	if err := p.follower.Persist(); err != nil {
		p.log.Warn("full-sync backoff state not persisted; the next start may count a request cut that was not", "err", err)
	}
	err := p.store.Close()
	if err != nil {
		p.log.Error("shutdown", "err", err)
	} else {
		p.log.Info("replproxy stopped", "offset", end)
	}
	return err
}

func (p *Proxy) position() store.Position { return p.store.Position() }

// replicaView is the upstream side's view of the replicas: the downstream's
// replicas and the server's listening ports. It reads p's components when
// called, once New has built them all.
type replicaView struct{ p *Proxy }

func (v replicaView) Port() int          { return v.p.srv.Port() }
func (v replicaView) SourcePorts() []int { return v.p.srv.SourcePorts() }
func (v replicaView) CloseReplicas(reason vocab.DisconnectReason) int {
	return v.p.down.CloseReplicas(reason)
}
func (v replicaView) DropTrimmedReplicas() { v.p.down.DropTrimmedReplicas() }
func (v replicaView) NthAck(n int) int64   { return v.p.down.NthAck(n) }
func (v replicaView) RefreshCandidates(avoid string, refused func(string) bool) []vocab.Candidate {
	return v.p.down.RefreshCandidates(avoid, refused)
}

// RedisVersion is the redis_version tools see: the upstream's, as its last
// snapshot recorded it.
func (p *Proxy) RedisVersion() string { return p.store.UpstreamVersion() }

// MoveUpstream is REPLICAOF host:port: it reports false when addr is the
// upstream already.
func (p *Proxy) MoveUpstream(addr string) bool { return p.follower.MoveUpstream(addr) }

// replicaMaker gives the command surface the downstream's replicas.
type replicaMaker struct{ d *downstream.Downstream }

func (m replicaMaker) NewReplica(l handoff.Link, cmd string, args [][]byte) (command.Replica, error) {
	r, err := m.d.NewReplica(l, cmd, args)
	if r == nil {
		return nil, err // no typed nil in the interface
	}
	return r, err
}
