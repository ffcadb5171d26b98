package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/psync"
)

// Tests of who may serve a snapshot refresh: a refreshed snapshot reaches
// every replica that full-syncs afterwards, so its source must be a
// read-only replica of the proxy's history and trusted for who it
// authenticated as.

// TestRefreshNeverFromWritableReplica: a replica with replica-read-only no
// and a local key is never a refresh source (its key would spread); the
// refreshes come from the read-only one; a replica joining afterwards
// equals the origin; the refusal is logged once with its reason and
// counted.
func TestRefreshNeverFromWritableReplica(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.BacklogSize = 2 << 20 })
	writable := startReplicas(t, 1, p.addr, "--replica-read-only", "no")[0]
	readOnly := startReplicas(t, 1, p.addr)[0]
	waitConverged(t, origin, []*redistest.Server{writable, readOnly}, 30*time.Second)
	ctx := context.Background()
	if err := writable.Client().Set(ctx, "local:only", "never on the origin", 0).Err(); err != nil {
		t.Fatal(err)
	}
	overwrite(t, origin.Client(), nil, 16<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 60*time.Second, "refreshes from the read-only replica", func() bool {
		return p.Stats().RefreshAttempts.Load("replica/ok") >= 2
	})
	late := startReplicas(t, 1, p.addr)[0]
	waitConverged(t, origin, []*redistest.Server{readOnly, late}, 60*time.Second)
	if n := late.Client().Exists(ctx, "local:only").Val(); n != 0 {
		t.Fatal("the writable replica's local key reached a replica that joined later")
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(writable.Port))
	lines := 0
	for _, l := range strings.Split(p.logBuf.String(), "\n") {
		if strings.Contains(l, "replica cannot serve snapshot refreshes") && strings.Contains(l, "replica="+addr) {
			lines++
			if !strings.Contains(l, "reason=writable") || !strings.Contains(l, "replica-read-only yes") {
				t.Errorf("refusal line without its reason and advice: %s", l)
			}
		}
	}
	if lines != 1 || p.Stats().SourceRefusals.Load(RefusedWritable) < 1 {
		t.Fatalf("the writable replica is named in %d log lines (want 1), counted %d times", lines, p.Stats().SourceRefusals.Load(RefusedWritable))
	}
	if forks := origin.InfoInt("stats", "total_forks"); forks != 1 {
		t.Fatalf("the origin forked %d times", forks)
	}
}

// craftedRDB is an RDB of one key, at replid and offset, as an impostor
// would serve it: valid in every way the proxy can check.
func craftedRDB(replid string, offset int64, key, value string) []byte {
	off := strconv.FormatInt(offset, 10)
	rdb := []byte("REDIS0010\xfa\x07repl-id\x28" + replid + "\xfa\x0brepl-offset" + string(rune(len(off))) + off +
		"\xfe\x00\xfb\x01\x00\x00" + string(rune(len(key))) + key + string(rune(len(value))) + value + "\xff")
	return binary.LittleEndian.AppendUint64(rdb, psync.CRC64(0, rdb))
}

// impostor joins the proxy as a replica authenticated as user, announces
// the port of a fake replica that serves a crafted RDB at the proxy's
// current history (and answers INFO as a replica of the proxy would), and
// ACKs far ahead to rank first. It returns how many snapshots the fake
// served.
func impostor(t *testing.T, p *testProxy, user, pass string) *atomic.Int64 {
	t.Helper()
	served := new(atomic.Int64)
	fake := fakeSource(t, p, func(conn net.Conn) {
		pos := p.position()
		rdb := craftedRDB(pos.Hist.ReplID, pos.End, "impostor:key", "planted")
		fmt.Fprintf(conn, "+FULLRESYNC %s %d\r\n$%d\r\n", pos.Hist.ReplID, pos.End, len(rdb))
		conn.Write(rdb)
		served.Add(1)
		_, _ = io.Copy(io.Discard, conn)
	})
	_, fport, _ := net.SplitHostPort(fake)
	port, _ := strconv.Atoi(fport)
	fakeReplicaAs(t, p.addr, psync.HandshakeConfig{User: user, Password: pass, ListeningPort: port})
	return served
}

// TestRefreshImpostor: a client that completes the replica handshake with
// credentials of its own, ACKs the highest offset and announces a fake
// replica serving a crafted RDB at the right ID and offset is never a
// refresh source while its user is not trusted; the trusted replica
// serves, and a late replica equals the origin. Trusted, the impostor's
// snapshot is installed and served to the next full sync: what the
// README's trust model says a trusted identity can do.
func TestRefreshImpostor(t *testing.T) {
	t.Parallel()
	for _, trustIntruder := range []bool{false, true} {
		t.Run(fmt.Sprintf("trusted-%v", trustIntruder), func(t *testing.T) {
			t.Parallel()
			origin := redistest.StartT(t, "origin")
			populate(t, origin)
			users := filepath.Join(t.TempDir(), "users.acl")
			must(t, os.WriteFile(users, []byte("user replica on >replica-secret\nuser intruder on >intruder-secret\n"), 0o600))
			// Trusted, the impostor is the only source (else refreshes
			// alternate and the honest replica's may come last).
			trust := []string{"user:replica"}
			if trustIntruder {
				trust = []string{"user:intruder"}
			}
			p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) {
				c.BacklogSize, c.UsersFile, c.RequirePass, c.RefreshTrust = 2<<20, users, "default-secret", trust
			})
			replicas := startReplicas(t, 1, p.addr, "--masteruser", "replica", "--masterauth", "replica-secret")
			waitConverged(t, origin, replicas, 30*time.Second)
			served := impostor(t, p, "intruder", "intruder-secret")
			redistest.Eventually(t, 10*time.Second, "the impostor online", func() bool {
				return len(p.Status().Replicas) == 2
			})
			overwrite(t, origin.Client(), nil, 6<<20, 8<<20, 16<<10)
			redistest.Eventually(t, 60*time.Second, "a refresh", func() bool {
				return p.Stats().RefreshAttempts.Load("replica/ok") >= 1
			})
			late := startReplicas(t, 1, p.addr, "--masteruser", "replica", "--masterauth", "replica-secret")[0]
			ctx := context.Background()
			if !trustIntruder {
				waitConverged(t, origin, append(replicas, late), 60*time.Second)
				if n := served.Load(); n != 0 {
					t.Fatalf("the untrusted impostor was asked for %d snapshots", n)
				}
				if p.Stats().SourceRefusals.Load(RefusedUntrusted) < 1 || !strings.Contains(p.logBuf.String(), "reason=untrusted") {
					t.Fatal("the untrusted impostor's refusal is not counted and logged")
				}
				return
			}
			redistest.Eventually(t, 60*time.Second, "the late replica loads the impostor's snapshot", func() bool {
				return late.Client().Get(ctx, "impostor:key").Val() == "planted"
			})
			if served.Load() < 1 || SnapshotSource(p.Status().Snapshot) != snapFromReplica {
				t.Fatalf("served %d; snapshot from %s", served.Load(), SnapshotSource(p.Status().Snapshot))
			}
		})
	}
}

// TestTrustRules: parsing and matching of --snapshot-refresh-trust.
func TestTrustRules(t *testing.T) {
	if _, err := parseTrust([]string{"user:a", "cn:b"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"a", "user:", "host:x", ""} {
		if _, err := parseTrust([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	rules, _ := parseTrust([]string{"user:replica", "cn:edge-1"})
	for _, tc := range []struct {
		id   identity
		want bool
	}{
		{identity{user: "replica"}, true},
		{identity{user: "default"}, false},
		{identity{user: "other", cn: "edge-1"}, true},
		{identity{}, false},
		{identity{cn: "replica"}, false}, // a CN is not a user
	} {
		if got := trusts(rules, tc.id); got != tc.want {
			t.Errorf("trusts(%v) = %v, want %v", tc.id, got, tc.want)
		}
	}
	def, _ := parseTrust([]string{DefaultRefreshTrust})
	if !trusts(def, identity{user: "default"}) || trusts(def, identity{user: "replica"}) {
		t.Error("the default trusts other than the default user")
	}
}

// TestSourceCheck: what a refresh source must report of itself, from
// INFO replication as Redis 7.0 writes it (and a fork that says replica).
func TestSourceCheck(t *testing.T) {
	const id = "0123456789012345678901234567890123456789"
	base := map[string]string{"role": "slave", "master_host": "10.0.0.1", "master_port": "6380",
		"master_link_status": "up", "slave_read_only": "1", "master_replid": id}
	check := sourceCheck{replID: id, ports: []int{6380, 6390}}
	for _, tc := range []struct {
		name   string
		change map[string]string
		want   SourceRefusal // "": accepted
	}{
		{"a read-only replica of this proxy", nil, ""},
		{"on the TLS port", map[string]string{"master_port": "6390"}, ""},
		{"a fork's field names", map[string]string{"role": "replica", "slave_read_only": "", "replica_read_only": "1"}, ""},
		{"writable", map[string]string{"slave_read_only": "0"}, RefusedWritable},
		{"a master", map[string]string{"role": "master"}, RefusedNotOurs},
		{"link down", map[string]string{"master_link_status": "down"}, RefusedNotOurs},
		{"another history", map[string]string{"master_replid": strings.Repeat("f", 40)}, RefusedNotOurs},
		{"another master's port", map[string]string{"master_port": "6379"}, RefusedNotOurs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fields := map[string]string{}
			for k, v := range base {
				fields[k] = v
			}
			for k, v := range tc.change {
				fields[k] = v
			}
			var txt strings.Builder
			txt.WriteString("# Replication\r\n")
			for k, v := range fields {
				if v != "" {
					fmt.Fprintf(&txt, "%s:%s\r\n", k, v)
				}
			}
			reply := fmt.Sprintf("$%d\r\n%s\r\n", txt.Len(), txt.String())
			err := check.verify(io.Discard, bufio.NewReader(strings.NewReader(reply)))
			var refused *errSourceRefused
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (!errors.As(err, &refused) || refused.reason != tc.want):
				t.Fatalf("got %v, want a %s refusal", err, tc.want)
			}
		})
	}
	// An error reply is classified as the handshake's would be.
	err := check.verify(io.Discard, bufio.NewReader(strings.NewReader("-NOAUTH Authentication required.\r\n")))
	var refused *errSourceRefused
	if !errors.As(err, &refused) || refused.reason != RefusedAuth {
		t.Fatalf("NOAUTH: %v", err)
	}
}

// FuzzSourceCheck: whatever a refresh source answers to INFO replication,
// the check returns without panicking, reads no more than the reply, and
// accepts only a reply that names the proxy's history, a port of it and a
// read-only, linked replica.
func FuzzSourceCheck(f *testing.F) {
	const id = "0123456789012345678901234567890123456789"
	ok := "# Replication\r\nrole:slave\r\nmaster_port:6380\r\nmaster_link_status:up\r\nslave_read_only:1\r\nmaster_replid:" + id + "\r\n"
	f.Add([]byte(fmt.Sprintf("$%d\r\n%s\r\n", len(ok), ok)))
	f.Add([]byte("-DENIED Redis is running in protected mode\r\n"))
	f.Add([]byte("$-1\r\n"))
	f.Add([]byte("$99999999999\r\n"))
	f.Add([]byte("*1\r\n$4\r\nrole\r\n"))
	check := sourceCheck{replID: id, ports: []int{6380}}
	f.Fuzz(func(t *testing.T, reply []byte) {
		err := check.verify(io.Discard, bufio.NewReader(bytes.NewReader(reply)))
		if err != nil {
			return
		}
		txt := string(reply)
		for _, must := range []string{"master_replid:" + id, "master_port:6380", "master_link_status:up"} {
			if !strings.Contains(txt, must) {
				t.Fatalf("accepted a reply without %q: %q", must, reply)
			}
		}
	})
}
