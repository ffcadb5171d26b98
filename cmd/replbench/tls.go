package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"time"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/internal/testcert"
)

// benchTLS is the TLS material of a --tls run: one CA and one certificate
// every party presents, as a shared cert-manager Secret would be.
type benchTLS struct {
	ca     *testcert.CA
	pair   testcert.Pair
	client *tls.Config
}

func newBenchTLS(dir string) (*benchTLS, error) {
	ca, err := testcert.NewCA(dir, "bench")
	if err != nil {
		return nil, err
	}
	pair, err := ca.Issue(dir, "bench", "replbench")
	if err != nil {
		return nil, err
	}
	kp, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &benchTLS{ca: ca, pair: pair,
		client: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{kp}, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}, nil
}

// redis is the redistest configuration of a TLS-only server.
func (b *benchTLS) redis() *redistest.TLS {
	if b == nil {
		return nil
	}
	return &redistest.TLS{CertFile: b.pair.CertFile, KeyFile: b.pair.KeyFile, CAFile: b.ca.CertFile, Client: b.client}
}

// proxyArgs replace --listen with a TLS listener and dial the upstream
// over TLS, with client certificates required on both sides.
func (b *benchTLS) proxyArgs(addr string) []string {
	return []string{"--listen", "", "--tls-listen", addr, "--tls-cert-file", b.pair.CertFile, "--tls-key-file", b.pair.KeyFile,
		"--tls-ca-cert-file", b.ca.CertFile, "--upstream-tls", "--upstream-tls-ca-cert-file", b.ca.CertFile,
		"--upstream-tls-cert-file", b.pair.CertFile, "--upstream-tls-key-file", b.pair.KeyFile}
}

// serverConfig is for the synthetic servers of the ceiling scenario.
func (b *benchTLS) serverConfig() *tls.Config {
	kp, err := tls.LoadX509KeyPair(b.pair.CertFile, b.pair.KeyFile)
	if err != nil {
		panic(fmt.Sprintf("replbench: the certificate just written does not load: %v", err))
	}
	return &tls.Config{Certificates: []tls.Certificate{kp}, MinVersion: tls.VersionTLS12}
}

// dial connects to addr, over TLS in a --tls run.
func (b *benchTLS) dial(addr string, timeout time.Duration) (net.Conn, error) {
	if b == nil {
		return net.DialTimeout("tcp", addr, timeout)
	}
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", addr, b.client)
}

// listener wraps ln for TLS in a --tls run.
func (b *benchTLS) listener(ln net.Listener) net.Listener {
	if b == nil {
		return ln
	}
	return tls.NewListener(ln, b.serverConfig())
}

// clientConfig is for go-redis clients; nil without --tls.
func (b *benchTLS) clientConfig() *tls.Config {
	if b == nil {
		return nil
	}
	return b.client.Clone()
}
