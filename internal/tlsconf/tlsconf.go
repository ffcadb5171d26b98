// Package tlsconf builds TLS configurations from certificate files and
// re-reads them when they change: a new connection gets the material on
// disk at that moment, established connections keep theirs. A rotation to
// files that do not load (unreadable, a key that does not match its
// certificate, a CA file without certificates) keeps the previous material
// and is reported, never half applied.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Files names the PEM files of one TLS role. Cert and Key go together;
// CA may be alone (a client that only verifies its server).
type Files struct {
	Cert, Key, CA string
}

// Empty reports whether no file is named.
func (f Files) Empty() bool { return f.Cert == "" && f.Key == "" && f.CA == "" }

// Check reports a half-named pair.
func (f Files) Check(role string) error {
	if (f.Cert == "") != (f.Key == "") {
		return fmt.Errorf("%s: a certificate file and a key file go together; got only one", role)
	}
	return nil
}

// material is one loaded generation of the files.
type material struct {
	cert     *tls.Certificate // nil when no pair is named
	leaf     *x509.Certificate
	pool     *x509.CertPool // nil when no CA file: the system roots
	stamp    string         // identity of the files as loaded
	loadedAt time.Time
}

// Source is the live material of one role.
type Source struct {
	Role  string
	files Files
	cur   atomic.Pointer[material]

	mu        sync.Mutex // serialises reloads; status fields below
	reloads   int64
	failures  int64
	lastError string
	failStamp string // files as they were at the last failure: not retried until they change
}

// Load reads the files once; an error here is a start-up error.
func Load(role string, files Files) (*Source, error) {
	if err := files.Check(role); err != nil {
		return nil, err
	}
	s := &Source{Role: role, files: files}
	m, err := load(files)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", role, err)
	}
	s.cur.Store(m)
	return s, nil
}

func load(f Files) (*material, error) {
	stamp := fingerprint(f)
	m := &material{stamp: stamp, loadedAt: time.Now()}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("load %s and %s: %w", f.Cert, f.Key, err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", f.Cert, err)
		}
		pair.Leaf = leaf
		m.cert, m.leaf = &pair, leaf
	}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		m.pool = x509.NewCertPool()
		if !m.pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", f.CA)
		}
	}
	return m, nil
}

// fingerprint identifies the files as they are now: the target of a
// symlink (Kubernetes swaps a ..data link), its inode, size and mtime.
func fingerprint(f Files) string {
	var out string
	for _, p := range []string{f.Cert, f.Key, f.CA} {
		if p == "" {
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			out += p + ":missing;"
			continue
		}
		var ino uint64
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			ino = sys.Ino
		}
		out += fmt.Sprintf("%s:%d:%d:%d;", p, ino, st.Size(), st.ModTime().UnixNano())
	}
	return out
}

// Changed reports whether the files differ from the loaded generation and
// from the last one that failed to load.
func (s *Source) Changed() bool {
	stamp := fingerprint(s.files)
	s.mu.Lock()
	defer s.mu.Unlock()
	return stamp != s.cur.Load().stamp && stamp != s.failStamp
}

// Reload reads the files again. On error the current material stays.
func (s *Source) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := load(s.files)
	if err != nil {
		s.failures++
		s.lastError = err.Error()
		s.failStamp = fingerprint(s.files)
		return fmt.Errorf("%s: %w", s.Role, err)
	}
	s.reloads++
	s.lastError, s.failStamp = "", ""
	s.cur.Store(m)
	return nil
}

// Status is what metrics and INFO show about a role.
type Status struct {
	Role      string
	NotAfter  time.Time // zero without a certificate
	Serial    *big.Int
	Reloads   int64 // successful reloads since start
	Failures  int64
	LastError string
}

// Status reports the live material.
func (s *Source) Status() Status {
	m := s.cur.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Role: s.Role, Reloads: s.reloads, Failures: s.failures, LastError: s.lastError}
	if m.leaf != nil {
		st.NotAfter, st.Serial = m.leaf.NotAfter, m.leaf.SerialNumber
	}
	return st
}

// HasCert reports whether the role has a certificate to present.
func (s *Source) HasCert() bool { return s.cur.Load().cert != nil }

// ClientAuth is how a server treats client certificates, named as Redis'
// tls-auth-clients.
type ClientAuth string

const (
	AuthYes      ClientAuth = "yes"      // required and verified
	AuthOptional ClientAuth = "optional" // verified when presented
	AuthNo       ClientAuth = "no"
)

// ParseClientAuth accepts yes, no and optional.
func ParseClientAuth(v string) (ClientAuth, error) {
	switch ClientAuth(v) {
	case AuthYes, AuthNo, AuthOptional:
		return ClientAuth(v), nil
	}
	return "", fmt.Errorf("tls-auth-clients %q: want yes, no or optional", v)
}

// ServerConfig serves the current material at every handshake. With
// client auth, the CA file is what client certificates must chain to.
func (s *Source) ServerConfig(auth ClientAuth) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := s.cur.Load()
			c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*m.cert}, ClientCAs: m.pool}
			switch auth {
			case AuthYes:
				c.ClientAuth = tls.RequireAndVerifyClientCert
			case AuthOptional:
				c.ClientAuth = tls.VerifyClientCertIfGiven
			default:
				c.ClientAuth = tls.NoClientCert
			}
			return c, nil
		},
	}
}

// ClientOptions shape a client configuration.
type ClientOptions struct {
	ServerName string
	// ChainOnly verifies the server's chain but not its name, as Redis
	// does on its replication links (replicas are dialled by IP).
	ChainOnly          bool
	InsecureSkipVerify bool
}

// ClientConfig is a configuration for one dial with the current material.
func (s *Source) ClientConfig(o ClientOptions) *tls.Config {
	m := s.cur.Load()
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName, RootCAs: m.pool}
	if m.cert != nil {
		c.Certificates = []tls.Certificate{*m.cert}
	}
	switch {
	case o.InsecureSkipVerify:
		c.InsecureSkipVerify = true
	case o.ChainOnly:
		c.InsecureSkipVerify = true // replaced by the chain check below
		c.VerifyConnection = func(cs tls.ConnectionState) error { return verifyChain(cs, m.pool) }
	}
	return c
}

func verifyChain(cs tls.ConnectionState, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the server presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
	if err != nil {
		return fmt.Errorf("tls: verify the server's chain: %w", err)
	}
	return nil
}
