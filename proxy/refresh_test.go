package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/faultproxy"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/downstream"
	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/upstream"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
)

// overwrite rewrites n keys with values of size bytes at about rate bytes/s
// until total bytes were written or stop closes; it returns when done.
func overwrite(t *testing.T, cli *redis.Client, stop <-chan struct{}, total, rate int64, size int) {
	t.Helper()
	val := strings.Repeat("o", size)
	perTick := max(rate/20/int64(size), 1) // 20 ticks a second
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	ctx := context.Background()
	for written, i := int64(0), 0; written < total; {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		pipe := cli.Pipeline()
		for range perTick {
			pipe.Set(ctx, "ow:"+strconv.Itoa(i%1000), val, 0)
			i++
			written += int64(size)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Errorf("load: %v", err)
			return
		}
	}
}

// refreshRig is the setup of most refresh tests: an origin with some data,
// a proxy with a 2 MB budget (so a few MB of writes call for a refresh),
// and n replicas in sync behind it. dir is the proxy's data dir.
func refreshRig(t *testing.T, n int, mod ...func(*Config)) (origin *redistest.Server, p *testProxy, replicas []*redistest.Server, dir string) {
	t.Helper()
	origin = redistest.StartT(t, "origin")
	populate(t, origin)
	dir = t.TempDir()
	p = startProxy(t, origin.Addr(), dir, append([]func(*Config){func(c *Config) { c.BacklogSize = 2 << 20 }}, mod...)...)
	replicas = startReplicas(t, n, p.addr)
	waitConverged(t, origin, replicas, 30*time.Second)
	return origin, p, replicas, dir
}

// TestRefreshFromReplicasNoOriginFork is the scenario of a sustained write
// load: 200k keys, a 128 MB budget, about 1 GB of stream, then a replica
// joining. The snapshot is refreshed from the downstream replicas, so the
// origin forks exactly once (the proxy's first sync), and the late replica
// converges from a replica-made snapshot.
func TestRefreshFromReplicasNoOriginFork(t *testing.T) {
	t.Parallel()
	// No output-buffer limit for replicas: the 1 GB overwrite below can
	// outrun the proxy's appends on a slow, shared machine, and the origin
	// cutting the link (a resync, a fork) is not what this test is about.
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "16mb", "--client-output-buffer-limit", "replica 0 0 0")
	if err := origin.Client().Do(context.Background(), "DEBUG", "POPULATE", 200000, "key", 64).Err(); err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.BacklogSize = 128 << 20 })
	replicas := startReplicas(t, 2, p.addr)
	waitConverged(t, origin, replicas, 60*time.Second)
	overwrite(t, origin.Client(), nil, 1<<30, 60<<20, 64<<10)
	late := startReplicas(t, 1, p.addr)[0]
	waitConverged(t, origin, append(replicas, late), 120*time.Second)
	st := p.Status()
	ok := p.Stats().RefreshAttempts.Load("replica/ok")
	t.Logf("refreshes from replicas: %d ok, %d failed; from upstream: %d; snapshot source %s",
		ok, p.Stats().RefreshAttempts.Load("replica/failed"), p.Stats().RefreshAttempts.Load("upstream/ok"), vocab.SnapshotSource(st.Snapshot))
	if forks, fulls := origin.InfoInt("stats", "total_forks"), origin.InfoInt("stats", "sync_full"); forks != 1 || fulls != 1 {
		t.Fatalf("origin total_forks %d, sync_full %d; want 1 and 1", forks, fulls)
	}
	if ok < 5 || vocab.SnapshotSource(st.Snapshot) != "replica" {
		t.Fatalf("%d refreshes from replicas; snapshot from %s", ok, vocab.SnapshotSource(st.Snapshot))
	}
	if !strings.Contains(p.info("replproxy"), "snapshot_source:replica") {
		t.Fatal("INFO does not say the snapshot came from a replica")
	}
}

// TestRefreshFromUpstreamOnly: --snapshot-refresh-from upstream refreshes
// from the origin as before, though replicas could serve.
func TestRefreshFromUpstreamOnly(t *testing.T) {
	t.Parallel()
	origin, p, _, _ := refreshRig(t, 1, func(c *Config) { c.RefreshFrom = []string{upstream.SourceUpstream} })
	overwrite(t, origin.Client(), nil, 4<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 30*time.Second, "a refresh from the origin", func() bool {
		return p.Stats().RefreshAttempts.Load("upstream/ok") >= 1
	})
	if n := p.Stats().RefreshAttempts.Load("replica/ok") + p.Stats().RefreshAttempts.Load("replica/failed"); n != 0 {
		t.Fatalf("%d refreshes asked of replicas", n)
	}
	if forks := origin.InfoInt("stats", "total_forks"); forks < 2 {
		t.Fatalf("origin forked %d times", forks)
	}
}

// TestRefreshNoReplicaReachable: replicas that announce an address that
// refuses: with eager upstream refreshes the refresh falls back to the
// origin and says why; with replicas alone it never forks the origin and
// reports the budget overrun instead (the default, on-demand upstream,
// is TestRefreshSourcesThatCannotServe).
func TestRefreshNoReplicaReachable(t *testing.T) {
	t.Parallel()
	for _, only := range []bool{false, true} {
		t.Run(fmt.Sprintf("replicas-only-%v", only), func(t *testing.T) {
			t.Parallel()
			origin := redistest.StartT(t, "origin")
			populate(t, origin)
			p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) {
				c.BacklogSize = 2 << 20
				if only {
					c.RefreshFrom = []string{upstream.SourceReplicas}
				} else {
					c.RefreshUpstream = upstream.RefreshUpstreamEager // the default never asks the origin for this
				}
			})
			refused, err := redistest.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			replicas := startReplicas(t, 1, p.addr, "--replica-announce-port", strconv.Itoa(refused))
			waitConverged(t, origin, replicas, 30*time.Second)
			forks := origin.InfoInt("stats", "total_forks")
			overwrite(t, origin.Client(), nil, 4<<20, 8<<20, 16<<10)
			if !only {
				redistest.Eventually(t, 30*time.Second, "the refresh falls back to the origin", func() bool {
					return p.Stats().RefreshAttempts.Load("upstream/ok") >= 1
				})
				if !strings.Contains(p.logBuf.String(), "connection refused") {
					t.Fatal("no log line saying why the replica could not serve")
				}
				return
			}
			// Past twice the budget the snapshot lapses (a write this big
			// can get there between two polls): either is the overrun reported.
			redistest.Eventually(t, 30*time.Second, "the budget overrun is reported", func() bool {
				info := p.info("replproxy")
				return strings.Contains(info, "snapshot_budget_exceeded:1") || strings.Contains(info, "snapshot_stale:1")
			})
			if n := origin.InfoInt("stats", "total_forks"); n != forks {
				t.Fatalf("the origin forked (%d -> %d) with --snapshot-refresh-from replicas", forks, n)
			}
			if p.Stats().SourceRefusals.Load(vocab.RefusedUnreachable) < 1 || !strings.Contains(p.logBuf.String(), "failed from every source") {
				t.Fatal("the failed refreshes are not reported")
			}
		})
	}
}

// fakeReplica joins the proxy as a replica that announces port, reads what
// it is sent and ACKs far ahead, so the proxy takes it for the most caught
// up; it ends with the test.
func fakeReplica(t *testing.T, proxyAddr string, port int) {
	t.Helper()
	fakeReplicaAs(t, proxyAddr, psync.HandshakeConfig{ListeningPort: port})
}

// fakeReplicaAs is fakeReplica with a handshake of its own (credentials).
func fakeReplicaAs(t *testing.T, proxyAddr string, hs psync.HandshakeConfig) {
	t.Helper()
	conn, err := net.Dial("tcp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)                 // runs second:
	t.Cleanup(func() { conn.Close() }) // cleanups run last-in first-out
	br := bufio.NewReader(conn)
	if err := psync.Handshake(conn, br, hs); err != nil {
		t.Fatal(err)
	}
	if _, err := psync.Psync(conn, br, "", -1, nil); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _, _ = io.Copy(io.Discard, br) })
	wg.Go(func() {
		for {
			if _, err := conn.Write(psync.AckCommand(1 << 50)); err != nil {
				return
			}
			time.Sleep(500 * time.Millisecond) // an ACK cadence, not synchronisation
		}
	})
}

// TestRefreshSkipsCorruptReplica: a replica that serves a corrupt RDB (a
// scripted fake that announces itself as the most caught up) is skipped
// for a good one; the origin does not fork; no temp file remains.
func TestRefreshSkipsCorruptReplica(t *testing.T) {
	t.Parallel()
	origin, p, _, dir := refreshRig(t, 1)
	replid := p.position().Hist.ReplID
	rdb := []byte("REDIS0010\xfe\x00\xfb\x01\x00\x00\x03key\x05value\xff")
	rdb = binary.LittleEndian.AppendUint64(rdb, psync.CRC64(0, rdb))
	rdb[17] ^= 0x20
	corrupt := fakeSource(t, p, func(conn net.Conn) {
		fmt.Fprintf(conn, "+FULLRESYNC %s %d\r\n$%d\r\n", replid, p.backlogEnd(), len(rdb))
		conn.Write(rdb)
		_, _ = io.Copy(io.Discard, conn)
	})
	_, cport, _ := net.SplitHostPort(corrupt)
	n, _ := strconv.Atoi(cport)
	fakeReplica(t, p.addr, n)
	overwrite(t, origin.Client(), nil, 2<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 30*time.Second, "the corrupt payload refused, the good replica's taken", func() bool {
		return p.Stats().RefreshAttempts.Load("replica/failed") >= 1 && p.Stats().RefreshAttempts.Load("replica/ok") >= 1
	})
	if forks := origin.InfoInt("stats", "total_forks"); forks != 1 {
		t.Fatalf("the origin forked %d times", forks)
	}
	// Budget refreshes go on after the condition above: a temp file of one
	// in flight is not left behind; a leaked one would stay for good.
	redistest.Eventually(t, 20*time.Second, "no temp file left once no refresh runs", func() bool {
		return !p.refreshing() && len(tempFiles(t, dir)) == 0
	})
	if !strings.Contains(p.logBuf.String(), "CRC mismatch") {
		t.Fatal("no log line for the corrupt replica")
	}
}

// TestRefreshAbandonsStalledReplica: a source replica that answers the
// refresh and then goes silent (frozen after its handshake: a scripted
// fake announced as the most caught up) is given up after
// replicaStallTimeout, not the repl-timeout, and the refresh takes the
// good replica's snapshot; the origin does not fork.
func TestRefreshAbandonsStalledReplica(t *testing.T) {
	t.Parallel()
	const replTimeout = 5 * time.Minute
	origin, p, _, dir := refreshRig(t, 1, func(c *Config) { c.ReplTimeout = replTimeout })
	replid := p.position().Hist.ReplID
	stalled := fakeSource(t, p, func(conn net.Conn) {
		fmt.Fprintf(conn, "+FULLRESYNC %s %d\r\n$1000000\r\nREDIS0010", replid, p.backlogEnd())
		_, _ = io.Copy(io.Discard, conn) // then silence, until the proxy hangs up
	})
	_, sport, _ := net.SplitHostPort(stalled)
	n, _ := strconv.Atoi(sport)
	fakeReplica(t, p.addr, n)
	overwrite(t, origin.Client(), nil, 2<<20, 8<<20, 16<<10)
	// Well inside the repl-timeout: only the stall bound can end the first try.
	redistest.Eventually(t, upstream.ReplicaStallTimeout+45*time.Second, "the stalled source given up, the good replica's taken", func() bool {
		return p.Stats().RefreshAttempts.Load("replica/failed") >= 1 && p.Stats().RefreshAttempts.Load("replica/ok") >= 1
	})
	if forks := origin.InfoInt("stats", "total_forks"); forks != 1 {
		t.Fatalf("the origin forked %d times", forks)
	}
	if tmp := tempFiles(t, dir); len(tmp) > 0 {
		t.Fatalf("temp files left: %v", tmp)
	}
}

// TestRefreshReplicaKilledMidway: the replica serving a refresh is killed
// while it sends its RDB: the previous snapshot stays in service, no temp
// file remains, and the refresh moves on (here to the upstream, the only
// other source).
func TestRefreshReplicaKilledMidway(t *testing.T) {
	t.Parallel()
	origin, p, replicas, dir := refreshRig(t, 1, func(c *Config) { c.RefreshUpstream = upstream.RefreshUpstreamEager })
	slow := replicas[0]
	if err := slow.Client().ConfigSet(context.Background(), "rdb-key-save-delay", "20000").Err(); err != nil {
		t.Fatal(err)
	}
	before := p.position().Snap
	overwrite(t, origin.Client(), nil, 2<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 30*time.Second, "the replica is saving for the refresh", func() bool {
		return p.refreshing() && slow.InfoInt("persistence", "rdb_bgsave_in_progress") == 1
	})
	if s := p.position().Snap; s.Name != before.Name {
		t.Fatal("the snapshot changed before the refresh completed")
	}
	slow.Kill()
	redistest.Eventually(t, 60*time.Second, "the refresh moves on to the upstream", func() bool {
		return p.Stats().RefreshAttempts.Load("replica/failed") >= 1 && p.Stats().RefreshAttempts.Load("upstream/ok") >= 1
	})
	if tmp := tempFiles(t, dir); len(tmp) > 0 {
		t.Fatalf("temp files left: %v", tmp)
	}
}

// TestRefreshFromReplicasWithAuth: replicas with requirepass are asked with
// the configured credentials; a wrong password is a clear log line and a
// fallback to the upstream, not a loop.
func TestRefreshFromReplicasWithAuth(t *testing.T) {
	t.Parallel()
	for _, pass := range []string{"s3cret", "wrong"} {
		t.Run(pass, func(t *testing.T) {
			t.Parallel()
			origin := redistest.StartT(t, "origin")
			populate(t, origin)
			p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) {
				c.BacklogSize, c.ReplicaAuthPassword = 2<<20, pass
				c.RefreshUpstream = upstream.RefreshUpstreamEager // the fallback below
			})
			replicas := startReplicas(t, 1, p.addr)
			redistest.Eventually(t, 30*time.Second, "replica online", func() bool {
				r := p.Status().Replicas
				return len(r) == 1 && r[0].State == vocab.ReplicaOnline
			})
			// Set after start: the test harness's own client has no password.
			if err := replicas[0].Client().ConfigSet(context.Background(), "requirepass", "s3cret").Err(); err != nil {
				t.Fatal(err)
			}
			overwrite(t, origin.Client(), nil, 4<<20, 8<<20, 16<<10)
			if pass == "s3cret" {
				redistest.Eventually(t, 30*time.Second, "a refresh from the replica", func() bool {
					return p.Stats().RefreshAttempts.Load("replica/ok") >= 1
				})
				if forks := origin.InfoInt("stats", "total_forks"); forks != 1 {
					t.Fatalf("the origin forked %d times", forks)
				}
				return
			}
			redistest.Eventually(t, 30*time.Second, "a fallback to the origin", func() bool {
				return p.Stats().RefreshAttempts.Load("upstream/ok") >= 1
			})
			if !strings.Contains(p.logBuf.String(), "WRONGPASS") && !strings.Contains(p.logBuf.String(), "invalid password") {
				t.Fatal("no log line with the replica's refusal")
			}
			if n := p.Stats().RefreshAttempts.Load("replica/failed"); n > 3 {
				t.Fatalf("%d failed attempts at the replica: a loop", n)
			}
		})
	}
}

// TestLazyRefresh: with --snapshot-refresh lazy a long write load causes
// no refresh at all (the snapshot lapses, the backlog stays in budget); a
// replica joining afterwards is held, and gets its full sync after exactly
// one refresh, from the other replica: the origin forked once in all.
func TestLazyRefresh(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	dir := t.TempDir()
	const budget = 2 << 20
	p := startProxy(t, origin.Addr(), dir, func(c *Config) { c.BacklogSize, c.RefreshMode = budget, upstream.RefreshLazy })
	first := startReplicas(t, 1, p.addr)
	waitConverged(t, origin, first, 30*time.Second)
	overwrite(t, origin.Client(), nil, 8<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 30*time.Second, "the snapshot lapses", func() bool {
		return strings.Contains(p.info("replproxy"), "snapshot_stale:1")
	})
	if n := p.Stats().Refreshes.Load() + p.Stats().RefreshFailures.Load(); n != 0 {
		t.Fatalf("%d refreshes under load in lazy mode", n)
	}
	// Trims follow appends asynchronously (a kick to maintain): the last
	// writes may be a few segments over until it runs.
	var held int64
	if err := redistest.WaitFor(10*time.Second, func() bool {
		st := p.Status()
		held = st.BacklogEnd - st.BacklogFirst + 1
		return held <= budget+budget/16
	}); err != nil {
		t.Fatalf("backlog holds %d bytes, budget %d", held, budget)
	}
	late := startReplicas(t, 1, p.addr)
	waitConverged(t, origin, append(first, late...), 60*time.Second)
	if n := p.Stats().Refreshes.Load(); n != 1 {
		t.Fatalf("%d refreshes for one late replica, want 1", n)
	}
	if forks := origin.InfoInt("stats", "total_forks"); forks != 1 {
		t.Fatalf("the origin forked %d times", forks)
	}
	if in, err := store.Inspect(t.Context(), dir, store.InspectOptions{}); err != nil || !in.Consistent {
		t.Fatalf("inspect: %+v %v", in, err)
	}
}

// TestRefreshCancelledByReplicaof: a REPLICAOF while a refresh is being
// received cancels it cleanly: no temp file, the old snapshot in service.
func TestRefreshCancelledByReplicaof(t *testing.T) {
	t.Parallel()
	origin, p, replicas, dir := refreshRig(t, 1)
	alt, err := faultproxy.New(origin.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer alt.Close()
	if err := replicas[0].Client().ConfigSet(context.Background(), "rdb-key-save-delay", "20000").Err(); err != nil {
		t.Fatal(err)
	}
	before := p.position().Snap
	overwrite(t, origin.Client(), nil, 2<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 30*time.Second, "a refresh in flight", func() bool {
		return p.refreshing() && replicas[0].InfoInt("persistence", "rdb_bgsave_in_progress") == 1
	})
	p.moveUpstream(alt.Addr())
	// maintain starts the next refresh only once the last one has ended.
	redistest.Eventually(t, 10*time.Second, "the cancelled refresh ends", func() bool {
		log := p.logBuf.String()
		return strings.Contains(log, "snapshot refresh cancelled") && strings.Count(log, "snapshot refresh started") >= 2
	})
	if s := p.position().Snap; s.Name != before.Name || p.Stats().Refreshes.Load() != 0 {
		t.Fatalf("the cancelled refresh installed a snapshot: %s -> %s", before.Name, s.Name)
	}
	// The next refresh, from the same replica now at full speed, succeeds.
	if err := replicas[0].Client().ConfigSet(context.Background(), "rdb-key-save-delay", "0").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 60*time.Second, "the next refresh completes", func() bool {
		return p.Stats().Refreshes.Load() >= 1 && !p.refreshing()
	})
	if tmp := tempFiles(t, dir); len(tmp) > 0 {
		t.Fatalf("temp files left: %v", tmp)
	}
}

// TestRefreshSkipsFrozenReplica: a frozen (SIGSTOPped) replica is still
// online until its timeout and still accepts connections; it is not asked
// for a snapshot, so the refresh does not wait on it.
func TestRefreshSkipsFrozenReplica(t *testing.T) {
	t.Parallel()
	origin, p, replicas, _ := refreshRig(t, 2)
	// Freeze the one the candidate order would ask first: equal ACK
	// offsets (the origin is idle) are ordered by address.
	frozen := replicas[0]
	if replicas[1].Addr() < frozen.Addr() {
		frozen = replicas[1]
	}
	if err := frozen.Pause(); err != nil {
		t.Fatal(err)
	}
	defer frozen.Resume()
	redistest.Eventually(t, 10*time.Second, "the frozen replica's ACKs stop counting", func() bool {
		for _, r := range p.Status().Replicas {
			if r.Port == frozen.Port && time.Since(r.AckTime) > downstream.CandidateAckAge {
				return true
			}
		}
		return false
	})
	overwrite(t, origin.Client(), nil, 2<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 15*time.Second, "a refresh from the running replica", func() bool {
		return p.Stats().RefreshAttempts.Load("replica/ok") >= 1
	})
	if n := p.Stats().RefreshAttempts.Load("replica/failed"); n != 0 {
		t.Fatalf("%d refreshes tried the frozen replica", n)
	}
}
