package proxy

import (
	"context"
	"encoding/binary"
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
	"github.com/replproxy/replproxy/proxy/vocab"
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
	if lines != 1 || p.Stats().SourceRefusals.Load(vocab.RefusedWritable) < 1 {
		t.Fatalf("the writable replica is named in %d log lines (want 1), counted %d times", lines, p.Stats().SourceRefusals.Load(vocab.RefusedWritable))
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
				if p.Stats().SourceRefusals.Load(vocab.RefusedUntrusted) < 1 || !strings.Contains(p.logBuf.String(), "reason=untrusted") {
					t.Fatal("the untrusted impostor's refusal is not counted and logged")
				}
				return
			}
			redistest.Eventually(t, 60*time.Second, "the late replica loads the impostor's snapshot", func() bool {
				return late.Client().Get(ctx, "impostor:key").Val() == "planted"
			})
			if served.Load() < 1 || vocab.SnapshotSource(p.Status().Snapshot) != vocab.SnapFromReplica {
				t.Fatalf("served %d; snapshot from %s", served.Load(), vocab.SnapshotSource(p.Status().Snapshot))
			}
		})
	}
}
