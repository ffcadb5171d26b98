package security

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/internal/acl"
	"github.com/replproxy/replproxy/internal/tlsconf"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// TLS roles, as metrics label certificates and reloads.
const (
	RoleServer   = "server"   // the downstream TLS listener
	RoleUpstream = "upstream" // the client side towards the upstream
	RoleMetrics  = "metrics"  // the HTTPS metrics listener
	RoleUsers    = "users"    // the users file (reloads only)
)

// Auth failure reasons, beyond acl.Failures: TLS handshakes refused.
const (
	AuthTLSNoClientCert  = "tls_no_client_cert"  // client auth required, none presented
	AuthTLSBadClientCert = "tls_bad_client_cert" // presented, does not verify
	AuthTLSPlaintext     = "tls_plaintext"       // a plaintext client on the TLS port
	AuthTLSOnPlainPort   = "tls_on_plaintext_port"
	AuthTLSHandshake     = "tls_handshake" // any other handshake failure (timeout, protocol)
)

// AuthFailureReasons lists every reason, for metrics.
func AuthFailureReasons() []string {
	out := []string{AuthTLSNoClientCert, AuthTLSBadClientCert, AuthTLSPlaintext, AuthTLSOnPlainPort, AuthTLSHandshake}
	for _, f := range acl.Failures {
		out = append(out, string(f))
	}
	return out
}

// tlsHandshakeTimeout bounds a downstream handshake: a client that opens
// the TLS port and never completes a handshake is closed, not kept.
const TLSHandshakeTimeout = 10 * time.Second

// Service owns what authenticates connections: certificates and the users
// file, reloaded on SIGHUP (Reload) and when the files change (watch).
// Sessions read the users through an atomic pointer; reloads are
// serialised by mu, which guards no I/O that sessions wait on.
type Service struct {
	cfg Options
	log *slog.Logger

	Server   *tlsconf.Source // nil without --tls-listen
	Upstream *tlsconf.Source // nil without --upstream-tls
	Metrics  *tlsconf.Source // nil without --metrics-tls-cert-file
	Auth     tlsconf.ClientAuth

	Users      atomic.Pointer[acl.Users]
	mu         sync.Mutex
	usersStamp string
	usersFail  string
	usersLoads int64
	usersFails int64
	usersError string

	failures vocab.Counts[string]
	limiter  logLimiter
}

// Options are what security reads of the configuration.
type Options struct {
	TLSListen, TLSAuthClients, TLSCertFile, TLSKeyFile, TLSCAFile string

	UpstreamTLS                                                                       bool
	UpstreamTLSCertFile, UpstreamTLSKeyFile, UpstreamTLSCAFile, UpstreamTLSServerName string
	UpstreamTLSInsecure                                                               bool

	MetricsTLSCertFile, MetricsTLSKeyFile string

	UsersFile, RequirePass string
	TLSAuthUserFromCN      bool
	// ReloadInterval is how often watch looks at the files.
	ReloadInterval time.Duration
	// UsersChanged runs after a reload changed the users (to close the
	// sessions of a user removed or disabled); nil: nothing.
	UsersChanged func()
}

func New(cfg Options, log *slog.Logger, failures vocab.Counts[string]) (*Service, error) {
	s := &Service{cfg: cfg, log: log, failures: failures}
	var errs []error
	var err error
	if cfg.TLSListen != "" { // validate has checked the options go together
		s.Auth, _ = tlsconf.ParseClientAuth(cfg.TLSAuthClients)
		if s.Server, err = tlsconf.Load(RoleServer, tlsconf.Files{Cert: cfg.TLSCertFile, Key: cfg.TLSKeyFile, CA: cfg.TLSCAFile}); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.UpstreamTLS {
		f := tlsconf.Files{Cert: cfg.UpstreamTLSCertFile, Key: cfg.UpstreamTLSKeyFile, CA: cfg.UpstreamTLSCAFile}
		if s.Upstream, err = tlsconf.Load(RoleUpstream, f); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.MetricsTLSCertFile != "" {
		f := tlsconf.Files{Cert: cfg.MetricsTLSCertFile, Key: cfg.MetricsTLSKeyFile}
		if s.Metrics, err = tlsconf.Load(RoleMetrics, f); err != nil {
			errs = append(errs, err)
		}
	}
	users, err := s.loadUsers()
	if err != nil {
		errs = append(errs, err)
	} else {
		s.Users.Store(users)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// loadUsers reads the users file (none: only the default user) and adds
// the default user as Redis does.
func (s *Service) loadUsers() (*acl.Users, error) {
	if s.cfg.UsersFile == "" {
		return (*acl.Users)(nil).WithDefault(s.cfg.RequirePass), nil
	}
	s.usersStamp = fileStamp(s.cfg.UsersFile)
	us, err := acl.ParseFile(s.cfg.UsersFile)
	if err != nil {
		return nil, fmt.Errorf("users file: %w", err)
	}
	if us.Has(acl.DefaultUser) && s.cfg.RequirePass != "" {
		return nil, fmt.Errorf("users file %s declares the default user and --requirepass is set: use one", s.cfg.UsersFile)
	}
	for _, name := range us.Names() {
		if u := us.Lookup(name); len(u.Ignored) > 0 {
			s.log.Info("users file: key, channel and command rules are not enforced (replproxy serves no data); the user is on or off as declared",
				"user", name, "rules", strings.Join(u.Ignored, " "))
		}
	}
	return us.WithDefault(s.cfg.RequirePass), nil
}

func fileStamp(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return "missing"
	}
	return fmt.Sprintf("%d:%d", st.Size(), st.ModTime().UnixNano())
}

// sources lists the certificate roles configured.
func (s *Service) sources() []*tlsconf.Source {
	var out []*tlsconf.Source
	for _, src := range []*tlsconf.Source{s.Server, s.Upstream, s.Metrics} {
		if src != nil {
			out = append(out, src)
		}
	}
	return out
}

// Reload re-reads every file (force) or those that changed. Failures keep
// the previous material and are logged here, once per change of the files.
func (s *Service) Reload(force bool) error {
	var errs []error
	for _, src := range s.sources() {
		if !force && !src.Changed() {
			continue
		}
		if err := src.Reload(); err != nil {
			s.log.Error("certificate reload failed; keeping the previous one", "role", src.Role, "err", err)
			errs = append(errs, err)
			continue
		}
		st := src.Status()
		s.log.Info("certificate reloaded", "role", src.Role, "serial", serialText(st), "not_after", st.NotAfter)
	}
	if err := s.reloadUsers(force); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (s *Service) reloadUsers(force bool) error {
	if s.cfg.UsersFile == "" {
		return nil
	}
	s.mu.Lock()
	stamp := fileStamp(s.cfg.UsersFile)
	if !force && (stamp == s.usersStamp || stamp == s.usersFail) {
		s.mu.Unlock()
		return nil
	}
	us, err := s.loadUsers()
	if err != nil {
		s.usersFails++
		s.usersError, s.usersFail = err.Error(), stamp
		s.mu.Unlock()
		s.log.Error("users reload failed; keeping the previous users", "err", err)
		return err
	}
	s.usersLoads++
	s.usersError, s.usersFail = "", ""
	s.Users.Store(us)
	s.mu.Unlock()
	s.log.Info("users reloaded", "users", len(us.Names()))
	if s.cfg.UsersChanged != nil {
		s.cfg.UsersChanged()
	}
	return nil
}

// Watch polls the files: Kubernetes rotates a mounted Secret by swapping a
// symlink, which no inotify watch on the old file would see.
func (s *Service) Watch(ctx context.Context) {
	if len(s.sources()) == 0 && s.cfg.UsersFile == "" {
		return
	}
	t := time.NewTicker(s.cfg.ReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = s.Reload(false) // logged inside
		}
	}
}

// ReloadStatus is one watched file set, for metrics.
type ReloadStatus struct {
	Role      string
	Reloads   int64
	Failures  int64
	LastError string
	NotAfter  time.Time // certificates only; zero otherwise
}

func (s *Service) Status() []ReloadStatus {
	var out []ReloadStatus
	for _, src := range s.sources() {
		st := src.Status()
		out = append(out, ReloadStatus{Role: st.Role, Reloads: st.Reloads, Failures: st.Failures, LastError: st.LastError, NotAfter: st.NotAfter})
	}
	if s.cfg.UsersFile != "" {
		s.mu.Lock()
		out = append(out, ReloadStatus{Role: RoleUsers, Reloads: s.usersLoads, Failures: s.usersFails, LastError: s.usersError})
		s.mu.Unlock()
	}
	return out
}

func serialText(st tlsconf.Status) string {
	if st.Serial == nil {
		return ""
	}
	return st.Serial.Text(16)
}

// AuthFailed counts a refused authentication and logs it, at most once a
// second per reason (a brute force must not flood the log).
func (s *Service) AuthFailed(reason, addr string, err error) {
	s.failures.Add(reason, AuthTLSHandshake)
	if n, ok := s.limiter.allow(reason); ok {
		args := []any{"reason", reason, "addr", addr, "suppressed", n}
		if err != nil {
			args = append(args, "err", err)
		}
		s.log.Warn("authentication failed", args...)
	}
}

// ClassifyHandshake names why a downstream TLS handshake failed.
func ClassifyHandshake(err error) string {
	var rh tls.RecordHeaderError
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	switch {
	case errors.As(err, &rh):
		return AuthTLSPlaintext
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return AuthTLSNoClientCert
	case errors.As(err, &cv), errors.As(err, &ua), strings.Contains(err.Error(), "bad certificate"):
		return AuthTLSBadClientCert
	}
	return AuthTLSHandshake
}

// UserFromCert is the user a verified client certificate maps to with
// --tls-auth-user-from-cn: its subject CN, when that user exists and is on.
func (s *Service) UserFromCert(tc *tls.Conn) string {
	if !s.cfg.TLSAuthUserFromCN {
		return ""
	}
	cs := tc.ConnectionState()
	if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return ""
	}
	cn := cs.PeerCertificates[0].Subject.CommonName
	if s.Users.Load().Usable(cn) {
		return cn
	}
	return ""
}

// ClientConfig is the client configuration for one dial of the upstream
// (name verified) or of a replica (chain only, as Redis does; replicas are
// dialled by the IP they connected from).
func (s *Service) ClientConfig(addr string, toReplica bool) *tls.Config {
	src := s.Upstream
	if src == nil {
		src = s.Server // a TLS replica refreshed without --upstream-tls: the listener's material
	}
	o := tlsconf.ClientOptions{ServerName: s.cfg.UpstreamTLSServerName, InsecureSkipVerify: s.cfg.UpstreamTLSInsecure}
	if o.ServerName == "" {
		o.ServerName, _, _ = net.SplitHostPort(addr)
	}
	if toReplica {
		o.ChainOnly, o.ServerName = !o.InsecureSkipVerify, ""
	}
	return src.ClientConfig(o)
}

// DialTLS connects and, with tlsCfg, runs a client handshake within the
// same timeout.
func DialTLS(ctx context.Context, addr string, timeout time.Duration, tlsCfg *tls.Config) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout, KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil || tlsCfg == nil {
		return conn, err
	}
	tc := tls.Client(conn, tlsCfg)
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	return tc, nil
}

// logLimiter lets one message per key through each second and counts the
// ones it held back.
type logLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

func (l *logLimiter) allow(key string) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last, l.held = map[string]time.Time{}, map[string]int{}
	}
	now := time.Now()
	if now.Sub(l.last[key]) < time.Second {
		l.held[key]++
		return 0, false
	}
	n := l.held[key]
	l.last[key], l.held[key] = now, 0
	return n, true
}
