package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/faultproxy"
	"github.com/replproxy/replproxy/internal/loadgen"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// runMixedLoad runs loadgen's mixed workload (all data types, expiries,
// several DBs, MULTI/EXEC, Lua, a 300 KB value) until stop is closed.
func runMixedLoad(t *testing.T, cli *redis.Client, stop <-chan struct{}, seed uint64) *sync.WaitGroup {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		<-stop
		cancel()
	})
	wg.Go(func() {
		if err := loadgen.Mixed(ctx, cli, 0, seed, nil); err != nil {
			t.Errorf("load: %v", err)
		}
	})
	return &wg
}

func startReplicas(t *testing.T, n int, master string, extra ...string) []*redistest.Server {
	t.Helper()
	host, port, _ := net.SplitHostPort(master)
	out := make([]*redistest.Server, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			out[i] = redistest.StartT(t, fmt.Sprintf("replica%d", i), append([]string{"--replicaof", host, port}, extra...)...)
		})
	}
	wg.Wait()
	return out
}

// waitConverged waits until every replica has the origin's offset and
// digest at the same moment. Expiring keys keep the origin moving for a
// while after writes stop, so both are compared together and retried.
func waitConverged(t *testing.T, origin *redistest.Server, replicas []*redistest.Server, timeout time.Duration) {
	t.Helper()
	var detail string
	err := redistest.WaitFor(timeout, func() bool {
		off := origin.InfoInt("replication", "master_repl_offset")
		want, err := origin.Digest()
		if err != nil {
			return false
		}
		for _, r := range replicas {
			got, err := r.Digest()
			roff := r.InfoInt("replication", "master_repl_offset")
			// An empty origin and a replica that never synced have the same
			// digest and offset 0: the link must be up too.
			info, ierr := r.Info("replication")
			if err != nil || ierr != nil || info["master_link_status"] != "up" || got != want || roff != off {
				detail = fmt.Sprintf("replica %d at %d digest %s; origin at %d digest %s", r.Port, roff, got, off, want)
				return false
			}
		}
		return origin.InfoInt("replication", "master_repl_offset") == off
	})
	if err != nil {
		t.Fatalf("replicas do not converge to the origin: %v: %s", err, detail)
	}
}

// TestTenReplicasConverge: ten stock replicas behind one proxy converge to
// the origin under a mixed load; the origin forks once.
func TestTenReplicasConverge(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	p := startProxy(t, origin.Addr(), t.TempDir())
	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 11)
	replicas := startReplicas(t, 10, p.addr)
	redistest.Eventually(t, 60*time.Second, "all replicas online at the proxy", func() bool {
		n := 0
		for _, r := range p.Status().Replicas {
			if r.State == "online" {
				n++
			}
		}
		return n == 10
	})
	redistest.Eventually(t, 30*time.Second, "load covers the big value", func() bool {
		return origin.Client().Exists(context.Background(), "big").Val() == 1
	})
	close(stop)
	wg.Wait()
	waitConverged(t, origin, replicas, 60*time.Second)
	if got := origin.InfoInt("stats", "sync_full"); got != 1 {
		t.Fatalf("origin sync_full %d", got)
	}
	if got := origin.InfoInt("stats", "total_forks"); got != 1 {
		t.Fatalf("origin total_forks %d", got)
	}
	if got := p.Stats().SyncFull.Load(); got != 10 {
		t.Fatalf("proxy served %d full syncs, want 10", got)
	}
}

// TestReplicaRestartPartial: a replica shut down with SAVE while the origin
// takes 25 MB of writes resumes with a partial resync from the proxy.
func TestReplicaRestartPartial(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir())
	replicas := startReplicas(t, 1, p.addr)
	r := replicas[0]
	waitConverged(t, origin, replicas, 30*time.Second)
	_ = r.Client().Do(context.Background(), "SHUTDOWN", "SAVE").Err()
	redistest.Eventually(t, 10*time.Second, "replica exits", r.Exited)
	ctx := context.Background()
	start := origin.InfoInt("replication", "master_repl_offset")
	val := strings.Repeat("z", 64<<10)
	for i := 0; origin.InfoInt("replication", "master_repl_offset")-start < 25<<20; i++ {
		pipe := origin.Client().Pipeline()
		for j := range 40 {
			pipe.Set(ctx, fmt.Sprintf("w%d", (i*40+j)%500), val, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fullBefore := p.Stats().SyncFull.Load()
	logBefore, _ := os.ReadFile(r.Log)
	if err := r.Restart(); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, origin, replicas, 30*time.Second)
	// Only what the restarted replica logged counts: its first sync logged
	// "Partial resynchronization not possible" already.
	logAfter, _ := os.ReadFile(r.Log)
	if after := strings.TrimPrefix(string(logAfter), string(logBefore)); !strings.Contains(after, "Successful partial resynchronization with master") {
		t.Fatalf("restarted replica did not partially resync:\n%s", r.LogTail(20))
	}
	if p.Stats().SyncFull.Load() != fullBefore {
		t.Fatal("the restarted replica took a full sync")
	}
}

// TestReplicaLinkCuts: a replica link cut mid-stream continues; one cut
// inside the payload retries cleanly.
func TestReplicaLinkCuts(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	fp, err := faultproxy.New(p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer fp.Close()
	fp.CutAfter(p.position().Snap.Size / 2)
	replicas := startReplicas(t, 1, fp.Addr())
	redistest.Eventually(t, 20*time.Second, "a payload cut is seen", func() bool {
		return p.Stats().SyncFull.Load() >= 2
	})
	fp.CutAfter(0)
	waitConverged(t, origin, replicas, 30*time.Second)
	ok := p.Stats().SyncPartialOK.Load()
	fp.CutAll()
	_ = origin.Client().Set(context.Background(), "after-cut", "1", 0).Err()
	waitConverged(t, origin, replicas, 30*time.Second)
	if p.Stats().SyncPartialOK.Load() != ok+1 {
		t.Fatalf("partial syncs %d, want %d", p.Stats().SyncPartialOK.Load(), ok+1)
	}
}

// TestProxyKilledThreeTimes: replicas behind a proxy SIGKILLed and restarted
// three times under load resume with partial syncs; the origin never syncs again.
func TestProxyKilledThreeTimes(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "64mb")
	populate(t, origin)
	proc := startProxyProcess(t, origin.Addr())
	replicas := startReplicas(t, 3, proc.addr)
	waitConverged(t, origin, replicas, 60*time.Second)
	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 12)
	for round := range 3 {
		waitOffsetGrows(t, origin, 64<<10) // each kill lands in a flowing stream
		proc.Kill()
		proc.restart()
		// A replica may still report the killed link as up for a moment, so
		// "back" means: it logged this round's partial resync and is up.
		redistest.Eventually(t, 30*time.Second, fmt.Sprintf("replicas resynced (round %d)", round), func() bool {
			for _, r := range replicas {
				b, _ := os.ReadFile(r.Log)
				if strings.Count(string(b), "Successful partial resynchronization") < round+1 ||
					mustInfo(t, r, "replication")["master_link_status"] != "up" {
					return false
				}
			}
			return true
		})
	}
	close(stop)
	wg.Wait()
	waitConverged(t, origin, replicas, 60*time.Second)
	if got := origin.InfoInt("stats", "sync_full"); got != 1 {
		t.Fatalf("origin sync_full %d", got)
	}
	for _, r := range replicas {
		b, _ := os.ReadFile(r.Log)
		full := strings.Count(string(b), "Full resync from master")
		partial := strings.Count(string(b), "Successful partial resynchronization")
		if full != 1 || partial < 3 {
			t.Fatalf("replica %d: %d full, %d partial resyncs", r.Port, full, partial)
		}
	}
}

func rssKB(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	return 0
}

// TestStoppedReplicaDoesNotSlowOthers: a replica SIGSTOPped for 30 s under
// load does not delay the others, the proxy's memory does not grow with its
// backlog, and it catches up after SIGCONT.
func TestStoppedReplicaDoesNotSlowOthers(t *testing.T) {
	// Not parallel: it measures how far a load gets a stopped replica
	// behind, which the suite's other tests would starve.
	origin := redistest.StartT(t, "origin")
	proc := startProxyProcess(t, origin.Addr(), "--replica-timeout", "120s")
	replicas := startReplicas(t, 3, proc.addr)
	waitConverged(t, origin, replicas, 30*time.Second)
	slow, fast := replicas[0], replicas[1:]
	if err := slow.Pause(); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	n := load(t, origin.Client(), stop, 5)
	pid := proc.PID()
	rssStart := rssKB(t, pid)
	ctx := context.Background()
	var worst time.Duration
	offStart := origin.InfoInt("replication", "master_repl_offset")
	pausedAt := time.Now()
	for i := 0; time.Since(pausedAt) < 30*time.Second; i++ {
		marker := strconv.Itoa(i)
		if err := origin.Client().Set(ctx, "marker", marker, 0).Err(); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		for _, r := range fast {
			redistest.Eventually(t, 5*time.Second, "marker reaches a fast replica", func() bool {
				return r.Client().Get(ctx, "marker").Val() == marker
			})
		}
		worst = max(worst, time.Since(t0))
		time.Sleep(200 * time.Millisecond) // marker cadence, not synchronisation
	}
	close(stop)
	rssEnd := rssKB(t, pid)
	behind := origin.InfoInt("replication", "master_repl_offset") - offStart
	t.Logf("stopped replica fell %d MB behind; worst marker lag on others %v; proxy RSS %d -> %d KB; %d commands",
		behind>>20, worst, rssStart, rssEnd, n.Load())
	// Each marker had to reach the running replicas within 5 s (above): a
	// stopped replica that held them up would fail there. The worst lag is
	// reported, not asserted: on a shared 2-core machine it is noise.
	if behind < 20<<20 {
		t.Errorf("load too light to tell: only %d bytes behind", behind)
	}
	// A race-built proxy's RSS grows by ~14 MB over this run whatever the
	// stopped replica's distance (measured at 65 to 84 MB behind): that
	// much is not the backlog.
	if growth := (rssEnd - rssStart) << 10; growth > behind/2 && growth > 24<<20 {
		t.Errorf("proxy RSS grew by %d bytes while a replica fell %d bytes behind", growth, behind)
	}
	if err := slow.Resume(); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, origin, replicas, 60*time.Second)
}

// TestLoadModesAndAuth: replicas with diskless load disabled and swapdb both
// sync; with --requirepass, a replica with masterauth syncs and one without
// is refused.
func TestLoadModesAndAuth(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.RequirePass = "s3cret" })
	good := append(startReplicas(t, 1, p.addr, "--repl-diskless-load", "disabled", "--masterauth", "s3cret"),
		startReplicas(t, 1, p.addr, "--repl-diskless-load", "swapdb", "--masterauth", "s3cret")...)
	bad := startReplicas(t, 1, p.addr)[0]
	_ = origin.Client().Set(context.Background(), "after", "1", 0).Err()
	waitConverged(t, origin, good, 30*time.Second)
	redistest.Eventually(t, 15*time.Second, "replica without masterauth refused", func() bool {
		return bad.LogContains("NOAUTH") || bad.LogContains("Authentication required")
	})
	if mustInfo(t, bad, "replication")["master_link_status"] != "down" {
		t.Fatal("replica without masterauth got a link")
	}
	for _, r := range p.Status().Replicas {
		if r.State == "online" && r.Port == bad.Port {
			t.Fatal("unauthenticated replica is online")
		}
	}
}

// TestTieringAndRDBDump: a second proxy whose upstream is the first serves
// replicas that converge to the origin; redis-cli --rdb against a proxy
// writes the stored snapshot, byte for byte, and it loads into a stock server
// with the snapshot's key count.
func TestTieringAndRDBDump(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	p1 := startProxy(t, origin.Addr(), t.TempDir())
	p2 := startProxy(t, p1.addr, t.TempDir())
	replicas := startReplicas(t, 2, p2.addr)
	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 13)
	redistest.Eventually(t, 30*time.Second, "load runs through both tiers", func() bool {
		return origin.InfoInt("replication", "master_repl_offset") > 200000
	})
	close(stop)
	wg.Wait()
	waitConverged(t, origin, replicas, 60*time.Second)
	if p1.position().Hist.ReplID != p2.position().Hist.ReplID {
		t.Fatal("tiers disagree on the replication ID")
	}

	// A dump taken now loads into a stock server with the origin's data.
	rdbPath := filepath.Join(t.TempDir(), "dump.rdb")
	out, err := exec.Command("redis-cli", "-p", strconv.Itoa(p2.port()), "--rdb", rdbPath).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --rdb: %v\n%s", err, out)
	}
	// The dump is the proxy's snapshot (taken at its offset, not now): it
	// must be byte-for-byte that file and load into a stock server.
	f, err := os.ReadFile(rdbPath)
	if err != nil {
		t.Fatal(err)
	}
	snap := p2.position().Snap
	stored, err := os.ReadFile(filepath.Join(p2.Config().DataDir, "snapshots", snap.Name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f, stored) {
		t.Fatalf("dump (%d bytes) differs from the stored snapshot (%d bytes)", len(f), len(stored))
	}
	dumpDir := filepath.Dir(rdbPath)
	loaded := redistest.StartT(t, "loaded", "--dir", dumpDir, "--dbfilename", "dump.rdb")
	if loaded.InfoInt("persistence", "loading") != 0 {
		t.Fatal("still loading")
	}
	stats, err := snapshot.ScanFile(t.Context(), filepath.Join(p2.Config().DataDir, "snapshots"), snap, snapshot.ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var keys int64
	for _, s := range stats {
		keys += s.Keys
	}
	var loadedKeys int64
	for _, n := range dbsizes(t, loaded) {
		loadedKeys += n
	}
	if loadedKeys != keys || keys == 0 {
		t.Fatalf("loaded dump holds %d keys, snapshot %d", loadedKeys, keys)
	}
}

// TestBadInput: garbage, oversized arguments, nonsense PSYNC and idle
// connections get an error or a close, and never disturb a live replica.
func TestBadInput(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir())
	replicas := startReplicas(t, 1, p.addr)
	waitConverged(t, origin, replicas, 30*time.Second)
	send := func(payload string) string {
		conn, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Write([]byte(payload)); err != nil {
			return "write error: " + err.Error()
		}
		line, _ := bufio.NewReader(conn).ReadString('\n')
		return line
	}
	cases := map[string]string{
		"garbage":            "\x00\x01\x02\xff\r\n",
		"bad multibulk":      "*abc\r\n",
		"too many args":      "*100000\r\n",
		"huge bulk":          "*1\r\n$999999999\r\n",
		"long inline":        strings.Repeat("a", 100<<10) + "\r\n",
		"psync bad id":       "PSYNC nonsense 5\r\n",
		"psync bad offset":   "PSYNC " + strings.Repeat("a", 40) + " xyz\r\n",
		"psync failover":     "PSYNC " + p.position().Hist.ReplID + " 1 FAILOVER\r\n",
		"replconf odd":       "REPLCONF listening-port\r\n",
		"replconf unknown":   "REPLCONF bogus 1\r\n",
		"data command":       "SET a b\r\n",
		"hello 3":            "HELLO 3\r\n",
		"unbalanced quotes":  "PING \"abc\r\n",
		"negative bulk size": "*1\r\n$-5\r\n",
		"command over 1 MB":  "*20\r\n" + strings.Repeat("$65536\r\n"+strings.Repeat("x", 65536)+"\r\n", 20),
	}
	for name, payload := range cases {
		reply := send(payload)
		if name == "psync bad id" {
			// A nonsense ID is a full sync request: it gets one.
			if !strings.HasPrefix(reply, "+FULLRESYNC") {
				t.Errorf("%s: %q", name, reply)
			}
			continue
		}
		if !strings.HasPrefix(reply, "-") && reply != "" {
			t.Errorf("%s: reply %q, want an error or a close", name, reply)
		}
	}
	// Idle and half-open connections cost nothing and change nothing.
	var idle []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
		_, _ = c.Write([]byte("*3\r\n$3\r\nSET\r\n")) // half a command
	}
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	if got := send("PING\r\n"); got != "+PONG\r\n" {
		t.Fatalf("PING: %q", got)
	}
	_ = origin.Client().Set(context.Background(), "still", "flowing", 0).Err()
	waitConverged(t, origin, replicas, 20*time.Second)
	if n := p.Stats().SyncFull.Load(); n != 2 { // the replica and "psync bad id"
		t.Fatalf("full syncs %d", n)
	}
	for _, r := range p.Status().Replicas {
		if r.Port == replicas[0].Port && r.State != "online" {
			t.Fatalf("live replica disturbed: %+v", r)
		}
	}
}

// TestTrimmedReplicaDropped: a stopped replica whose position is trimmed
// away is disconnected at once with a counted reason, and resyncs after.
func TestTrimmedReplicaDropped(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.BacklogSize = 1 << 20 })
	replicas := startReplicas(t, 1, p.addr)
	waitConverged(t, origin, replicas, 30*time.Second)
	if err := replicas[0].Pause(); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	load(t, origin.Client(), stop, 9)
	redistest.Eventually(t, 60*time.Second, "stopped replica dropped for being trimmed", func() bool {
		return p.Stats().Disconnects.Load(vocab.DownOffsetTrimmed) >= 1
	})
	close(stop)
	if !strings.Contains(p.logBuf.String(), "fell behind the backlog front") {
		t.Fatal("no log line for the trimmed replica")
	}
	full := p.Stats().SyncFull.Load()
	if err := replicas[0].Resume(); err != nil {
		t.Fatal(err)
	}
	waitConverged(t, origin, replicas, 60*time.Second)
	if p.Stats().SyncFull.Load() <= full {
		t.Fatal("the trimmed replica resumed without a full sync")
	}
}

// TestServingWithoutUpstream: before the first snapshot a replica is held
// with keepalives (it would time out in 2s without them); while the
// upstream is down, a replica that reconnects still gets +CONTINUE.
func TestServingWithoutUpstream(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	up, err := faultproxy.New(origin.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	up.Refuse(true)
	p := startProxy(t, up.Addr(), t.TempDir())
	down, err := faultproxy.New(p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	replicas := startReplicas(t, 1, down.Addr(), "--repl-timeout", "2")
	var held int64
	redistest.Eventually(t, 10*time.Second, "replica waits for a snapshot", func() bool {
		for _, r := range p.Status().Replicas {
			if r.State == "wait_bgsave" {
				held = r.ID
				return true
			}
		}
		return false
	})
	// The same session stays held for well over the replica's repl-timeout:
	// checked throughout, so a reconnect in between cannot slip by.
	for heldSince := time.Now(); time.Since(heldSince) < 5*time.Second; time.Sleep(100 * time.Millisecond) {
		st := p.Status()
		if len(st.Replicas) != 1 || st.Replicas[0].ID != held || st.Replicas[0].State != "wait_bgsave" {
			t.Fatalf("held replica reconnected or moved after %v: %+v", time.Since(heldSince), st.Replicas)
		}
	}
	up.Refuse(false)
	waitConverged(t, origin, replicas, 30*time.Second)

	// Upstream down: the backlog still serves a partial resync.
	up.Refuse(true)
	up.CutAll()
	redistest.Eventually(t, 10*time.Second, "upstream link down", func() bool { return !p.linkUp() })
	ok := p.Stats().SyncPartialOK.Load()
	down.CutAll()
	redistest.Eventually(t, 20*time.Second, "replica continues from the backlog", func() bool {
		return p.Stats().SyncPartialOK.Load() == ok+1 && mustInfo(t, replicas[0], "replication")["master_link_status"] == "up"
	})
	if p.Stats().SyncFull.Load() != 1 {
		t.Fatalf("full syncs %d", p.Stats().SyncFull.Load())
	}
}

// TestSIGTERMWhileStreaming: SIGTERM under load exits 0 within a grace
// period; a restart resumes with partial syncs both ways; and when the
// origin vanishes first (a sidecar stopped after its main container), the
// proxy neither crash-loops nor hangs on shutdown.
func TestSIGTERMWhileStreaming(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "64mb")
	proc := startProxyProcess(t, origin.Addr())
	replicas := startReplicas(t, 2, proc.addr)
	// An empty origin "converges" with replicas that have not synced yet:
	// wait for the proxy's link and the replicas' links too.
	waitConverged(t, origin, replicas, 30*time.Second)
	pcli := redis.NewClient(&redis.Options{Addr: proc.addr})
	defer pcli.Close()
	redistest.Eventually(t, 30*time.Second, "proxy and replicas linked", func() bool {
		info, err := pcli.Info(context.Background(), "replication").Result()
		if err != nil || !strings.Contains(info, "master_link_status:up") {
			return false
		}
		for _, r := range replicas {
			if mustInfo(t, r, "replication")["master_link_status"] != "up" {
				return false
			}
		}
		return true
	})
	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 21)
	redistest.Eventually(t, 10*time.Second, "load flows", func() bool {
		return origin.InfoInt("replication", "master_repl_offset") > 100000
	})
	start := time.Now()
	proc.Signal(syscall.SIGTERM)
	if code := proc.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("shutdown took %v", took)
	}
	partialUp := origin.InfoInt("stats", "sync_partial_ok")
	proc.restart()
	close(stop)
	wg.Wait()
	waitConverged(t, origin, replicas, 60*time.Second)
	if origin.InfoInt("stats", "sync_full") != 1 || origin.InfoInt("stats", "sync_partial_ok") != partialUp+1 {
		t.Fatalf("upstream: sync_full %d, sync_partial_ok %d (was %d)", origin.InfoInt("stats", "sync_full"),
			origin.InfoInt("stats", "sync_partial_ok"), partialUp)
	}
	for _, r := range replicas {
		b, _ := os.ReadFile(r.Log)
		if n := strings.Count(string(b), "Full resync from master"); n != 1 {
			t.Fatalf("replica %d took %d full syncs", r.Port, n)
		}
	}

	// Pod shutdown order: the origin goes first, then SIGTERM.
	downs := func() int { b, _ := os.ReadFile(proc.logPath); return strings.Count(string(b), "upstream link down") }
	before := downs()
	origin.Kill()
	redistest.Eventually(t, 10*time.Second, "proxy notices the origin is gone", func() bool { return downs() > before })
	start = time.Now()
	proc.Signal(syscall.SIGTERM)
	if code := proc.ExitCode(); code != 0 || time.Since(start) > 10*time.Second {
		t.Fatalf("shutdown without upstream: exit %d after %v", code, time.Since(start))
	}
}

// TestUpstreamFailover: the origin's replica is promoted and the proxy's
// upstream address moves to it (as behind a virtual IP). The promoted
// replica answers +CONTINUE with its new ID; the proxy shifts its history,
// its replicas re-PSYNC through replid2, and nobody takes a full sync.
func TestUpstreamFailover(t *testing.T) {
	t.Parallel()
	var vip *faultproxy.Proxy
	rig := startFailoverRig(t, 2, 31, func(origin string) string {
		var err error
		if vip, err = faultproxy.New(origin); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(vip.Close)
		return vip.Addr()
	})
	origin, standby, p, replicas, oldID := rig.origin, rig.standby, rig.p, rig.replicas, rig.oldID

	// Fail over: the standby becomes master; the old origin goes away.
	rig.promoteStandby(t)
	vip.SetTarget(standby.Addr())
	vip.CutAll()
	origin.Kill()
	newID := mustInfo(t, standby, "replication")["master_replid"]
	redistest.Eventually(t, 20*time.Second, "proxy follows the promoted replica", func() bool {
		h := p.position().Hist
		return p.linkUp() && h.ReplID == newID && h.ReplID2 == oldID
	})
	rig.continuesOnStandby(t, 32)
	for _, r := range replicas {
		if got := mustInfo(t, r, "replication")["master_replid2"]; got != oldID {
			t.Fatalf("replica %d replid2 %s, want %s", r.Port, got, oldID)
		}
	}
	// A replica joining now gets the snapshot from before the failover
	// under the new ID, and the stream across the shift.
	late := startReplicas(t, 1, p.addr)
	waitConverged(t, standby, append(replicas, late...), 30*time.Second)
	if got := mustInfo(t, late[0], "replication")["master_replid"]; got != newID {
		t.Fatalf("late replica follows %s, want %s", got, newID)
	}
	if got := standby.InfoInt("stats", "sync_full"); got != 0 {
		t.Fatalf("promoted replica forked for a late replica: sync_full %d", got)
	}
}

// failoverRig: an origin with a standby replica, and a proxy following the
// origin with replicas of its own, converged after a second of load.
type failoverRig struct {
	origin, standby *redistest.Server
	p               *testProxy
	replicas        []*redistest.Server
	oldID           string // the origin's replication ID
}

// startFailoverRig builds the rig; upstream, when not nil, gives the
// address the proxy uses for the origin's (a virtual IP in front of it).
func startFailoverRig(t *testing.T, replicas int, seed uint64, upstream func(origin string) string) *failoverRig {
	t.Helper()
	r := &failoverRig{origin: redistest.StartT(t, "origin")}
	populate(t, r.origin) // DEBUG POPULATE is not replicated: before any replica
	host, port, _ := net.SplitHostPort(r.origin.Addr())
	r.standby = redistest.StartT(t, "standby", "--replicaof", host, port)
	addr := r.origin.Addr()
	if upstream != nil {
		addr = upstream(addr)
	}
	r.p = startProxy(t, addr, t.TempDir())
	r.replicas = startReplicas(t, replicas, r.p.addr)
	runMixedLoad(t, r.origin.Client(), closeAfter(time.Second), seed).Wait()
	waitConverged(t, r.origin, append([]*redistest.Server{r.standby}, r.replicas...), 30*time.Second)
	r.oldID = r.p.position().Hist.ReplID
	return r
}

// promoteStandby fails over as Sentinel does: writes (and with them key
// expiry and the replication PINGs) pause on the origin, the standby is
// promoted once it and the proxy have the origin's whole stream. Without
// the pause the origin keeps sending (expired keys' DELs, PINGs), and a
// standby promoted a few bytes behind the proxy cannot continue it (Redis
// answers a full sync, seen in CI), which is not what these tests are about.
func (r *failoverRig) promoteStandby(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if err := r.origin.Client().Do(ctx, "CLIENT", "PAUSE", 60000, "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the standby and the proxy have the origin's whole stream", func() bool {
		end := r.origin.InfoInt("replication", "master_repl_offset")
		return r.standby.InfoInt("replication", "master_repl_offset") == end && r.p.backlogEnd() == end
	})
	if err := r.standby.Client().Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
}

// continuesOnStandby checks the end of every failover: load on the promoted
// standby reaches the replicas behind the proxy, and neither the standby nor
// the proxy served a full sync beyond the replicas' initial ones.
func (r *failoverRig) continuesOnStandby(t *testing.T, seed uint64) {
	t.Helper()
	runMixedLoad(t, r.standby.Client(), closeAfter(time.Second), seed).Wait()
	waitConverged(t, r.standby, r.replicas, 30*time.Second)
	if got := r.standby.InfoInt("stats", "sync_full"); got != 0 {
		t.Fatalf("promoted replica served %d full syncs", got)
	}
	if got := r.p.Stats().SyncFull.Load(); got != int64(len(r.replicas)) {
		t.Fatalf("proxy served %d full syncs, want only the initial %d", got, len(r.replicas))
	}
}

// closeAfter returns a channel closed after d: load for a while.
func closeAfter(d time.Duration) chan struct{} {
	c := make(chan struct{})
	time.AfterFunc(d, func() { close(c) })
	return c
}

// TestLostTailHoldsReplicasAhead: the proxy loses the unsynced tail of its
// backlog (a power cut with --fsync everysec, done here by truncating the
// newest segment of a killed proxy) while its replicas kept those bytes.
// Restarted with its upstream out of reach, it holds their PSYNCs, which
// are ahead of its end, instead of full-syncing them; once the upstream
// refills the tail, both resume with +CONTINUE.
func TestLostTailHoldsReplicasAhead(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "64mb")
	up, err := faultproxy.New(origin.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	proc := startProxyProcess(t, up.Addr(), "--hold-ahead", "60s")
	replicas := startReplicas(t, 2, proc.addr)
	wg := runMixedLoad(t, origin.Client(), closeAfter(2*time.Second), 51)
	wg.Wait()
	waitConverged(t, origin, replicas, 30*time.Second)

	proc.Kill()
	seg := newestSegment(t, proc.dataDir)
	fi, err := os.Stat(seg)
	if err != nil {
		t.Fatal(err)
	}
	lost := min(64<<10, fi.Size()/2) // the newest segment may have just rolled
	if lost == 0 {
		t.Fatal("the newest segment is empty")
	}
	if err := os.Truncate(seg, fi.Size()-lost); err != nil {
		t.Fatal(err)
	}
	up.Refuse(true)
	logBefore, _ := os.ReadFile(proc.logPath)
	newLog := func() string {
		b, _ := os.ReadFile(proc.logPath)
		return strings.TrimPrefix(string(b), string(logBefore))
	}
	proc.restart()
	redistest.Eventually(t, 30*time.Second, "both replicas ask while the upstream is away", func() bool {
		return strings.Count(newLog(), "replica sync requested") >= 2
	})
	if l := newLog(); strings.Contains(l, "partial resync accepted") || strings.Contains(l, "full sync started") ||
		strings.Contains(l, "partial resync not possible") {
		t.Fatalf("a replica was answered before the proxy reached its offset:\n%s", l)
	}
	up.Refuse(false)
	redistest.Eventually(t, 30*time.Second, "held replicas continue", func() bool {
		return strings.Count(newLog(), "partial resync accepted") >= 2
	})
	_ = origin.Client().Set(context.Background(), "after-hold", "1", 0).Err()
	waitConverged(t, origin, replicas, 30*time.Second)
	if l := newLog(); strings.Contains(l, "full sync started") {
		t.Fatalf("a replica took a full sync after the restart:\n%s", l)
	}
	if got := origin.InfoInt("stats", "sync_full"); got != 1 {
		t.Fatalf("origin sync_full %d", got)
	}
}

// newestSegment is the path of the newest backlog segment file.
func newestSegment(t *testing.T, dataDir string) string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dataDir, "backlog", "*.seg"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("no backlog segment: %v", err)
	}
	slices.Sort(segs) // zero-padded offsets: lexical order is offset order
	return segs[len(segs)-1]
}

// TestRDBVersionMismatch: the upstream writes RDB 12 (Redis 7.4+), newer
// than the real 7.0.15 replica can load. The replica hangs up after each
// payload; the proxy names that in a disconnect reason and a warning. A
// replica announcing Valkey 8 (REPLCONF version), which cannot load it
// either, is refused up front with an error it logs.
func TestRDBVersionMismatch(t *testing.T) {
	t.Parallel()
	id := strings.Repeat("d", 40)
	rdb := []byte("REDIS0012\xfa\x0erepl-stream-db\xc0\x00\xfa\x07repl-id\x28" + id +
		"\xfa\x0brepl-offset\xc0\x00\xfe\x00\xfb\x01\x00\x00\x03key\x05value\xff")
	rdb = binary.LittleEndian.AppendUint64(rdb, psync.CRC64(0, rdb))
	addr := fakeMaster(t, func(conn net.Conn) {
		fmt.Fprintf(conn, "+FULLRESYNC %s 0\r\n$%d\r\n", id, len(rdb))
		conn.Write(rdb)
		_, _ = io.Copy(io.Discard, conn) // ACKs, until the proxy hangs up
	})
	p := startProxy(t, addr, t.TempDir())
	redistest.Eventually(t, 10*time.Second, "link up", p.linkUp)
	if v := p.position().Snap.RDBVersion; v != 12 {
		t.Fatalf("snapshot RDB version %d", v)
	}

	r := startReplicas(t, 1, p.addr)[0]
	redistest.Eventually(t, 30*time.Second, "the replica fails to load and the proxy says so", func() bool {
		return p.Stats().Disconnects.Load(vocab.DownClosedBeforeAck) >= 1 && r.LogContains("Can't handle RDB format version 12")
	})
	if !strings.Contains(p.logBuf.String(), "replica hung up after a full sync without acknowledging it") {
		t.Fatal("no warning for the replica that hung up")
	}
	// It asks again and again; it gets an error naming both versions, not
	// the payload: the bytes sent stop growing.
	redistest.Eventually(t, 30*time.Second, "the replica is refused with the versions", func() bool {
		return r.LogContains("replproxy holds an RDB version 12 snapshot")
	})
	if n := p.Stats().Disconnects.Load(vocab.DownClosedBeforeAck); n != 1 {
		t.Fatalf("the payload was sent %d times to a replica that cannot load it", n)
	}
	sent := p.Stats().SentRDBBytes.Load()
	refusedBefore := p.Stats().Disconnects.Load(vocab.DownRDBVersion)
	redistest.Eventually(t, 10*time.Second, "refused again", func() bool {
		return p.Stats().Disconnects.Load(vocab.DownRDBVersion) >= refusedBefore+2
	})
	if got := p.Stats().SentRDBBytes.Load(); got != sent {
		t.Fatalf("RDB bytes sent grew from %d to %d while the replica is refused", sent, got)
	}

	conn, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	fmt.Fprint(conn, "REPLCONF version 8.0.1\r\n")
	if line, _ := br.ReadString('\n'); line != "+OK\r\n" {
		t.Fatalf("REPLCONF version: %q", line)
	}
	fmt.Fprint(conn, "PSYNC ? -1\r\n")
	line := "\n"
	for line == "\n" { // keepalives may come first
		if line, err = br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.HasPrefix(line, "-ERR replproxy holds an RDB version 12 snapshot, which version 8.0.1 cannot load") {
		t.Fatalf("PSYNC from a Valkey 8 replica: %q", line)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("link not closed after the refusal: %v", err)
	}
	if got := p.Stats().Disconnects.Load(vocab.DownRDBVersion); got < refusedBefore+3 {
		t.Fatalf("disconnects for rdb_version: %d, want the refusals of both", got)
	}
}

// TestReplicaofMovesUpstream: with no virtual IP in front of the origin, an
// operator points the proxy at the promoted replica with REPLICAOF. The
// proxy continues there (+CONTINUE with the new ID), its replicas follow
// through replid2, and nobody takes a full sync.
func TestReplicaofMovesUpstream(t *testing.T) {
	t.Parallel()
	rig := startFailoverRig(t, 2, 61, nil)
	origin, standby, p, oldID := rig.origin, rig.standby, rig.p, rig.oldID
	host, port, _ := net.SplitHostPort(origin.Addr())

	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: p.addr})
	defer admin.Close()
	for _, c := range []struct{ args []any }{
		{[]any{"REPLICAOF", "NO", "ONE"}},
		{[]any{"REPLICAOF", "127.0.0.1", "0"}},
		{[]any{"REPLICAOF", "127.0.0.1", "http"}},
		{[]any{"REPLICAOF", "127.0.0.1"}},
		{[]any{"REPLICAOF", "127.0.0.1", strconv.Itoa(p.port())}}, // itself
	} {
		if err := admin.Do(ctx, c.args...).Err(); err == nil || !strings.HasPrefix(err.Error(), "ERR ") {
			t.Fatalf("%v: %v, want an ERR", c.args, err)
		}
	}
	if got, err := admin.Do(ctx, "REPLICAOF", host, port).Text(); err != nil || got != "OK Already connected to specified master" {
		t.Fatalf("REPLICAOF to the current upstream: %q %v", got, err)
	}

	rig.promoteStandby(t)
	newID := mustInfo(t, standby, "replication")["master_replid"]
	sHost, sPort, _ := net.SplitHostPort(standby.Addr())
	if err := admin.Do(ctx, "SLAVEOF", sHost, sPort).Err(); err != nil {
		t.Fatal(err)
	}
	origin.Kill()
	redistest.Eventually(t, 20*time.Second, "proxy follows the promoted replica", func() bool {
		h := p.position().Hist
		return p.linkUp() && h.ReplID == newID && h.ReplID2 == oldID
	})
	info, err := admin.Info(ctx, "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info, "master_port:"+sPort+"\r\n") {
		t.Fatalf("INFO does not show the new upstream:\n%s", info)
	}
	if got := p.Stats().UpstreamDisconnects.Load(vocab.UpReplicaof); got != 1 {
		t.Fatalf("upstream disconnects for replicaof: %d", got)
	}
	rig.continuesOnStandby(t, 62)
}

// TestSentinelFailoverRepointsProxy: a real Sentinel fails the origin over to
// its standby. It never promotes the proxy (slave-priority 0) and
// reconfigures it like any replica; the SLAVEOF in that reconfiguration
// moves the proxy, which continues on the promoted replica, and the
// replicas behind it follow without a full sync.
func TestSentinelFailoverRepointsProxy(t *testing.T) {
	t.Parallel()
	rig := startFailoverRig(t, 1, 71, nil)
	origin, standby, p, oldID := rig.origin, rig.standby, rig.p, rig.oldID

	sen := redistest.StartSentinelT(t, origin.Addr(),
		"sentinel down-after-milliseconds mymaster 1000", "sentinel failover-timeout mymaster 10000")
	sentinel := redis.NewSentinelClient(&redis.Options{Addr: sen.Addr})
	defer sentinel.Close()
	ctx := context.Background()
	_, proxyPort, _ := net.SplitHostPort(p.addr)
	redistest.Eventually(t, 30*time.Second, "sentinel knows the standby and the proxy", func() bool {
		reps, _ := sentinel.Replicas(ctx, "mymaster").Result()
		seen := 0
		for _, e := range reps {
			if (e["port"] == proxyPort || e["port"] == strconv.Itoa(standby.Port)) && e["master-link-status"] == "ok" {
				seen++
			}
		}
		return seen == 2
	})
	origin.Kill()
	redistest.Eventually(t, 60*time.Second, "sentinel promotes the standby", func() bool {
		m, err := sentinel.GetMasterAddrByName(ctx, "mymaster").Result()
		return err == nil && len(m) == 2 && m[1] == strconv.Itoa(standby.Port)
	})
	newID := mustInfo(t, standby, "replication")["master_replid"]
	redistest.Eventually(t, 60*time.Second, "sentinel moves the proxy to the promoted replica", func() bool {
		h := p.position().Hist
		return p.linkUp() && h.ReplID == newID && h.ReplID2 == oldID
	})
	rig.continuesOnStandby(t, 72)
}

// TestMaxClients: past --max-clients a connection gets Redis' error and a
// close, is counted, and the ones already connected keep working.
func TestMaxClients(t *testing.T) {
	t.Parallel()
	p := startProxy(t, "127.0.0.1:1", t.TempDir(), func(c *Config) { c.MaxClients = 3 })
	var conns []*bufio.ReadWriter
	for i := range 4 {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
		_, _ = rw.WriteString("PING\r\n")
		_ = rw.Flush()
		line, _ := rw.ReadString('\n')
		want := "+PONG\r\n"
		if i == 3 {
			want = "-ERR max number of clients reached\r\n"
		}
		if line != want {
			t.Fatalf("connection %d: %q, want %q", i, line, want)
		}
		conns = append(conns, rw)
	}
	if n := p.Stats().RejectedConns.Load(); n != 1 {
		t.Fatalf("rejected %d", n)
	}
	_, _ = conns[0].WriteString("PING\r\n")
	_ = conns[0].Flush()
	if line, _ := conns[0].ReadString('\n'); line != "+PONG\r\n" {
		t.Fatalf("connected client after the refusal: %q", line)
	}
}
