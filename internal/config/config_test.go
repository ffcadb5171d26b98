package config

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "replproxy.yaml")
	if err := os.WriteFile(file, []byte("upstream: file:1\nbacklog-size: 2gb\nrepl-timeout: 30s\nfsync: always\nmetrics-per-replica: true\nmax-parallel-full-syncs: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := []string{"--config", file, "--data-dir", dir}
	cases := []struct {
		name     string
		args     []string
		env      map[string]string
		upstream string
		backlog  int64
		timeout  time.Duration
		source   string
	}{
		{"file only", nil, nil, "file:1", 2 << 30, 30 * time.Second, "file"},
		{"env beats file", nil, map[string]string{"REPLPROXY_UPSTREAM": "env:1", "REPLPROXY_BACKLOG_SIZE": "3gb"}, "env:1", 3 << 30, 30 * time.Second, "env"},
		{"flag beats env", []string{"--upstream", "flag:1"}, map[string]string{"REPLPROXY_UPSTREAM": "env:1"}, "flag:1", 2 << 30, 30 * time.Second, "flag"},
		{"flag beats file", []string{"--repl-timeout", "5s"}, nil, "file:1", 2 << 30, 5 * time.Second, "file"},
	}
	for _, c := range cases {
		lookup := func(k string) (string, bool) { v, ok := c.env[k]; return v, ok }
		s, err := Parse(append(append([]string{}, base...), c.args...), lookup, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		p := s.Proxy
		if p.Upstream != c.upstream || p.BacklogSize != c.backlog || p.ReplTimeout != c.timeout {
			t.Errorf("%s: upstream %q backlog %d timeout %v", c.name, p.Upstream, p.BacklogSize, p.ReplTimeout)
		}
		if s.Sources["upstream"] != c.source {
			t.Errorf("%s: upstream source %q", c.name, s.Sources["upstream"])
		}
		if p.Fsync.String() != "always" || !s.Web.PerReplica || p.MaxParallelFullSyncs != 3 {
			t.Errorf("%s: file values lost: %+v", c.name, s.Web)
		}
	}
}

func TestBadFileNamesTheKey(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]string{
		"upstream: a:1\nbaklog-size: 1gb\n": `unknown key "baklog-size"`,
		"upstream: a:1\nfsync: [1, 2]\n":    `key "fsync": want a scalar`,
		"upstream: a:1\nrepl-timeout: soon": `key "repl-timeout"`,
		"upstream: [unclosed":               "config file",
		"upstream: a:1\nhold-ahead: -1s\n":  "hold-ahead -1s: must be >= 0",
	} {
		file := filepath.Join(dir, "c.yaml")
		_ = os.WriteFile(file, []byte(content), 0o644)
		_, err := Parse([]string{"--config", file, "--data-dir", dir}, func(string) (string, bool) { return "", false }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want it to mention %s", content, err, want)
		}
	}
}

func TestEffectiveRedactsSecrets(t *testing.T) {
	dir := t.TempDir()
	s, err := Parse([]string{"--upstream", "a:1", "--data-dir", dir, "--requirepass", "hunter2", "--upstream-password", "pw"},
		func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	out := s.Effective()
	if strings.Contains(out, "hunter2") || strings.Contains(out, `"pw"`) || !strings.Contains(out, "<redacted>") {
		t.Fatalf("secrets leak:\n%s", out)
	}
	if !strings.Contains(out, "upstream:") || !strings.Contains(out, "(flag)") || !strings.Contains(out, "(default)") {
		t.Fatalf("effective config:\n%s", out)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1gb": 1 << 30, "512mb": 512 << 20, "64kb": 64 << 10, "1000": 1000, "2g": 2e9, "10GB": 10 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	for _, in := range []string{"", "x", "-1mb", "1tb", "99999999999gb"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestFlagTableListsEveryFlag(t *testing.T) {
	table := FlagTable()
	for _, f := range []string{"--upstream", "--backlog-size", "REPLPROXY_METRICS_LISTEN", "--config"} {
		if !strings.Contains(table, f) {
			t.Errorf("table lacks %s", f)
		}
	}
}

// TestTLSOptionErrors: TLS and users options that cannot work are refused
// at parse time with the option named, and the files are loaded.
func TestTLSOptionErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(dir, "users.acl")
	if err := os.WriteFile(users, []byte("user default on >x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--upstream", "a:1", "--data-dir", dir}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", ""}, "no listener"},
		{[]string{"--tls-listen", "127.0.0.1:1"}, "--tls-listen needs --tls-cert-file and --tls-key-file"},
		{[]string{"--tls-listen", "127.0.0.1:1", "--tls-cert-file", bad, "--tls-key-file", bad}, "needs --tls-ca-cert-file"},
		{[]string{"--tls-listen", "127.0.0.1:1", "--tls-cert-file", bad, "--tls-key-file", bad, "--tls-auth-clients", "no"}, "server: load"},
		{[]string{"--tls-listen", "127.0.0.1:1", "--tls-cert-file", bad, "--tls-key-file", bad, "--tls-auth-clients", "maybe"}, `tls-auth-clients "maybe"`},
		{[]string{"--tls-cert-file", bad}, "need --tls-listen"},
		{[]string{"--upstream-tls-ca-cert-file", bad}, "need --upstream-tls"},
		{[]string{"--upstream-tls", "--upstream-tls-ca-cert-file", bad}, "holds no PEM certificate"},
		{[]string{"--upstream-tls", "--upstream-tls-cert-file", bad}, "go together"},
		{[]string{"--metrics-tls-cert-file", bad}, "go together"},
		{[]string{"--users-file", users, "--requirepass", "y"}, "declares the default user and --requirepass is set"},
		{[]string{"--users-file", filepath.Join(dir, "missing")}, "users file"},
	} {
		_, err := Parse(append(append([]string{}, base...), c.args...), func(string) (string, bool) { return "", false }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.args, err, c.want)
		}
	}
}
