package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/store"
)

// procStatus reads a field of /proc/PID/status in bytes (VmRSS, VmHWM).
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// respCommand appends one command in RESP.
func respCommand(b []byte, args ...[]byte) []byte {
	b = fmt.Appendf(b, "*%d\r\n", len(args))
	for _, a := range args {
		b = fmt.Appendf(b, "$%d\r\n", len(a))
		b = append(append(b, a...), '\r', '\n')
	}
	return b
}

// loadBigKeys gives the origin one list, hash, zset and stream of at least
// size bytes each, of incompressible 1 KB elements, plus small keys
// k:0..k:999, through redis-cli --pipe: real commands, so that every
// replica gets them too (DEBUG POPULATE is not replicated).
func loadBigKeys(t *testing.T, origin *redistest.Server, size int) {
	t.Helper()
	const elem, batch = 1024, 100
	n := size/elem + size/elem/20 // 5% over: encodings add, never remove
	rnd := rand.New(rand.NewChaCha8([32]byte{15}))
	val := func() []byte {
		b := make([]byte, elem)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	path := filepath.Join(t.TempDir(), "load.resp")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var cmd []byte
	for i := 0; i < n; i += batch {
		list := [][]byte{[]byte("RPUSH"), []byte("biglist")}
		hash := [][]byte{[]byte("HSET"), []byte("bighash")}
		zset := [][]byte{[]byte("ZADD"), []byte("bigzset")}
		for j := i; j < i+batch; j++ {
			list = append(list, val())
			hash = append(hash, []byte("f"+strconv.Itoa(j)), val())
			zset = append(zset, []byte(strconv.Itoa(j)), val())
		}
		stream := [][]byte{[]byte("XADD"), []byte("bigstream"), []byte("*")}
		for j := range batch / 10 { // entries of 10 fields
			stream = stream[:3]
			for k := range 10 {
				stream = append(stream, []byte("f"+strconv.Itoa(k)), val())
			}
			_ = j
			cmd = respCommand(cmd[:0], stream...)
			_, _ = w.Write(cmd)
		}
		for _, c := range [][][]byte{list, hash, zset} {
			cmd = respCommand(cmd[:0], c...)
			_, _ = w.Write(cmd)
		}
	}
	for i := range 1000 {
		cmd = respCommand(cmd[:0], []byte("SET"), []byte("k:"+strconv.Itoa(i)), []byte("v"))
		_, _ = w.Write(cmd)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	in, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	c := exec.Command("redis-cli", "-p", strconv.Itoa(origin.Port), "--pipe")
	c.Stdin = in
	if out, err := c.CombinedOutput(); err != nil || !strings.Contains(string(out), "errors: 0") {
		t.Fatalf("redis-cli --pipe: %v\n%s", err, out)
	}
	ctx := context.Background()
	for _, k := range []string{"biglist", "bighash", "bigzset", "bigstream"} {
		n, err := origin.Client().MemoryUsage(ctx, k, 0).Result()
		if err != nil || n < int64(size) {
			t.Fatalf("%s holds %d bytes (%v), want >= %d", k, n, err, size)
		}
	}
}

// overwriteLoad rewrites k:0..k:999 with 8 KB values at about rate bytes/s
// until stop closes: the stream grows, the key counts do not.
func overwriteLoad(cli *redis.Client, stop <-chan struct{}, rate int) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Go(func() {
		val := strings.Repeat("w", 8<<10)
		perTick := max(rate/10/len(val), 1)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			pipe := cli.Pipeline()
			for range perTick {
				pipe.Set(context.Background(), "k:"+strconv.Itoa(i%1000), val, 0)
				i++
			}
			if _, err := pipe.Exec(context.Background()); err != nil {
				return
			}
		}
	})
	return &wg
}

// TestMemoryBoundedWithBigKeys: with a list, a hash, a zset and a stream
// of 100+ MB each, the proxy's peak RSS stays under 100 MB through the
// full sync, two replicas, snapshot refreshes under writes, INFO and
// inspect, and a replica frozen for 30 s under load grows it by less than
// 10 MB; every replica converges to the origin.
func TestMemoryBoundedWithBigKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("loads 400+ MB")
	}
	t.Parallel()
	const limit = 100 << 20
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "64mb")
	loadBigKeys(t, origin, 100<<20)
	bin := redistest.ReleaseProxyBinary(t)
	pp := startProxyBinary(t, bin, origin.Addr(), "--backlog-size", "24mb")
	pcli := redis.NewClient(&redis.Options{Addr: pp.addr})
	defer pcli.Close()
	proxyInfo := func() map[string]string {
		txt, err := pcli.Info(context.Background(), "everything").Result()
		if err != nil {
			return map[string]string{}
		}
		return redistest.ParseInfo(txt)
	}
	redistest.Eventually(t, 120*time.Second, "proxy synced", func() bool {
		return proxyInfo()["master_link_status"] == "up"
	})
	replicas := startReplicas(t, 2, pp.addr)
	waitConverged(t, origin, replicas, 180*time.Second)

	// Snapshot refreshes under writes, INFO and inspect meanwhile.
	stop := make(chan struct{})
	loader := overwriteLoad(origin.Client(), stop, 2<<20)
	stopLoad := sync.OnceFunc(func() { close(stop); loader.Wait() })
	defer stopLoad()
	refreshes := func() int64 { n, _ := strconv.ParseInt(proxyInfo()["snapshot_refreshes"], 10, 64); return n }
	inspected := false
	redistest.Eventually(t, 120*time.Second, "a snapshot refresh under writes", func() bool {
		if !inspected && proxyInfo()["rdb_bgsave_in_progress"] == "1" {
			inspected = true
			inspectBounded(t, bin, pp.dataDir, origin, limit)
		}
		return refreshes() >= 1
	})
	if !inspected {
		inspectBounded(t, bin, pp.dataDir, origin, limit)
	}
	checkKeyspace(t, proxyInfo(), origin)

	// A replica frozen for 30 s while the load goes on (and refreshes run).
	before := procStatus(t, pp.PID(), "VmRSS")
	if err := replicas[1].Pause(); err != nil {
		t.Fatal(err)
	}
	peak := before
	for start := time.Now(); time.Since(start) < 30*time.Second; time.Sleep(200 * time.Millisecond) {
		peak = max(peak, procStatus(t, pp.PID(), "VmRSS"))
		proxyInfo()
	}
	if err := replicas[1].Resume(); err != nil {
		t.Fatal(err)
	}
	// A refresh that picked the replica just before it froze waits out
	// replicaStallTimeout and then takes the other's snapshot, which may
	// land a little after the 30 s: wait for it under the same load.
	_ = redistest.WaitFor(60*time.Second, func() bool { return refreshes() >= 2 })
	refreshed := refreshes()
	stopLoad()
	hwm := procStatus(t, pp.PID(), "VmHWM")
	t.Logf("proxy RSS: peak %d MB; frozen replica: %d MB before, %d MB at most during (+%d KB); %d refreshes",
		hwm>>20, before>>20, peak>>20, (peak-before)>>10, refreshed)
	if hwm >= limit {
		t.Errorf("proxy peak RSS %d MB, want < %d MB", hwm>>20, limit>>20)
	}
	if peak-before >= 10<<20 {
		t.Errorf("frozen replica grew the proxy's RSS by %d KB, want < 10 MB", (peak-before)>>10)
	}
	if refreshed < 2 {
		t.Errorf("only %d snapshot refreshes: the frozen phase ran none", refreshed)
	}
	waitConverged(t, origin, replicas, 240*time.Second)
	checkKeyspace(t, proxyInfo(), origin)
}

// checkKeyspace compares the snapshot's key counts in INFO with the
// origin's DBSIZE (constant under the overwrite load).
func checkKeyspace(t *testing.T, info map[string]string, origin *redistest.Server) {
	t.Helper()
	for db, n := range dbsizes(t, origin) {
		want := fmt.Sprintf("keys=%d,", n)
		if got := info[fmt.Sprintf("snapshot_keyspace_db%d", db)]; !strings.HasPrefix(got, want) {
			t.Errorf("proxy INFO snapshot_keyspace_db%d:%s, origin DBSIZE %d", db, got, n)
		}
	}
}

// inspectBounded runs `replproxy inspect --types` on the live data dir and
// checks its counts, then runs the same inspection in this process to
// bound what it allocates. (The child's own ru_maxrss is useless here: Go
// starts it with vfork, so it includes this test process's RSS.)
func inspectBounded(t *testing.T, bin, dataDir string, origin *redistest.Server, limit int64) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := store.Inspect(t.Context(), dataDir, store.InspectOptions{Keys: true, Types: true}); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	// Process-wide: the load generator's allocations count too.
	if alloc := int64(after.TotalAlloc - before.TotalAlloc); alloc >= limit/2 {
		t.Errorf("inspect allocated %d MB", alloc>>20)
	}
	c := exec.Command(bin, "inspect", "--json", "--types", dataDir)
	out, err := c.Output()
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	var in store.Inspection
	if err := json.Unmarshal(out, &in); err != nil {
		t.Fatal(err)
	}
	want := dbsizes(t, origin)
	for _, ks := range in.Keyspace {
		if ks.Keys != want[ks.DB] || ks.ByType["list"] != 1 && ks.DB == 0 {
			t.Errorf("inspect db%d: %+v, origin DBSIZE %d", ks.DB, ks, want[ks.DB])
		}
	}
}
