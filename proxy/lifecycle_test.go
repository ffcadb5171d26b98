package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/replproxy/replproxy/internal/faultproxy"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/upstream"
)

// TestSessionLifecycleRace starts and ends replica sessions for seconds
// while history resets, replication ID changes, REPLICAOF moves, INFO and
// finally a shutdown run against them: under -race, any unsynchronised
// session field shows.
func TestSessionLifecycleRace(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	alt, err := faultproxy.New(origin.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer alt.Close()
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := net.DialTimeout("tcp", p.addr, time.Second)
				if err != nil {
					continue
				}
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				fmt.Fprintf(c, "REPLCONF listening-port %d\r\nREPLCONF capa eof capa psync2\r\n", 20000+w*1000+i%1000)
				if i%3 == 0 {
					fmt.Fprintf(c, "PSYNC %s %d\r\n", p.position().Hist.ReplID, p.backlogEnd()+1)
				} else {
					fmt.Fprint(c, "PSYNC ? -1\r\n")
				}
				br := bufio.NewReader(c)
				_, _ = br.ReadString('\n')
				_, _ = br.ReadString('\n')
				c.Close()
			}
		})
	}
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			switch i % 4 {
			case 0:
				p.closeSessions("history_reset")
			case 1:
				p.dropTrimmedReplicas()
			case 2:
				_ = p.info()
				_ = p.Status()
			case 3:
				target := origin.Addr()
				if i%8 == 3 {
					target = alt.Addr()
				}
				p.moveUpstream(target)
			}
		}
	})
	time.Sleep(3 * time.Second)
	// Shut down while sessions are still starting.
	p.stop(t)
	close(stop)
	wg.Wait()
}

// TestReadersDoNotWaitForFsync: while the store fsyncs a reset (held by a
// hook until the test lets it go), INFO over the wire and Status (what
// /metrics reads) still answer.
func TestReadersDoNotWaitForFsync(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	_ = origin.Client().Set(context.Background(), "x", "1", 0).Err()
	var hold atomic.Bool
	held := make(chan struct{}, 1)
	release := make(chan struct{})
	hook := func(f *os.File) error {
		if hold.Load() && strings.HasSuffix(f.Name(), "TAG.tmp") { // the reset's tag: the backlog's lock is held
			select {
			case held <- struct{}{}:
			default:
			}
			<-release
		}
		return f.Sync()
	}
	// The guard off: the origin restarts empty, and this test wants the reset.
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.syncFile, c.GuardDisabled = hook, true })
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	released := sync.OnceFunc(func() { close(release) })
	defer released()
	hold.Store(true)
	if err := origin.Restart(); err != nil { // a new history: a full sync and a backlog reset
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(30 * time.Second):
		t.Fatal("the reset's fsync never came")
	}
	cli := redis.NewClient(&redis.Options{Addr: p.addr, ReadTimeout: 5 * time.Second})
	defer cli.Close()
	start := time.Now()
	info, err := cli.Info(context.Background(), "replication").Result()
	infoRTT := time.Since(start)
	if err != nil || !strings.Contains(info, "role:slave") {
		t.Fatalf("INFO during the fsync: %v %q", err, info)
	}
	start = time.Now()
	_ = p.Status()
	statusTime := time.Since(start)
	select {
	case <-release:
		t.Fatal("the fsync ended before INFO returned")
	default:
	}
	t.Logf("while the reset's fsync was held: INFO round trip %v, Status %v", infoRTT, statusTime)
	hold.Store(false)
	released()
	redistest.Eventually(t, 20*time.Second, "the new history is installed", func() bool {
		return p.linkUp() && p.Stats().UpstreamFullSyncs.Load() == 2
	})
}

// proxyGoroutines counts goroutines running this package's code, other
// than the caller's.
func proxyGoroutines() (int, string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	var sample string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || !strings.Contains(g, "replproxy/replproxy/proxy.") {
			continue // the caller is first
		}
		n++
		sample = g
	}
	return n, sample
}

// TestShutdownDuringRefresh: a shutdown while a snapshot refresh is being
// received returns promptly and cleanly, removes the temp file and leaves
// no goroutine of the daemon behind. Not parallel: it counts goroutines.
func TestShutdownDuringRefresh(t *testing.T) {
	before, _ := proxyGoroutines()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	dir := t.TempDir()
	p := startProxy(t, origin.Addr(), dir, func(c *Config) { c.BacklogSize, c.RefreshUpstream = 1<<20, upstream.RefreshUpstreamEager })
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	ctx := context.Background()
	// From now on the origin writes its RDBs slowly: 1 ms per key.
	if err := origin.Client().ConfigSet(ctx, "rdb-key-save-delay", "1000").Err(); err != nil {
		t.Fatal(err)
	}
	val := strings.Repeat("r", 16<<10)
	for i := range 40 { // 640 KB: past half the budget
		_ = origin.Client().Set(ctx, "r"+strconv.Itoa(i), val, 0).Err()
	}
	redistest.Eventually(t, 20*time.Second, "a refresh is being received", func() bool {
		return p.refreshing() && len(tempFiles(t, dir)) > 0
	})
	start := time.Now()
	p.stop(t)
	took := time.Since(start)
	if took > 5*time.Second {
		t.Errorf("shutdown took %v", took)
	}
	if tmp := tempFiles(t, dir); len(tmp) > 0 {
		t.Errorf("temp files left: %v", tmp)
	}
	var after int
	var sample string
	err := redistest.WaitFor(5*time.Second, func() bool {
		after, sample = proxyGoroutines()
		return after <= before
	})
	if err != nil {
		t.Fatalf("%d goroutines of the daemon before, %d after shutdown; one of them:\n%s", before, after, sample)
	}
	t.Logf("shutdown with a refresh in flight took %v", took)
}

// TestRaceBinaryKillCycles: the replproxy binary built with -race, in the
// demo topology (origin, proxy, three replicas) under load, survives 20
// SIGKILL/restart cycles with a burst of garbage connections in each and
// never reports a data race; the replicas converge and the origin forked
// once.
func TestRaceBinaryKillCycles(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "64mb")
	populate(t, origin)
	proc := startProxyBinary(t, raceBinary(t), origin.Addr())
	replicas := startReplicas(t, 3, proc.addr)
	waitConverged(t, origin, replicas, 60*time.Second)
	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 21)
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	pcli := redis.NewClient(&redis.Options{Addr: proc.addr, MaxRetries: -1})
	defer pcli.Close()
	rnd := rand.New(rand.NewPCG(9, 9))
	for round := range 20 {
		redistest.Eventually(t, 30*time.Second, fmt.Sprintf("proxy back (round %d)", round), func() bool {
			info, err := pcli.Info(context.Background(), "replication").Result()
			return err == nil && strings.Contains(info, "master_link_status:up") && strings.Contains(info, "state=online")
		})
		var garbage sync.WaitGroup
		for i := range 10 {
			size := 64 + rnd.IntN(4096)
			garbage.Go(func() {
				c, err := net.DialTimeout("tcp", proc.addr, time.Second)
				if err != nil {
					return
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(time.Second))
				junk := make([]byte, size)
				for j := range junk {
					junk[j] = byte(i*31 + j*7)
				}
				switch i % 4 {
				case 0:
					_, _ = c.Write(junk)
				case 1:
					_, _ = c.Write([]byte("*3\r\n$8\r\nREPLCONF\r\n")) // half a command, then silence
				case 2:
					_, _ = c.Write([]byte("PSYNC ? -1\r\n")) // a replica that never reads
				case 3:
					_, _ = c.Write([]byte("INFO\r\nROLE\r\nPSYNC nonsense x\r\n"))
					_, _ = io.Copy(io.Discard, c)
				}
			})
		}
		garbage.Wait()
		proc.Kill()
		proc.restart()
	}
	stopLoad()
	waitConverged(t, origin, replicas, 120*time.Second)
	b, err := os.ReadFile(proc.logPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "WARNING: DATA RACE"); n > 0 {
		i := strings.Index(string(b), "WARNING: DATA RACE")
		t.Fatalf("%d data races reported; the first:\n%s", n, string(b)[i:min(len(b), i+4000)])
	}
	if got := origin.InfoInt("stats", "sync_full"); got != 1 {
		t.Fatalf("origin sync_full %d", got)
	}
}

// raceBinary is the replproxy binary with the race detector, whatever
// REPLPROXY_TEST_NORACE says.
func raceBinary(t *testing.T) string {
	t.Helper()
	if os.Getenv("REPLPROXY_TEST_NORACE") == "" {
		return redistest.ProxyBinary(t)
	}
	path, err := redistest.BuildProxy(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	return path
}
