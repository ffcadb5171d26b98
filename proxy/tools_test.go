package proxy

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/command"
	"github.com/replproxy/replproxy/proxy/upstream"
)

// TestToolCommands: what Sentinel's failover and redis_exporter send gets
// Redis' answers: MULTI/SLAVEOF/CONFIG REWRITE/CLIENT KILL/EXEC as one
// transaction, LATENCY and SLOWLOG empty, CLIENT LIST over the real
// sessions; INFO names the upstream's version and no field twice; ROLE
// shows offset -1 while the link is not connected.
func TestToolCommands(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	ctx := context.Background()
	cli := redis.NewClient(&redis.Options{Addr: p.addr})
	defer cli.Close()
	other := redis.NewClient(&redis.Options{Addr: p.addr})
	defer other.Close()
	must(t, other.Ping(ctx).Err())

	// Sentinel's failover transaction, verbatim in shape.
	conn := cli.Conn()
	defer conn.Close()
	must(t, conn.Do(ctx, "MULTI").Err())
	host, port, _ := strings.Cut(origin.Addr(), ":")
	for _, c := range [][]any{{"SLAVEOF", host, port}, {"CONFIG", "REWRITE"}, {"CLIENT", "KILL", "TYPE", "normal"}, {"CLIENT", "KILL", "TYPE", "pubsub"}} {
		if v, err := conn.Do(ctx, c...).Text(); err != nil || v != "QUEUED" {
			t.Fatalf("%v inside MULTI: %q %v", c, v, err)
		}
	}
	res, err := conn.Do(ctx, "EXEC").Slice()
	if err != nil || len(res) != 4 {
		t.Fatalf("EXEC: %v %v", res, err)
	}
	if res[0] != "OK Already connected to specified master" || res[1] != "OK" || res[2] != int64(1) || res[3] != int64(0) {
		t.Fatalf("EXEC replies %#v", res)
	}
	if v, err := conn.Do(ctx, "EXEC").Result(); err == nil || !strings.Contains(err.Error(), "EXEC without MULTI") {
		t.Fatalf("EXEC without MULTI: %v %v", v, err)
	}
	// Commandstats: the EXEC ran once (its queued commands' replies are
	// theirs), the EXEC without MULTI was refused.
	st, err := conn.Do(ctx, "INFO", "commandstats").Text()
	must(t, err)
	_, line, _ := strings.Cut(st, "cmdstat_exec:")
	line, _, _ = strings.Cut(line, "\r\n")
	if !strings.HasPrefix(line, "calls=1,") || !strings.HasSuffix(line, ",rejected_calls=1,failed_calls=0") {
		t.Errorf("INFO cmdstat_exec after MULTI/EXEC: %q", line)
	}
	for _, c := range [][]any{{"LATENCY", "LATEST"}, {"SLOWLOG", "GET", "10"}} {
		if v, err := conn.Do(ctx, c...).Slice(); err != nil || len(v) != 0 {
			t.Errorf("%v: %v %v", c, v, err)
		}
	}
	for _, c := range [][]any{{"LATENCY", "RESET"}, {"SLOWLOG", "LEN"}} {
		if v, err := conn.Do(ctx, c...).Int(); err != nil || v != 0 {
			t.Errorf("%v: %v %v", c, v, err)
		}
	}
	if v, err := conn.Do(ctx, "SLOWLOG", "RESET").Text(); err != nil || v != "OK" {
		t.Errorf("SLOWLOG RESET: %v %v", v, err)
	}
	if n, err := conn.Do(ctx, "COMMAND", "COUNT").Int(); err != nil || n != len(command.SupportedCommands) {
		t.Errorf("COMMAND COUNT: %d %v", n, err)
	}
	if v, err := conn.Do(ctx, "COMMAND", "INFO", "ping", "get").Slice(); err != nil || len(v) != 2 || v[0] == nil || v[1] != nil {
		t.Errorf("COMMAND INFO ping get: %v %v", v, err)
	}
	if v, err := conn.Do(ctx, "COMMAND", "DOCS").Slice(); err != nil || len(v) != 0 {
		t.Errorf("COMMAND DOCS: %v %v", v, err)
	}
	list, err := conn.Do(ctx, "CLIENT", "LIST").Text()
	if err != nil || !strings.Contains(list, "id=") || !strings.Contains(list, "flags=N") {
		t.Fatalf("CLIENT LIST: %q %v", list, err)
	}

	info, err := conn.Do(ctx, "INFO", "ALL").Text()
	must(t, err)
	seen := map[string]bool{}
	for _, l := range strings.Split(info, "\r\n") {
		k, _, ok := strings.Cut(l, ":")
		if !ok || strings.HasPrefix(l, "#") {
			continue
		}
		if seen[k] {
			t.Errorf("INFO field %s appears twice", k)
		}
		seen[k] = true
	}
	originVersion := mustInfo(t, origin, "server")["redis_version"]
	if !strings.Contains(info, "redis_version:"+originVersion+"\r\n") {
		t.Errorf("INFO redis_version is not the upstream's %s", originVersion)
	}

	origin.Kill()
	redistest.Eventually(t, 10*time.Second, "link down", func() bool { return !p.linkUp() })
	role, err := conn.Do(ctx, "ROLE").Slice()
	if err != nil || len(role) != 5 || role[4] != int64(-1) {
		t.Fatalf("ROLE with the link down: %v %v", role, err)
	}
}

// lockedBuf collects a subprocess's output for polling.
type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRedisCliReplica: redis-cli --replica (REPLCONF rdb-filter-only "",
// then SYNC) gets an empty RDB and prints only the commands written after
// it connected, not the stored snapshot nor the backlog before.
func TestRedisCliReplica(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	ctx := context.Background()
	must(t, origin.Client().Set(ctx, "before-sync", "1", 0).Err())
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	must(t, origin.Client().Set(ctx, "before-connect", "1", 0).Err())
	waitSynced(t, origin, p.backlogEnd, 10*time.Second)
	var out lockedBuf
	cmd := redisCli(t, p, "--replica")
	cmd.Stdout, cmd.Stderr = &out, &out
	must(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	redistest.Eventually(t, 10*time.Second, "redis-cli is streaming", func() bool {
		return strings.Contains(out.String(), "SYNC done")
	})
	must(t, origin.Client().Set(ctx, "after-connect", "1", 0).Err())
	redistest.Eventually(t, 10*time.Second, "the new write is printed", func() bool {
		return strings.Contains(out.String(), `"after-connect"`)
	})
	if o := out.String(); strings.Contains(o, "before-") {
		t.Fatalf("redis-cli --replica printed writes from before it connected:\n%s", o)
	}
	if n := p.Stats().SyncFull.Load(); n != 0 {
		t.Fatalf("%d full syncs counted for redis-cli --replica", n)
	}
}

// redisCli is the real redis-cli (Debian's redis-server package has it)
// against the proxy.
func redisCli(t *testing.T, p *testProxy, args ...string) *exec.Cmd {
	t.Helper()
	bin, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli not found: it comes with Debian's redis-server package")
	}
	host, port, _ := net.SplitHostPort(p.addr)
	return exec.Command(bin, append([]string{"-h", host, "-p", port}, args...)...)
}

// loadRDB starts a fresh redis-server on the RDB file at path.
func loadRDB(t *testing.T, path string) *redistest.Server {
	t.Helper()
	return redistest.StartT(t, "loader", "--dir", filepath.Dir(path), "--dbfilename", filepath.Base(path))
}

const testLibrary = "#!lua name=proxylib\nredis.register_function('answer', function(keys, args) return 42 end)"

// TestRedisCliFunctionsRDB: redis-cli --functions-rdb (REPLCONF
// rdb-filter-only functions, rdb-only 1, SYNC) writes a file that a fresh
// redis-server loads with the origin's functions and no keys.
func TestRedisCliFunctionsRDB(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	ctx := context.Background()
	must(t, origin.Client().Do(ctx, "FUNCTION", "LOAD", testLibrary).Err())
	must(t, origin.Client().Do(ctx, "DEBUG", "POPULATE", "1000").Err())
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	file := filepath.Join(t.TempDir(), "functions.rdb")
	out, err := redisCli(t, p, "--functions-rdb", file).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --functions-rdb: %v\n%s", err, out)
	}
	loaded := loadRDB(t, file)
	if n := loaded.Client().DBSize(ctx).Val(); n != 0 {
		t.Errorf("the functions-only RDB holds %d keys", n)
	}
	if v, err := loaded.Client().Do(ctx, "FCALL", "answer", "0").Int(); err != nil || v != 42 {
		t.Errorf("FCALL answer on the loaded RDB: %v %v", v, err)
	}
	if !strings.Contains(p.logBuf.String(), "functions-only RDB sent") {
		t.Error("not logged")
	}
}

// TestRedisCliRDBFresh: redis-cli --rdb on a snapshot older than
// --rdb-only-max-age gets a fresh one (a refresh), which holds the writes
// made after the stored snapshot; a young snapshot is served as it is.
func TestRedisCliRDBFresh(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	ctx := context.Background()
	must(t, origin.Client().Set(ctx, "old", "1", 0).Err())
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) {
		c.RDBOnlyMaxAge = 3 * time.Second
		c.RefreshFrom = []string{upstream.SourceUpstream}
	})
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	rdb := func() *redistest.Server {
		t.Helper()
		file := filepath.Join(t.TempDir(), "dump.rdb")
		out, err := redisCli(t, p, "--rdb", file).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli --rdb: %v\n%s", err, out)
		}
		return loadRDB(t, file)
	}
	young := rdb() // the snapshot is seconds old: served as stored
	if n := young.Client().DBSize(ctx).Val(); n != 1 || p.Stats().Refreshes.Load() != 0 {
		t.Fatalf("young snapshot: %d keys, %d refreshes", n, p.Stats().Refreshes.Load())
	}
	must(t, origin.Client().Set(ctx, "new", "1", 0).Err())
	created := p.position().Snap.Created
	redistest.Eventually(t, 10*time.Second, "the snapshot ages past 3s", func() bool { return time.Since(created) > 3*time.Second })
	fresh := rdb()
	if n := fresh.Client().DBSize(ctx).Val(); n != 2 {
		t.Fatalf("redis-cli --rdb on an old snapshot got %d keys, want 2 (a fresh snapshot)", n)
	}
	if p.Stats().Refreshes.Load() != 1 {
		t.Fatalf("%d refreshes", p.Stats().Refreshes.Load())
	}
	if !strings.Contains(p.logBuf.String(), "older than --rdb-only-max-age") {
		t.Error("not logged")
	}
}
