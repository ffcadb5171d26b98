package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/internal/testcert"
)

// probeLines runs check-config --probe and returns its exit code and the
// probe's verdict lines.
func probeLines(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"check-config", "--probe", "--metrics-listen", ""}, args...), &out, &errb)
	var lines []string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "probe ") {
			lines = append(lines, l)
		}
	}
	return code, strings.Join(lines, "\n") + errb.String()
}

// TestCheckConfigProbe: the probe passes against a healthy origin and
// fails, naming the check, against a wrong port, a wrong password and a
// read-only data dir; one message per problem.
func TestCheckConfigProbe(t *testing.T) {
	origin := redistest.StartT(t, "origin")
	secured := redistest.StartT(t, "secured")
	if err := secured.Client().ConfigSet(context.Background(), "requirepass", "right").Err(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	code, out := probeLines(t, "--upstream", origin.Addr(), "--data-dir", dir, "--backlog-size", "16mb")
	if code != 0 || strings.Count(out, " ok ") != 3 {
		t.Fatalf("healthy: exit %d\n%s", code, out)
	}
	closed, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		args  []string
		check string
		words string
	}{
		"wrong port":     {[]string{"--upstream", "127.0.0.1:" + strconv.Itoa(closed), "--data-dir", dir}, "upstream:", "connection refused"},
		"wrong password": {[]string{"--upstream", secured.Addr(), "--data-dir", dir, "--upstream-password", "wrong"}, "handshake:", "WRONGPASS"},
		"no password":    {[]string{"--upstream", secured.Addr(), "--data-dir", dir}, "handshake:", "NOAUTH"},
	} {
		code, out := probeLines(t, c.args...)
		if code != 1 || !strings.Contains(out, "probe "+c.check) || !strings.Contains(out, "FAIL") || !strings.Contains(out, c.words) {
			t.Errorf("%s: exit %d\n%s", name, code, out)
		}
	}
	if os.Getuid() != 0 {
		t.Log("protected mode and read-only data dir not checked: they need root")
		return
	}
	code, out = probeLines(t, "--upstream", redistest.StartProtectedT(t), "--data-dir", dir)
	if code != 1 || !strings.Contains(out, "probe handshake: FAIL") || !strings.Contains(out, "DENIED") || !strings.Contains(out, "set a password") {
		t.Fatalf("protected mode: exit %d\n%s", code, out)
	}
	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(ro, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", ro).Run()
	code, out = probeLines(t, "--upstream", origin.Addr(), "--data-dir", ro)
	if code != 1 || !strings.Contains(out, "probe data dir: FAIL") || !strings.Contains(out, "read-only") {
		t.Fatalf("read-only data dir: exit %d\n%s", code, out)
	}
}

// TestCheckConfigProbeTLS: against an origin on a TLS port that requires
// client certificates, the probe passes with upstream TLS and a client
// certificate, and fails in the upstream check without them.
func TestCheckConfigProbeTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue(dir, "origin", "origin")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	origin := redistest.StartTLST(t, "origin", &redistest.TLS{CertFile: pair.CertFile, KeyFile: pair.KeyFile, CAFile: ca.CertFile,
		Client: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{kp}}})
	base := []string{"--upstream", origin.Addr(), "--data-dir", t.TempDir(), "--backlog-size", "16mb"}
	withTLS := append([]string{"--upstream-tls", "--upstream-tls-ca-cert-file", ca.CertFile,
		"--upstream-tls-cert-file", pair.CertFile, "--upstream-tls-key-file", pair.KeyFile}, base...)
	if code, out := probeLines(t, withTLS...); code != 0 || !strings.Contains(out, "TLS handshake verified") {
		t.Fatalf("with TLS: exit %d\n%s", code, out)
	}
	for name, args := range map[string][]string{
		"plaintext to a TLS port": base,
		"no client certificate":   append([]string{"--upstream-tls", "--upstream-tls-ca-cert-file", ca.CertFile}, base...),
		"unknown CA":              append([]string{"--upstream-tls"}, base...),
	} {
		if code, out := probeLines(t, args...); code != 1 || !strings.Contains(out, "FAIL") {
			t.Errorf("%s: exit %d\n%s", name, code, out)
		}
	}
}
