package proxy

import (
	"bufio"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/loopback"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/request"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// scriptedReplier answers every command with reply once the command named
// at arrives (earlier ones get +OK / +PONG), then closes.
func scriptedReplier(t *testing.T, at, reply string) string {
	t.Helper()
	ln, err := loopback.Listen()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(func() { ln.Close() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rd := request.NewReader(bufio.NewReader(c))
			for {
				args, err := rd.Next()
				if err != nil || len(args) == 0 {
					break
				}
				cmd := strings.ToUpper(string(args[0]))
				if cmd == at {
					_, _ = c.Write([]byte(reply + "\r\n"))
					break
				}
				if cmd == "PING" {
					_, _ = c.Write([]byte("+PONG\r\n"))
				} else {
					_, _ = c.Write([]byte("+OK\r\n"))
				}
			}
			c.Close()
		}
	})
	return ln.Addr().String()
}

// TestUpstreamErrorClasses: each kind of refusal by the upstream is
// counted under its own reason, reaches the log in the upstream's words,
// and the advice for it is given once, not at every retry.
func TestUpstreamErrorClasses(t *testing.T) {
	t.Parallel()
	protected := redistest.StartT(t, "secured")
	// Set after start: the harness's own client has no password.
	if err := protected.Client().ConfigSet(context.Background(), "requirepass", "right").Err(); err != nil {
		t.Fatal(err)
	}
	acl := redistest.StartT(t, "acl")
	if err := acl.Client().Do(context.Background(), "ACL", "SETUSER", "repl", "on", ">pw", "~*", "&*", "+@all", "-psync", "-sync").Err(); err != nil {
		t.Fatal(err)
	}
	// Redis' protected-mode reply is ~600 bytes: longer than the 255 a
	// replica's reader once allowed, and it must arrive whole.
	denied := "-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user. " +
		"In this mode connections are only accepted from the loopback interface. If you want to connect from external computers to Redis you may adopt one of the following solutions: " +
		"1) Just disable protected mode sending the command 'CONFIG SET protected-mode no' from the loopback interface by connecting to Redis from the same host the server is running."
	cases := []struct {
		name, upstream, user, pass string
		reason                     vocab.UpstreamReason
		words, advice              string
	}{
		{"denied", scriptedReplier(t, "PING", denied), "", "", vocab.UpDenied, denied[1:], "set a password on it"},
		{"loading", scriptedReplier(t, "PSYNC", "-LOADING Redis is loading the dataset in memory"), "", "",
			vocab.UpLoading, "LOADING Redis is loading the dataset in memory", ""},
		{"wrong password", protected.Addr(), "", "wrong", vocab.UpAuth, "WRONGPASS invalid username-password pair", "check --upstream-user"},
		{"no password", protected.Addr(), "", "", vocab.UpAuth, "NOAUTH Authentication required", "check --upstream-user"},
		{"user without +psync", acl.Addr(), "repl", "pw", vocab.UpNoPerm, "NOPERM", "+psync +replconf +ping"},
		{"renamed PSYNC", scriptedReplier(t, "PSYNC", "-ERR unknown command 'PSYNC', with args beginning with: '?' '-1' "), "", "",
			vocab.UpUnknownCommand, "unknown command 'PSYNC'", "renamed or disabled"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			p := startProxy(t, c.upstream, t.TempDir(), func(cfg *Config) { cfg.UpstreamUser, cfg.UpstreamPassword = c.user, c.pass })
			redistest.Eventually(t, 20*time.Second, "three refusals counted", func() bool {
				return p.Stats().UpstreamDisconnects.Load(c.reason) >= 3
			})
			log := p.logBuf.String()
			if !strings.Contains(log, c.words) {
				t.Fatalf("the upstream's words %q are not in the log", c.words)
			}
			if n := linesWith(log, c.advice); c.advice != "" && n != 1 {
				t.Fatalf("advice %q given %d times, want once", c.advice, n)
			}
			if info := p.info("replication"); !strings.Contains(info, "master_link_down_reason:"+string(c.reason)) {
				t.Fatalf("INFO lacks the reason:\n%s", info)
			}
		})
	}
}

// TestReplTimeoutAdvice: a --repl-timeout that does not exceed the
// origin's PING period warns once at start; the idle link then times out
// again and again, and the advice comes once, after the first time.
func TestReplTimeoutAdvice(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.ReplTimeout = 5 * time.Second })
	redistest.Eventually(t, 60*time.Second, "the idle link times out twice", func() bool {
		return p.Stats().UpstreamDisconnects.Load(vocab.UpTimeout) >= 2
	})
	log := p.logBuf.String()
	if n := linesWith(log, "--repl-timeout does not exceed the origin's default repl-ping-replica-period"); n != 1 {
		t.Fatalf("start warning given %d times", n)
	}
	if n := linesWith(log, "an idle link times out between PINGs; raise it"); n != 1 {
		t.Fatalf("advice given %d times after %d timeouts", n, p.Stats().UpstreamDisconnects.Load(vocab.UpTimeout))
	}
}

// linesWith counts the log lines that contain s.
func linesWith(log, s string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// TestProtectedModeOrigin: a real origin in protected mode, reached from
// a non-loopback address (its own network namespace): the proxy logs
// Redis' -DENIED text and the advice, and counts the reason.
func TestProtectedModeOrigin(t *testing.T) {
	t.Parallel()
	addr := redistest.StartProtectedT(t)
	p := startProxy(t, addr, t.TempDir())
	redistest.Eventually(t, 20*time.Second, "denied counted", func() bool {
		return p.Stats().UpstreamDisconnects.Load(vocab.UpDenied) >= 2
	})
	log := p.logBuf.String()
	if !strings.Contains(log, "DENIED Redis is running in protected mode") || linesWith(log, "set a password on it") != 1 {
		t.Fatalf("log lacks the origin's words or the advice:\n%s", log)
	}
}

// TestBacklogWindowShortWarns: a backlog that covers only seconds of
// stream at the write rate is reported (log once, INFO, metric) with the
// window it buys.
func TestBacklogWindowShortWarns(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.BacklogSize = 1 << 20 })
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	stop := make(chan struct{})
	load(t, origin.Client(), stop, 4)
	defer close(stop)
	redistest.Eventually(t, 30*time.Second, "a short window reported", func() bool {
		return strings.Contains(p.info("replproxy"), "backlog_window_short:1")
	})
	if n := linesWith(p.logBuf.String(), "the backlog covers only seconds of stream"); n != 1 {
		t.Fatalf("warning given %d times", n)
	}
	if !strings.Contains(p.logBuf.String(), "psync_window=") {
		t.Fatal("the warning does not say what window the budget buys")
	}
}
