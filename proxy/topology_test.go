package proxy

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redistest"
)

// TestReplicaofSurvivesRestart: a REPLICAOF is persisted: after a SIGKILL
// the proxy comes back attached to the upstream it was moved to, with a
// partial resync there; a restart with a different --upstream follows the
// configuration instead.
func TestReplicaofSurvivesRestart(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	host, port, _ := net.SplitHostPort(origin.Addr())
	b := redistest.StartT(t, "b", "--replicaof", host, port)
	c := redistest.StartT(t, "c", "--replicaof", host, port)
	waitConverged(t, origin, []*redistest.Server{b, c}, 30*time.Second)

	pp := startProxyProcess(t, origin.Addr())
	pcli := redis.NewClient(&redis.Options{Addr: pp.addr, MaxRetries: -1})
	defer pcli.Close()
	following := func(s *redistest.Server) func() bool {
		return func() bool {
			info, err := pcli.Info(context.Background(), "replication").Result()
			return err == nil && strings.Contains(info, "master_link_status:up") &&
				strings.Contains(info, "master_port:"+strconv.Itoa(s.Port)+"\r\n")
		}
	}
	redistest.Eventually(t, 30*time.Second, "proxy follows the origin", following(origin))
	bHost, bPort, _ := net.SplitHostPort(b.Addr())
	must(t, pcli.Do(context.Background(), "REPLICAOF", bHost, bPort).Err())
	redistest.Eventually(t, 30*time.Second, "proxy follows b", following(b))
	must(t, pcli.Do(context.Background(), "CONFIG", "REWRITE").Err()) // Sentinel's follow-up

	partial := b.InfoInt("stats", "sync_partial_ok")
	pp.Kill()
	for i := range 100 { // written while the proxy is down: resumed from b
		must(t, origin.Client().Set(context.Background(), "down"+strconv.Itoa(i), i, 0).Err())
	}
	pp.restart()
	redistest.Eventually(t, 30*time.Second, "after SIGKILL the proxy follows b again", following(b))
	if got := b.InfoInt("stats", "sync_partial_ok"); got <= partial || b.InfoInt("stats", "sync_full") != 0 {
		t.Fatalf("b: sync_partial_ok %d (was %d), sync_full %d: the restart was no partial resync", got, partial, b.InfoInt("stats", "sync_full"))
	}
	if info, _ := pcli.Info(context.Background(), "replproxy").Result(); !strings.Contains(info, "upstream_source:replicaof") {
		t.Fatalf("INFO does not say why it follows b:\n%s", info)
	}

	// A changed --upstream wins over the persisted REPLICAOF. c must hold
	// everything the proxy has, or its answer is rightly a full sync.
	waitConverged(t, origin, []*redistest.Server{b, c}, 30*time.Second)
	pp.Kill()
	for i, a := range pp.args {
		if a == "--upstream" {
			pp.args[i+1] = c.Addr()
		}
	}
	pp.restart()
	redistest.Eventually(t, 30*time.Second, "with a changed --upstream the proxy follows c", following(c))
	if info, _ := pcli.Info(context.Background(), "replproxy").Result(); !strings.Contains(info, "upstream_source:config") {
		t.Fatalf("INFO after the configuration won:\n%s", info)
	}
	if c.InfoInt("stats", "sync_full") != 0 {
		t.Fatal("c served a full sync: the proxy should have continued the shared history")
	}
}

// TestFullSyncRateLimit: with --full-sync-rate-limit 16mb, two replicas
// full-syncing a 64 MB snapshot together take at least 7 s (128 MB at
// 16 MB/s, less the first chunk), and the origin is not touched.
func TestFullSyncRateLimit(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin", "--rdbcompression", "no")
	must(t, origin.Client().Do(context.Background(), "DEBUG", "POPULATE", 65536, "big", 1024).Err())
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.FullSyncRateLimit = 16 << 20 })
	redistest.Eventually(t, 30*time.Second, "snapshot stored", func() bool {
		st := p.Status()
		return st.LinkUp && st.Snapshot != nil
	})
	if size := p.Status().Snapshot.Size; size < 64<<20 {
		t.Fatalf("snapshot of %d bytes: the test needs 64 MB", size)
	}
	start := time.Now()
	replicas := startReplicas(t, 2, p.addr)
	waitConverged(t, origin, replicas, 60*time.Second)
	if d := time.Since(start); d < 7*time.Second {
		t.Fatalf("two 64 MB full syncs under a 16 MB/s cap took %v", d)
	}
	if f := origin.InfoInt("stats", "total_forks"); f != 1 {
		t.Fatalf("the origin forked %d times", f)
	}
}

// TestAckPolicyReplicas: with --ack-policy replicas:2, WAIT 1 on the
// origin returns 1 only once both replicas behind the proxy have the
// write (checked right after it returns, with no retry); with one of
// them frozen, WAIT 1 2000 returns 0.
func TestAckPolicyReplicas(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.AckReplicas = 2 })
	replicas := startReplicas(t, 2, p.addr)
	waitConverged(t, origin, replicas, 30*time.Second)
	ctx := context.Background()
	conn := origin.Client().Conn() // WAIT counts this connection's writes
	defer conn.Close()
	for i := range 5 {
		key := "waited" + strconv.Itoa(i)
		must(t, conn.Set(ctx, key, i, 0).Err())
		n, err := conn.Do(ctx, "WAIT", 1, 5000).Int()
		if err != nil || n != 1 {
			t.Fatalf("WAIT 1 5000: %d, %v", n, err)
		}
		for _, r := range replicas {
			if v, err := r.Client().Get(ctx, key).Int(); err != nil || v != i {
				t.Fatalf("WAIT returned, but replica %d has %s = %v (%v)", r.Port, key, v, err)
			}
		}
	}
	must(t, replicas[1].Pause())
	defer func() { _ = replicas[1].Resume() }()
	must(t, conn.Set(ctx, "unwaited", 1, 0).Err())
	if n, err := conn.Do(ctx, "WAIT", 1, 2000).Int(); err != nil || n != 0 {
		t.Fatalf("WAIT 1 2000 with a replica frozen: %d, %v", n, err)
	}
}
