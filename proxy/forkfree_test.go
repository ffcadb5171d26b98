package proxy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/upstream"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// Tests of the promise that the origin forks only when a replica truly
// needs a full sync: not after a restart, not because replicas cannot serve
// a refresh, not for nothing after a cut.

// steadyLoad writes at about rate bytes/s of size-byte values until the
// returned stop is called (which joins it).
func steadyLoad(t *testing.T, cli *redis.Client, rate int64, size int) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { overwrite(t, cli, done, 1<<62, rate, size) })
	var once sync.Once
	stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// killLoopParams: the CI run by default; REPLPROXY_KILL_LOOP="kills=100,
// budget=4gb,rate=35mb,keys=100000" runs the scenario at full size.
type killLoopParams struct {
	kills  int
	budget string
	rate   int64
	keys   int // 1 KB values populated before the proxy starts
}

func killLoopFromEnv(t *testing.T) killLoopParams {
	kp := killLoopParams{kills: 30, budget: "48mb", rate: 2 << 20, keys: 30000}
	for _, kv := range strings.Split(os.Getenv("REPLPROXY_KILL_LOOP"), ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "kills":
			kp.kills, _ = strconv.Atoi(v)
		case "budget":
			kp.budget = v
		case "keys":
			kp.keys, _ = strconv.Atoi(v)
		case "rate":
			n, err := strconv.ParseInt(strings.TrimSuffix(v, "mb"), 10, 64)
			if err != nil {
				t.Fatalf("REPLPROXY_KILL_LOOP rate %q: want NNmb", v)
			}
			kp.rate = n << 20
		}
	}
	return kp
}

// TestKillLoopForksOnce: replproxy SIGKILLed at random moments under a
// steady write load, with replicas joining meanwhile, at default flags
// (but for the budget, small enough in CI that a refresh is due at every
// restart): the origin serves one full sync in all, the proxy's first.
// A restart must not send the refresh that falls due to the upstream
// before the replicas are back, nor may a crash loop ask faster than the
// fork backoff.
func TestKillLoopForksOnce(t *testing.T) {
	t.Parallel()
	kp := killLoopFromEnv(t)
	// The origin's backlog covers a restart's gap at this rate.
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "256mb")
	populate(t, origin)
	// A dataset whose refresh takes longer than most kills leave it, as
	// in production: refreshes are cut, and fall due again at restarts.
	if err := origin.Client().Do(context.Background(), "DEBUG", "POPULATE", kp.keys, "big", 1000).Err(); err != nil {
		t.Fatal(err)
	}
	pp := startProxyProcess(t, origin.Addr(), "--backlog-size", kp.budget)
	replicas := startReplicas(t, 2, pp.addr)
	waitConverged(t, origin, replicas, 2*time.Minute)
	stop := steadyLoad(t, origin.Client(), kp.rate, 16<<10)
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d: %d kills at a %s budget under %d MB/s", seed, kp.kills, kp.budget, kp.rate>>20)
	for i := range kp.kills {
		// The fault schedule: a random moment, not a synchronisation.
		time.Sleep(time.Duration(200+rng.IntN(1300)) * time.Millisecond)
		pp.Kill()
		pp.restart()
		if i == kp.kills/3 || i == 2*kp.kills/3 {
			replicas = append(replicas, startReplicas(t, 1, pp.addr)...)
		}
	}
	stop()
	waitConverged(t, origin, replicas, 3*time.Minute)
	full, forks := origin.InfoInt("stats", "sync_full"), origin.InfoInt("stats", "total_forks")
	log, _ := os.ReadFile(pp.logPath)
	due := strings.Count(string(log), "snapshot refresh started")
	t.Logf("origin sync_full %d, total_forks %d, stream %d MB; proxy log: %d refreshes started, %d from replicas, %d upstream full resyncs",
		full, forks, origin.InfoInt("replication", "master_repl_offset")>>20, due,
		strings.Count(string(log), `msg="snapshot refreshed" source=replica`), strings.Count(string(log), "upstream full resync"))
	if full != 1 || forks != 1 {
		t.Fatalf("the origin served %d full syncs (%d forks) over %d proxy kills; want 1", full, forks, kp.kills)
	}
	if due == 0 {
		t.Fatal("no refresh fell due: the run did not test what it is for (a longer run or a smaller budget)")
	}
}

// TestRefreshSourcesThatCannotServe: beside a replica that can serve, one
// in Redis' default protected mode on another host (it answers -DENIED)
// and one announced at an address nobody listens on. Under writes that
// outgrow the budget many times, refreshes come from the good replica and
// the origin forks once in all; each of the other two is named once in
// the log with its reply and advice, counted, and shown in INFO.
func TestRefreshSourcesThatCannotServe(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	// A budget that holds a refresh's worth of stream even when the suite's
	// load slows refreshes down: with 2 MB at 10 MB/s a refresh slowed to
	// 0.4 s lapsed its own snapshot, the trim left the good replica behind
	// and it needed a full sync itself (CI). The stream still outgrows the
	// budget ten times.
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.Listen, c.BacklogSize = "0.0.0.0:0", 8<<20 })
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port()))
	good := startReplicas(t, 1, local)
	nobody, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	unreachable := startReplicas(t, 1, local, "--replica-announce-port", strconv.Itoa(nobody))
	protected := redistest.StartInNetnsT(t, nil)
	if out, err := protected.Cli("REPLICAOF", protected.HostIP, strconv.Itoa(p.port())); err != nil || out != "OK" {
		t.Fatalf("REPLICAOF in the namespace: %q, %v", out, err)
	}
	redistest.Eventually(t, 30*time.Second, "three replicas online", func() bool {
		n := 0
		for _, r := range p.Status().Replicas {
			if r.State == vocab.ReplicaOnline {
				n++
			}
		}
		return n == 3
	})
	waitConverged(t, origin, append(good, unreachable...), 30*time.Second)
	overwrite(t, origin.Client(), nil, 80<<20, 10<<20, 16<<10)
	redistest.Eventually(t, 60*time.Second, "refreshes from the good replica", func() bool {
		return p.Stats().RefreshAttempts.Load("replica/ok") >= 3
	})
	late := startReplicas(t, 1, local)
	waitConverged(t, origin, append(append(good, unreachable...), late...), 60*time.Second)
	if full, forks := origin.InfoInt("stats", "sync_full"), origin.InfoInt("stats", "total_forks"); full != 1 || forks != 1 {
		t.Fatalf("origin sync_full %d, total_forks %d; want 1 and 1", full, forks)
	}
	unreachableAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(nobody))
	want := map[string]vocab.SourceRefusal{protected.Addr: vocab.RefusedDenied, unreachableAddr: vocab.RefusedUnreachable}
	refused := map[string]vocab.SourceRefusal{}
	for _, r := range p.Status().RefusedSources {
		refused[r.Addr] = r.Reason
	}
	for addr, reason := range want {
		if refused[addr] != reason {
			t.Errorf("refused sources %v: want %s refused as %s", refused, addr, reason)
		}
		if n := p.Stats().SourceRefusals.Load(reason); n < 1 {
			t.Errorf("no %s refusal counted", reason)
		}
		lines := 0
		for _, l := range strings.Split(p.logBuf.String(), "\n") {
			if strings.Contains(l, "replica cannot serve snapshot refreshes") && strings.Contains(l, "replica="+addr) {
				lines++
				if !strings.Contains(l, "advice=") {
					t.Errorf("no advice in %q", l)
				}
			}
		}
		if lines != 1 {
			t.Errorf("%s is named in %d log lines; want 1", addr, lines)
		}
	}
	info := p.info("replproxy")
	if !strings.Contains(info, "refresh_sources_refused:2") || !strings.Contains(info, "reason=denied") {
		t.Errorf("INFO does not show the refused sources:\n%s", info)
	}
	if !strings.Contains(p.logBuf.String(), "protected mode") || !strings.Contains(p.logBuf.String(), "replica-announce-ip") {
		t.Error("the advice does not name protected mode and replica-announce-ip")
	}
}

// TestRefreshAfterRestartWaitsForReplicas: a proxy restarted with a lapsed
// snapshot and a replica asking for a full sync at once gives the other
// replicas time to reconnect before it asks the upstream: the refresh
// comes from a replica and the origin does not fork.
func TestRefreshAfterRestartWaitsForReplicas(t *testing.T) {
	t.Parallel()
	origin, p, replicas, dir := refreshRig(t, 2, func(c *Config) { c.RefreshMode = upstream.RefreshLazy })
	overwrite(t, origin.Client(), nil, 8<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 30*time.Second, "the snapshot lapses", func() bool { return p.Status().SnapshotStale() })
	waitSynced(t, origin, p.backlogEnd, 30*time.Second)
	p.stop(t)
	p2 := startProxy(t, origin.Addr(), dir, func(c *Config) { c.BacklogSize, c.RefreshMode = 2<<20, upstream.RefreshLazy })
	// The new replica asks first, while the others still point elsewhere.
	late := startReplicas(t, 1, p2.addr)
	redistest.Eventually(t, 10*time.Second, "the refresh waits for replicas to reconnect", func() bool {
		return strings.Contains(p2.logBuf.String(), "waiting for replicas to reconnect before asking the upstream")
	})
	for _, r := range replicas {
		if err := r.Client().ReplicaOf(context.Background(), "127.0.0.1", strconv.Itoa(p2.port())).Err(); err != nil {
			t.Fatal(err)
		}
	}
	waitConverged(t, origin, append(replicas, late...), 90*time.Second)
	if forks := origin.InfoInt("stats", "total_forks"); forks != 1 {
		t.Fatalf("origin total_forks %d; want 1 (the refresh asked the upstream before the replicas were back)", forks)
	}
	if p2.Stats().RefreshAttempts.Load("replica/ok") < 1 {
		t.Fatal("no refresh from a replica after the restart")
	}
}

// TestBurstCutForksOnce: a write burst that replproxy cannot take (it is
// paused three quarters of the time, as a starved or stalled process is)
// makes the origin cut it at its client-output-buffer-limit. A full sync
// asked while the burst runs would be cut the same way, a fork for
// nothing: the proxy waits for the burst to calm, then asks once. At most
// one origin fork follows the cut; the replica converges; the log gives
// the origin settings that would have carried the burst.
func TestBurstCutForksOnce(t *testing.T) {
	// Not parallel: its writers take both cores for 12 s, which would
	// starve the load-measuring tests running beside it.
	origin := redistest.StartT(t, "origin", "--client-output-buffer-limit", "replica 16mb 8mb 5", "--repl-diskless-sync-delay", "0")
	populate(t, origin)
	pp := startProxyProcess(t, origin.Addr(), "--backlog-size", "256mb", "--full-sync-calm-wait", "2m")
	replicas := startReplicas(t, 1, pp.addr)
	waitConverged(t, origin, replicas, 60*time.Second)
	before := origin.InfoInt("stats", "sync_full")

	// The burst: 100 KB values as fast as four pipelined writers go, for
	// a bounded time.
	var load sync.WaitGroup
	burstEnd := time.Now().Add(12 * time.Second)
	val := strings.Repeat("v", 100<<10)
	for w := range 4 {
		load.Go(func() {
			ctx := context.Background()
			for i := 0; time.Now().Before(burstEnd); i++ {
				pipe := origin.Client().Pipeline()
				for k := range 16 {
					pipe.Set(ctx, fmt.Sprintf("burst:%d:%d", w, (i*16+k)%250), val, 0)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					t.Errorf("burst: %v", err)
					return
				}
			}
		})
	}
	// A slow proxy: paused 300 ms of every 400 until the burst ends.
	paused := make(chan struct{})
	var pauser sync.WaitGroup
	pauser.Go(func() {
		defer close(paused)
		for time.Now().Before(burstEnd) {
			_ = pp.Notify(syscall.SIGSTOP)
			time.Sleep(300 * time.Millisecond) // the fault's duty cycle, not synchronisation
			_ = pp.Notify(syscall.SIGCONT)
			time.Sleep(100 * time.Millisecond)
		}
	})
	load.Wait()
	pauser.Wait()
	_ = pp.Notify(syscall.SIGCONT)
	waitConverged(t, origin, replicas, 3*time.Minute)
	log, _ := os.ReadFile(pp.logPath)
	if !origin.LogContains("overcoming of output buffer limits") {
		t.Fatal("the origin never cut the proxy: the burst did not outrun it")
	}
	forks := origin.InfoInt("stats", "sync_full") - before
	t.Logf("origin full syncs after the burst: %d; proxy waits for calm: %d", forks, strings.Count(string(log), "holding the next full sync"))
	if forks > 1 {
		t.Fatalf("%d origin full syncs followed the burst's cut; want at most 1", forks)
	}
	if !strings.Contains(string(log), "holding the next full sync until the burst calms") ||
		!strings.Contains(string(log), "origin settings that would have carried this burst") {
		t.Fatal("the wait for the burst to calm, or the advice after it, is not logged")
	}
}

// TestRefreshFromPasswordedReplicaOnAnotherHost: the fix the advice names
// for a protected replica works: a replica on another address (a network
// namespace of the test's own) with a password, and the proxy with
// --replica-auth-password, serves the refreshes; the origin forks once.
func TestRefreshFromPasswordedReplicaOnAnotherHost(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) {
		c.Listen, c.BacklogSize, c.ReplicaAuthPassword = "0.0.0.0:0", 2<<20, "s3cret"
	})
	remote := redistest.StartInNetnsT(t, func(hostIP string) []string {
		return []string{"--requirepass", "s3cret", "--replicaof", hostIP, strconv.Itoa(p.port())}
	})
	redistest.Eventually(t, 30*time.Second, "the remote replica online", func() bool {
		r := p.Status().Replicas
		return len(r) == 1 && r[0].State == vocab.ReplicaOnline
	})
	overwrite(t, origin.Client(), nil, 12<<20, 8<<20, 16<<10)
	redistest.Eventually(t, 60*time.Second, "a refresh from the remote replica", func() bool {
		return p.Stats().RefreshAttempts.Load("replica/ok") >= 1
	})
	late := startReplicas(t, 1, net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port())))
	waitConverged(t, origin, late, 60*time.Second)
	if full, forks := origin.InfoInt("stats", "sync_full"), origin.InfoInt("stats", "total_forks"); full != 1 || forks != 1 {
		t.Fatalf("origin sync_full %d, total_forks %d; want 1 and 1", full, forks)
	}
	if n := len(p.Status().RefusedSources); n != 0 {
		t.Fatalf("%d sources refused: %+v", n, p.Status().RefusedSources)
	}
	if out, err := remote.Cli("-a", "s3cret", "--no-auth-warning", "DBSIZE"); err != nil || out == "0" {
		t.Fatalf("the remote replica holds %q keys (%v)", out, err)
	}
}

// TestDemandRefreshNotDelayedByBudgetFailures: with no replica to serve,
// the refreshes the budget calls for fail and back off (20 s after the
// third); the snapshot lapses at twice the budget. A replica that then
// needs a full sync gets its refresh from the upstream at once, not after
// the budget's backoff.
func TestDemandRefreshNotDelayedByBudgetFailures(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.BacklogSize = 1 << 20 })
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	stop := steadyLoad(t, origin.Client(), 1<<20, 16<<10)
	redistest.Eventually(t, 60*time.Second, "three failed budget refreshes and a lapsed snapshot", func() bool {
		return p.Stats().RefreshFailures.Load() >= 3 && p.Status().SnapshotStale()
	})
	stop()
	if n := p.Stats().RefreshAttempts.Load("upstream/ok"); n != 0 {
		t.Fatalf("%d budget refreshes asked the upstream", n)
	}
	replica := startReplicas(t, 1, p.addr)
	redistest.Eventually(t, 12*time.Second, "the replica's refresh from the upstream", func() bool {
		return p.Stats().RefreshAttempts.Load("upstream/ok") >= 1
	})
	waitConverged(t, origin, replica, 30*time.Second)
	if full := origin.InfoInt("stats", "sync_full"); full != 2 {
		t.Fatalf("origin sync_full %d; want 2 (the first sync and the replica's refresh)", full)
	}
}
