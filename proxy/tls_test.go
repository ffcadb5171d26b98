package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/loopback"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/internal/testcert"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/upstream"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// tlsRig is a CA with certificates for every party, and a second CA that
// nobody trusts.
type tlsRig struct {
	dir                  string
	ca, other            *testcert.CA
	origin, proxy, repl  testcert.Pair
	client, foreign      testcert.Pair
	cnUser               testcert.Pair // CN "cnuser"
	originTLS, replicaTL *redistest.TLS
}

func newTLSRig(t *testing.T) *tlsRig {
	t.Helper()
	r := &tlsRig{dir: t.TempDir()}
	var err error
	must := func(e error) {
		if e != nil {
			t.Fatal(e)
		}
	}
	r.ca, err = testcert.NewCA(r.dir, "main")
	must(err)
	r.other, err = testcert.NewCA(r.dir, "other")
	must(err)
	for _, x := range []struct {
		p      *testcert.Pair
		ca     *testcert.CA
		name   string
		cn     string
		harnes bool
	}{{&r.origin, r.ca, "origin", "origin", false}, {&r.proxy, r.ca, "proxy", "replproxy", false},
		{&r.repl, r.ca, "replica", "replica", false}, {&r.client, r.ca, "client", "client", false},
		{&r.foreign, r.other, "foreign", "foreign", false}, {&r.cnUser, r.ca, "cnuser", "cnuser", false}} {
		*x.p, err = x.ca.Issue(r.dir, x.name, x.cn)
		must(err)
	}
	r.originTLS = &redistest.TLS{CertFile: r.origin.CertFile, KeyFile: r.origin.KeyFile, CAFile: r.ca.CertFile, Client: r.clientConfig(t, r.client)}
	r.replicaTL = &redistest.TLS{CertFile: r.repl.CertFile, KeyFile: r.repl.KeyFile, CAFile: r.ca.CertFile, Client: r.clientConfig(t, r.client)}
	return r
}

// clientConfig presents pair (none when its files are empty) and trusts
// the main CA.
func (r *tlsRig) clientConfig(t *testing.T, pair testcert.Pair) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(r.ca.Cert)
	c := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if pair.CertFile != "" {
		kp, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		// Always present it, even when the server names other CAs (Go's
		// client would otherwise send none).
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }
	}
	return c
}

// proxyTLSConfig points a Config at the rig: upstream TLS with the proxy's
// certificate, a TLS listener requiring client certificates.
func (r *tlsRig) proxyTLSConfig(c *Config) {
	c.UpstreamTLS = true
	c.UpstreamTLSCAFile, c.UpstreamTLSCertFile, c.UpstreamTLSKeyFile = r.ca.CertFile, r.proxy.CertFile, r.proxy.KeyFile
	c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = r.proxy.CertFile, r.proxy.KeyFile, r.ca.CertFile
	c.TLSListen = "127.0.0.1:0"
}

func (r *tlsRig) proxyTLSArgs() []string {
	return []string{"--upstream-tls", "--upstream-tls-ca-cert-file", r.ca.CertFile,
		"--upstream-tls-cert-file", r.proxy.CertFile, "--upstream-tls-key-file", r.proxy.KeyFile,
		"--tls-cert-file", r.proxy.CertFile, "--tls-key-file", r.proxy.KeyFile, "--tls-ca-cert-file", r.ca.CertFile,
		"--tls-auth-clients", "yes"}
}

func startTLSReplicas(t *testing.T, r *tlsRig, n int, master string, extra ...string) []*redistest.Server {
	t.Helper()
	host, port, _ := net.SplitHostPort(master)
	out := make([]*redistest.Server, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			out[i] = redistest.StartTLST(t, fmt.Sprintf("tlsreplica%d", i), r.replicaTL, append([]string{"--replicaof", host, port}, extra...)...)
		})
	}
	wg.Wait()
	return out
}

// startTLSProxy runs an in-process proxy with the rig's TLS settings and
// a plaintext listener beside the TLS one.
func startTLSProxy(t *testing.T, r *tlsRig, upstream string, mod ...func(*Config)) *testProxy {
	t.Helper()
	return startProxy(t, upstream, t.TempDir(), append([]func(*Config){r.proxyTLSConfig}, mod...)...)
}

// TestTLSEndToEnd: an origin on a TLS port only that requires client
// certificates, the replproxy binary with upstream TLS and a TLS listener,
// three stock replicas with tls-replication yes: all converge under a mixed
// load; a replica restart resumes with a partial resync; a SIGKILL and
// restart of the proxy costs no full sync anywhere; a certificate rotated
// on disk and signalled with SIGHUP is presented to new connections while
// the replicas keep streaming; /metrics is served over HTTPS with the
// certificate's expiry.
func TestTLSEndToEnd(t *testing.T) {
	t.Parallel()
	r := newTLSRig(t)
	origin := redistest.StartTLST(t, "origin", r.originTLS, "--repl-backlog-size", "64mb")
	populate(t, origin)
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	mport, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	// The served certificate lives behind a symlink, as a mounted Secret.
	live := filepath.Join(t.TempDir(), "live")
	must(t, os.MkdirAll(live, 0o755))
	must(t, os.Symlink(r.proxy.CertFile, filepath.Join(live, "tls.crt")))
	must(t, os.Symlink(r.proxy.KeyFile, filepath.Join(live, "tls.key")))
	pp := &proxyProcess{t: t, bin: redistest.ProxyBinary(t), addr: addr, dataDir: t.TempDir(), logPath: filepath.Join(t.TempDir(), "proxy.log")}
	pp.args = append([]string{"--upstream", origin.Addr(), "--listen", "", "--tls-listen", addr, "--data-dir", pp.dataDir,
		"--log-format", "text", "--metrics-listen", "127.0.0.1:" + strconv.Itoa(mport), "--reload-interval", "1h",
		"--metrics-tls-cert-file", filepath.Join(live, "tls.crt"), "--metrics-tls-key-file", filepath.Join(live, "tls.key")},
		r.proxyTLSArgs()...)
	for i, a := range pp.args { // the listener's certificate through the symlinks too
		if a == "--tls-cert-file" {
			pp.args[i+1] = filepath.Join(live, "tls.crt")
		}
		if a == "--tls-key-file" {
			pp.args[i+1] = filepath.Join(live, "tls.key")
		}
	}
	pp.restart()
	pcli := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, TLSConfig: r.clientConfig(t, r.client)})
	defer pcli.Close()
	proxyUp := func(replicas int) func() bool {
		return func() bool {
			info, err := pcli.Info(context.Background(), "replication").Result()
			return err == nil && strings.Contains(info, "master_link_status:up") &&
				strings.Count(info, "state=online") == replicas
		}
	}
	replicas := startTLSReplicas(t, r, 3, addr)
	redistest.Eventually(t, 60*time.Second, "proxy linked, replicas online", proxyUp(3))
	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 11)
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	waitOffsetGrows(t, origin, 1<<20)

	// A replica restart resumes with a partial resync.
	rep := replicas[0]
	_ = rep.Client().Do(context.Background(), "SHUTDOWN", "SAVE").Err()
	redistest.Eventually(t, 10*time.Second, "replica exits", rep.Exited)
	waitOffsetGrows(t, origin, 1<<20)
	logBefore, _ := os.ReadFile(rep.Log)
	must(t, rep.Restart())
	redistest.Eventually(t, 30*time.Second, "restarted replica online", func() bool {
		return strings.Contains(infoText(rep), "master_link_status:up")
	})
	logAfter, _ := os.ReadFile(rep.Log)
	if after := strings.TrimPrefix(string(logAfter), string(logBefore)); !strings.Contains(after, "Successful partial resynchronization with master") {
		t.Fatalf("the restarted TLS replica did not partially resync:\n%s", rep.LogTail(20))
	}

	// SIGKILL and restart: every link resumes partially.
	fullsBefore := replicaFullSyncs(replicas)
	pp.Kill()
	waitOffsetGrows(t, origin, 256<<10)
	pp.restart()
	redistest.Eventually(t, 60*time.Second, "proxy back, replicas online", proxyUp(3))

	// Rotation: new files behind the same names, picked up on SIGHUP.
	rotated, err := r.ca.Issue(t.TempDir(), "proxy2", "replproxy")
	must(t, err)
	swapLink(t, filepath.Join(live, "tls.crt"), rotated.CertFile)
	swapLink(t, filepath.Join(live, "tls.key"), rotated.KeyFile)
	must(t, pp.Notify(syscall.SIGHUP))
	var served string
	if err := redistest.WaitFor(10*time.Second, func() bool {
		s, err := servedSerial(addr, r.clientConfig(t, r.client))
		served = fmt.Sprint(s, " ", err)
		return err == nil && s.Cmp(rotated.Serial) == 0
	}); err != nil {
		t.Fatalf("new connections do not get the rotated certificate %v: %s", rotated.Serial, served)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: r.clientConfig(t, testcert.Pair{})}}
	var body string
	redistest.Eventually(t, 10*time.Second, "metrics over HTTPS with the rotated certificate's expiry", func() bool {
		resp, err := hc.Get("https://127.0.0.1:" + strconv.Itoa(mport) + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.TLS != nil && resp.TLS.PeerCertificates[0].SerialNumber.Cmp(rotated.Serial) == 0
	})
	want := fmt.Sprintf(`replproxy_tls_certificate_expiry_timestamp_seconds{role="server"} %s`, strconv.FormatFloat(float64(rotated.NotAfter.Unix()), 'e', -1, 64))
	if !strings.Contains(body, want) {
		t.Fatalf("metrics lack %q:\n%s", want, grepLines(body, "tls_certificate_expiry"))
	}
	waitOffsetGrows(t, origin, 256<<10)
	stopLoad()
	waitConverged(t, origin, replicas, 60*time.Second)
	if got := replicaFullSyncs(replicas); fmt.Sprint(got) != fmt.Sprint(fullsBefore) {
		t.Fatalf("full syncs after the SIGKILL and the rotation: %v, before %v", got, fullsBefore)
	}
	if got := origin.InfoInt("stats", "sync_full"); got != 1 {
		t.Fatalf("origin sync_full %d: the proxy's restart cost a full sync", got)
	}
	if n := origin.InfoInt("stats", "sync_partial_ok"); n < 1 {
		t.Fatalf("origin sync_partial_ok %d after the proxy restart", n)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func infoText(s *redistest.Server) string {
	txt, _ := s.Client().Info(context.Background(), "replication").Result()
	return txt
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// replicaFullSyncs counts the full syncs each replica logged.
func replicaFullSyncs(rs []*redistest.Server) []int {
	out := make([]int, len(rs))
	for i, r := range rs {
		b, _ := os.ReadFile(r.Log)
		out[i] = strings.Count(string(b), "MASTER <-> REPLICA sync: Finished with success")
	}
	return out
}

// swapLink points link at target atomically, as Kubernetes swaps ..data.
func swapLink(t *testing.T, link, target string) {
	t.Helper()
	tmp := link + ".new"
	_ = os.Remove(tmp)
	must(t, os.Symlink(target, tmp))
	must(t, os.Rename(tmp, link))
}

// servedSerial is the serial of the certificate a new TLS connection gets.
func servedSerial(addr string, cfg *tls.Config) (*big.Int, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// TestTLSRefusals: a client without a certificate, one with a certificate
// from another CA (a real replica), a plaintext replica on the TLS port and
// a TLS client on the plaintext port get no byte of data, none hangs, and
// each is counted; a certificate whose CN names a user authenticates as it.
func TestTLSRefusals(t *testing.T) {
	t.Parallel()
	r := newTLSRig(t)
	origin := redistest.StartTLST(t, "origin", r.originTLS)
	populate(t, origin)
	users := filepath.Join(t.TempDir(), "users.acl")
	must(t, os.WriteFile(users, []byte("user cnuser on >unused-password\n"), 0o600))
	p := startTLSProxy(t, r, origin.Addr(), func(c *Config) {
		c.RequirePass, c.UsersFile, c.TLSAuthUserFromCN = "default-secret", users, true
	})
	plainAddr, tlsAddr := p.addr, p.tlsAddr
	redistest.Eventually(t, 30*time.Second, "link up", func() bool { return p.Status().LinkUp })

	// Go clients: without a certificate, and trusting us but presenting a
	// foreign one. Neither may read a byte of application data.
	for _, tc := range []struct {
		name   string
		pair   testcert.Pair
		reason string
	}{{"no certificate", testcert.Pair{}, security.AuthTLSNoClientCert}, {"foreign CA", r.foreign, security.AuthTLSBadClientCert}} {
		before := p.Stats().AuthFailures.Load(tc.reason)
		n, err := tlsSyncAttempt(tlsAddr, r.clientConfig(t, tc.pair))
		if n > 0 || err == nil {
			t.Fatalf("%s: read %d bytes (err %v)", tc.name, n, err)
		}
		if err := redistest.WaitFor(5*time.Second, func() bool { return p.Stats().AuthFailures.Load(tc.reason) == before+1 }); err != nil {
			var all []string
			for _, r := range security.AuthFailureReasons() {
				all = append(all, fmt.Sprintf("%s=%d", r, p.Stats().AuthFailures.Load(r)))
			}
			t.Fatalf("%s: not counted as %s once: %s", tc.name, tc.reason, strings.Join(all, " "))
		}
	}

	// Real replicas: one with a foreign certificate (it trusts our CA), one
	// speaking plaintext to the TLS port.
	host, port, _ := net.SplitHostPort(tlsAddr)
	foreignCli := r.clientConfig(t, r.client)
	foreignCli.RootCAs.AddCert(r.other.Cert) // its server certificate is the foreign one
	foreign := redistest.StartTLST(t, "foreign", &redistest.TLS{CertFile: r.foreign.CertFile, KeyFile: r.foreign.KeyFile, CAFile: r.ca.CertFile,
		Client: foreignCli}, "--replicaof", host, port, "--masterauth", "default-secret")
	plain := redistest.StartT(t, "plain", "--replicaof", host, port, "--masterauth", "default-secret")
	redistest.Eventually(t, 20*time.Second, "both refused, more than once", func() bool {
		return p.Stats().AuthFailures.Load(security.AuthTLSBadClientCert) >= 3 && p.Stats().AuthFailures.Load(security.AuthTLSPlaintext) >= 2
	})
	for _, s := range []*redistest.Server{foreign, plain} {
		if n := s.InfoInt("keyspace", "db0"); s.Client().DBSize(context.Background()).Val() != 0 || n > 0 {
			t.Fatalf("refused replica %d holds data", s.Port)
		}
		if !strings.Contains(infoText(s), "master_link_status:down") {
			t.Fatalf("refused replica %d is linked", s.Port)
		}
	}
	redistest.Eventually(t, 5*time.Second, "refused connections do not linger", func() bool {
		st := p.Status()
		return st.Clients == 0 && len(st.Replicas) == 0
	})

	// A TLS ClientHello on the plaintext port is closed at once.
	before := p.Stats().AuthFailures.Load(security.AuthTLSOnPlainPort)
	c, err := net.DialTimeout("tcp", plainAddr, time.Second)
	must(t, err)
	tc := tls.Client(c, r.clientConfig(t, r.client))
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	err = tc.Handshake()
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("TLS on the plaintext port: handshake %v (want a clean close, not a hang)", err)
	}
	tc.Close()
	redistest.Eventually(t, 5*time.Second, "TLS on plaintext counted", func() bool { return p.Stats().AuthFailures.Load(security.AuthTLSOnPlainPort) == before+1 })

	// The CN maps to an existing user: no AUTH needed. Another CN is not
	// authenticated by its certificate.
	for _, x := range []struct {
		pair testcert.Pair
		want string
	}{{r.cnUser, "# Replication"}, {r.client, "NOAUTH"}} {
		cli := redis.NewClient(&redis.Options{Addr: tlsAddr, MaxRetries: -1, TLSConfig: r.clientConfig(t, x.pair)})
		txt, err := cli.Info(context.Background(), "replication").Result()
		cli.Close()
		if got := txt + fmt.Sprint(err); !strings.Contains(got, x.want) {
			t.Fatalf("certificate CN %s: INFO gave %q, want %q", x.pair.CertFile, got, x.want)
		}
	}
}

// tlsSyncAttempt handshakes, sends SYNC and reads: the bytes it got.
func tlsSyncAttempt(addr string, cfg *tls.Config) (int, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("SYNC\r\n")); err != nil {
		return 0, err
	}
	b, err := io.ReadAll(c)
	return len(b), err
}

// TestTLSRotationWhileStreaming: the served certificate rotated on disk
// (a symlink swap) is picked up by the watcher while TLS and plaintext
// replicas stream from one proxy:
// none disconnects, a new connection gets the new serial; a rotation to a
// mismatched pair keeps the previous certificate and is reported.
func TestTLSRotationWhileStreaming(t *testing.T) {
	t.Parallel()
	r := newTLSRig(t)
	origin := redistest.StartTLST(t, "origin", r.originTLS)
	populate(t, origin)
	live := t.TempDir()
	crt, key := filepath.Join(live, "tls.crt"), filepath.Join(live, "tls.key")
	must(t, os.Symlink(r.proxy.CertFile, crt))
	must(t, os.Symlink(r.proxy.KeyFile, key))
	p := startTLSProxy(t, r, origin.Addr(), func(c *Config) {
		c.TLSCertFile, c.TLSKeyFile, c.ReloadInterval = crt, key, 100*time.Millisecond
	})
	tlsAddr := p.tlsAddr
	// Plain and TLS replicas mixed on one proxy.
	replicas := append(startTLSReplicas(t, r, 2, tlsAddr), startReplicas(t, 1, p.addr)...)
	waitConverged(t, origin, replicas, 60*time.Second)
	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 5)
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	partialBefore, fullBefore := p.Stats().SyncPartialOK.Load(), p.Stats().SyncFull.Load()

	rotated, err := r.ca.Issue(t.TempDir(), "proxy2", "replproxy")
	must(t, err)
	swapLink(t, key, rotated.KeyFile) // key first: a half rotation must not be applied
	swapLink(t, crt, rotated.CertFile)
	redistest.Eventually(t, 10*time.Second, "the rotated certificate is served", func() bool {
		s, err := servedSerial(tlsAddr, r.clientConfig(t, r.client))
		return err == nil && s.Cmp(rotated.Serial) == 0
	})

	// A mismatched pair: the previous certificate stays, the failure shows.
	wrong, err := r.ca.Issue(t.TempDir(), "proxy3", "replproxy")
	must(t, err)
	swapLink(t, crt, wrong.CertFile) // its key never comes
	redistest.Eventually(t, 10*time.Second, "the failed reload is reported", func() bool {
		for _, st := range p.ReloadStatus() {
			if st.Role == security.RoleServer && st.Failures >= 1 && st.LastError != "" {
				return true
			}
		}
		return false
	})
	if s, err := servedSerial(tlsAddr, r.clientConfig(t, r.client)); err != nil || s.Cmp(rotated.Serial) != 0 {
		t.Fatalf("after a mismatched rotation: serial %v, err %v; want the previous %v", s, err, rotated.Serial)
	}
	if err := p.Reload(); err == nil {
		t.Fatal("Reload of a mismatched pair reported no error")
	}
	waitOffsetGrows(t, origin, 256<<10)
	stopLoad()
	waitConverged(t, origin, replicas, 60*time.Second)
	st := p.Stats()
	if st.SyncPartialOK.Load() != partialBefore || st.SyncFull.Load() != fullBefore {
		t.Fatalf("replicas reconnected during the rotations: partial %d→%d, full %d→%d",
			partialBefore, st.SyncPartialOK.Load(), fullBefore, st.SyncFull.Load())
	}
	for _, reason := range vocab.DisconnectReasons {
		if n := st.Disconnects.Load(reason); n > 0 {
			t.Fatalf("%d replica disconnects (%s) during the rotations", n, reason)
		}
	}
}

// rawCommand sends one command on a fresh connection and returns the raw
// reply line.
func rawCommand(t *testing.T, addr string, args ...string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	must(t, err)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	cmd := fmt.Sprintf("*%d\r\n", len(args))
	for _, a := range args {
		cmd += fmt.Sprintf("$%d\r\n%s\r\n", len(a), a)
	}
	_, err = c.Write([]byte(cmd))
	must(t, err)
	b := make([]byte, 512)
	n, _ := c.Read(b)
	return string(b[:n])
}

// TestUsersFile: a replica with masteruser/masterauth of an on user syncs;
// an off user, a wrong password and an unknown user get Redis' WRONGPASS
// byte for byte; AUTH with one argument checks the default user
// (--requirepass); a reload that turns the user off disconnects its
// replica; no password reaches the log.
func TestUsersFile(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	users := filepath.Join(t.TempDir(), "users.acl")
	hashed := "7d4f3c1d7ed1fa1bc6a3f6d5d7ef4d6f71f0dd2f9b3d2b1b7e1e7e6c5b4a3921" // not the sha256 of anything used here
	must(t, os.WriteFile(users, []byte("user repl on >repl-secret ~* &* +@all\n"+
		"user gone off >gone-secret\n"+
		"user hashed on #"+hashed+"\n"), 0o600))
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) {
		c.UsersFile, c.RequirePass, c.ReloadInterval = users, "default-secret", 100*time.Millisecond
	})
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	replicas := startReplicas(t, 1, p.addr, "--masteruser", "repl", "--masterauth", "repl-secret")
	waitConverged(t, origin, replicas, 30*time.Second)

	const wrongPass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
	for _, tc := range []struct {
		args   []string
		want   string
		reason string
	}{
		{[]string{"AUTH", "gone", "gone-secret"}, wrongPass, "user_disabled"},
		{[]string{"AUTH", "repl", "nope"}, wrongPass, "wrong_password"},
		{[]string{"AUTH", "nobody", "x"}, wrongPass, "unknown_user"},
		{[]string{"AUTH", "hashed", "x"}, wrongPass, "wrong_password"},
		{[]string{"AUTH", "repl-secret"}, wrongPass, "wrong_password"}, // one argument: the default user
		{[]string{"AUTH", "default-secret"}, "+OK\r\n", ""},
		{[]string{"AUTH", "repl", "repl-secret"}, "+OK\r\n", ""},
		{[]string{"HELLO", "2", "AUTH", "repl", "nope"}, wrongPass, "wrong_password"},
		{[]string{"INFO"}, "-NOAUTH Authentication required.\r\n", ""},
	} {
		var before int64
		if tc.reason != "" {
			before = p.Stats().AuthFailures.Load(tc.reason)
		}
		if got := rawCommand(t, p.addr, tc.args...); got != tc.want {
			t.Fatalf("%q: got %q, want %q", tc.args, got, tc.want)
		}
		if tc.reason != "" && p.Stats().AuthFailures.Load(tc.reason) != before+1 {
			t.Fatalf("%q: not counted as %s", tc.args, tc.reason)
		}
	}
	if got := rawCommand(t, p.addr, "HELLO", "2", "AUTH", "repl", "repl-secret"); !strings.HasPrefix(got, "*14\r\n") {
		t.Fatalf("HELLO 2 AUTH repl: %q", got)
	}

	// A reload turns repl off: its replica is disconnected and refused.
	refusedBefore := p.Stats().AuthFailures.Load("user_disabled")
	must(t, os.WriteFile(users+".new", []byte("user repl off >repl-secret\n"), 0o600))
	must(t, os.Rename(users+".new", users))
	redistest.Eventually(t, 10*time.Second, "the replica of a disabled user is dropped and refused", func() bool {
		return p.Stats().Disconnects.Load(vocab.DownUserRevoked) >= 1 && p.Stats().AuthFailures.Load("user_disabled") > refusedBefore
	})
	for _, secret := range []string{"repl-secret", "gone-secret", "default-secret", "nope"} {
		if strings.Contains(p.logBuf.String(), secret) {
			t.Fatalf("the log contains the password %q", secret)
		}
	}
}

// TestUnprotectedWarning: a listener beyond loopback with no password
// warns at start; with a password it does not.
func TestUnprotectedWarning(t *testing.T) {
	t.Parallel()
	for _, pass := range []string{"", "secret"} {
		var buf syncBuffer
		p, err := New(Config{Upstream: "127.0.0.1:1", DataDir: t.TempDir(), RequirePass: pass}, slog.New(slog.NewTextHandler(&buf, nil)))
		must(t, err)
		ln, err := loopback.ListenOn("0.0.0.0") // a free port, retried if taken meanwhile
		must(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Serve(ctx, ln) }()
		redistest.Eventually(t, 5*time.Second, "started", func() bool { return strings.Contains(buf.String(), "replproxy started") })
		cancel()
		must(t, <-done)
		if got := strings.Contains(buf.String(), "no authentication"); got != (pass == "") {
			t.Fatalf("password %q: warning logged %v:\n%s", pass, got, buf.String())
		}
	}
}

// TestTLSRefreshFromReplica: a snapshot refresh asks a replica that came
// in over TLS on the TLS port it announced, with the upstream client
// certificate (the replica requires one), verifying its chain: the origin
// does not fork again.
func TestTLSRefreshFromReplica(t *testing.T) {
	t.Parallel()
	r := newTLSRig(t)
	origin := redistest.StartTLST(t, "origin", r.originTLS)
	populate(t, origin)
	p := startTLSProxy(t, r, origin.Addr(), func(c *Config) {
		c.BacklogSize, c.RefreshFrom = 2<<20, []string{upstream.SourceReplicas}
	})
	replicas := startTLSReplicas(t, r, 1, p.tlsAddr)
	waitConverged(t, origin, replicas, 30*time.Second)
	overwrite(t, origin.Client(), nil, 4<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 30*time.Second, "a refresh from the TLS replica", func() bool {
		return p.Stats().RefreshAttempts.Load("replica/ok") >= 1
	})
	if forks := origin.InfoInt("stats", "total_forks"); forks != 1 {
		t.Fatalf("the origin forked %d times", forks)
	}
	if n := p.Stats().RefreshAttempts.Load("replica/failed"); n > 0 {
		t.Fatalf("%d failed refresh attempts at the TLS replica:\n%s", n, grepLines(p.logBuf.String(), "refresh"))
	}
}

// TestTLSTailMatchesOrigin: a TLS replica starting far behind the
// in-memory tail reads the files, stalls, catches up onto the tail while
// writes go on, and receives exactly the origin's own stream.
func TestTLSTailMatchesOrigin(t *testing.T) {
	t.Parallel()
	r := newTLSRig(t)
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "256mb")
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) {
		c.TLSListen, c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = "127.0.0.1:0", r.proxy.CertFile, r.proxy.KeyFile, r.ca.CertFile
		c.TailBuffer = 512 << 10
	})
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 3)
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	waitOffsetGrows(t, origin, 4<<20)
	st := p.Status()
	from := st.BacklogFirst + 1000

	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", p.tlsAddr, r.clientConfig(t, r.client))
	must(t, err)
	defer conn.Close()
	rep := psyncAt(t, conn, st.History.ReplID, from)
	for range 50 { // slow at first: the tail moves on without it
		rep.read()
		time.Sleep(5 * time.Millisecond)
	}
	waitOffsetGrows(t, origin, 2<<20)
	stopLoad()
	rep.readThrough(waitSynced(t, origin, p.backlogEnd, 20*time.Second))
	// Caught up now, whatever the machine's speed: writes that come one by
	// one reach a waiting replica from the tail.
	end := rep.singleWrites(origin, p, 20)
	if p.store.Backlog.TailServed() == 0 {
		t.Fatal("the TLS replica was never fed from the in-memory tail")
	}
	rep.matchOrigin(origin, st.History.ReplID, end)
}
