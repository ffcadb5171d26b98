package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/loopback"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/backlog"
)

// testProxy is a proxy running in-process for a test.
type testProxy struct {
	*Proxy
	addr    string
	tlsAddr string // with cfg.TLSListen set
	cancel  context.CancelFunc
	done    chan error
	logBuf  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startProxy(t *testing.T, upstream, dataDir string, mod ...func(*Config)) *testProxy {
	t.Helper()
	cfg := Config{Upstream: upstream, DataDir: dataDir, Listen: "127.0.0.1:0", BacklogSize: 64 << 20,
		Fsync: backlog.FsyncEverySec, ReplTimeout: 30 * time.Second, ReplicaTimeout: 20 * time.Second} // repl-timeout above the origin's 10 s PING period, or an idle link flaps
	for _, m := range mod {
		m(&cfg)
	}
	buf := &syncBuffer{}
	p, err := New(cfg, slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	host, _, _ := net.SplitHostPort(cfg.Listen)
	ln, err := loopback.ListenOn(host) // 0.0.0.0 for replicas on other addresses
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DelayedListen != "" {
		dl, err := loopback.Listen()
		if err != nil {
			t.Fatal(err)
		}
		p.SetDelayedListener(dl)
	}
	var tlsLn net.Listener
	if cfg.TLSListen != "" {
		if tlsLn, err = loopback.Listen(); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp := &testProxy{Proxy: p, addr: ln.Addr().String(), cancel: cancel, done: make(chan error, 1), logBuf: buf}
	if tlsLn != nil {
		tp.tlsAddr = tlsLn.Addr().String()
	}
	go func() { tp.done <- p.ServeListeners(ctx, ln, tlsLn) }()
	t.Cleanup(func() {
		tp.stop(t)
		if t.Failed() {
			lines := strings.Split(buf.String(), "\n")
			if len(lines) > 80 {
				lines = lines[len(lines)-80:]
			}
			t.Logf("--- proxy %s log tail ---\n%s", tp.addr, strings.Join(lines, "\n"))
		}
	})
	return tp
}

func (tp *testProxy) stop(t *testing.T) {
	if tp.cancel == nil {
		return
	}
	tp.cancel()
	tp.cancel = nil
	select {
	case err := <-tp.done:
		if err != nil {
			t.Errorf("proxy shutdown: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Error("proxy did not stop within 15s")
	}
}

func (tp *testProxy) port() int {
	_, p, _ := net.SplitHostPort(tp.addr)
	n, _ := strconv.Atoi(p)
	return n
}

// waitSynced waits until the proxy's offset equals the origin's.
func waitSynced(t *testing.T, origin *redistest.Server, end func() int64, timeout time.Duration) int64 {
	t.Helper()
	var want int64
	redistest.Eventually(t, timeout, "proxy catches up with origin", func() bool {
		want = origin.InfoInt("replication", "master_repl_offset")
		return want > 0 && end() == want
	})
	return want
}

// load writes a mixed workload to the origin until stop is closed; it
// returns the number of commands sent.
func load(t *testing.T, cli *redis.Client, stop <-chan struct{}, seed uint64) *atomic.Int64 {
	n := &atomic.Int64{}
	go func() {
		rnd := rand.New(rand.NewPCG(seed, seed))
		ctx := context.Background()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			pipe := cli.Pipeline()
			for j := range 20 {
				k := fmt.Sprintf("k%d:%d", seed, rnd.IntN(5000))
				switch j % 5 {
				case 0:
					pipe.Set(ctx, k, strings.Repeat("v", rnd.IntN(200)), 0)
				case 1:
					pipe.Incr(ctx, k+":n")
				case 2:
					pipe.RPush(ctx, k+":l", i)
				case 3:
					pipe.HSet(ctx, k+":h", "f"+strconv.Itoa(j), i)
				case 4:
					pipe.ZAdd(ctx, k+":z", redis.Z{Score: float64(i), Member: j})
				}
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return
			}
			n.Add(20)
		}
	}()
	return n
}

// originStream reads the origin's own replication stream from offset from,
// through end, with a PSYNC of its own: the reference bytes.
func originStream(t *testing.T, origin *redistest.Server, replid string, from, end int64) []byte {
	t.Helper()
	conn, err := net.DialTimeout("tcp", origin.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReaderSize(conn, 1<<20)
	if err := psync.Handshake(conn, br, psync.HandshakeConfig{ListeningPort: 1}); err != nil {
		t.Fatal(err)
	}
	reply, err := psync.Psync(conn, br, replid, from, nil)
	if err != nil || reply.Kind != psync.ReplyContinue {
		t.Fatalf("reference PSYNC %s %d: %+v %v", replid, from, reply, err)
	}
	out := make([]byte, end-from+1)
	if _, err := io.ReadFull(br, out); err != nil {
		t.Fatalf("reference stream: %v", err)
	}
	return out
}

// backlogBytes reads [from, end] from the proxy's backlog.
func backlogBytes(t *testing.T, p *Proxy, from, end int64) []byte {
	t.Helper()
	c, err := p.backlogLog().NewCursor(from)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := make([]byte, end-from+1)
	if _, err := io.ReadFull(c, out); err != nil {
		t.Fatalf("backlog read [%d, %d]: %v", from, end, err)
	}
	return out
}

// backlogFileBytes reads [from, end] straight from the segment files of a
// stopped proxy's data dir.
func backlogFileBytes(t *testing.T, dataDir string, from, end int64) []byte {
	t.Helper()
	l, _, err := backlog.Open(filepath.Join(dataDir, "backlog"), backlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := l.NewCursor(from)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := make([]byte, end-from+1)
	if _, err := io.ReadFull(c, out); err != nil {
		t.Fatalf("backlog files [%d, %d]: %v", from, end, err)
	}
	return out
}

// backlogMatchesOrigin checks a stopped proxy's data dir: consistent, ending
// where the origin's stream ends, and byte-identical to the origin's own
// stream from the snapshot on (no gap, no duplicate).
func backlogMatchesOrigin(t *testing.T, dataDir string, origin *redistest.Server) {
	t.Helper()
	in, err := store.Inspect(t.Context(), dataDir, store.InspectOptions{})
	if err != nil || !in.Consistent {
		t.Fatalf("inspect: %+v %v", in, err)
	}
	end := origin.InfoInt("replication", "master_repl_offset")
	if in.Backlog.End != end {
		t.Fatalf("backlog ends at %d, origin at %d", in.Backlog.End, end)
	}
	from := in.Snapshot.Offset + 1
	ref := originStream(t, origin, in.History.ReplID, from, end)
	mine := backlogFileBytes(t, dataDir, from, end)
	if !bytes.Equal(ref, mine) {
		t.Fatalf("backlog differs from origin stream at offset %d", from+int64(firstDiff(ref, mine)))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func tempFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(dir, "snapshots"))
	var tmp []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			tmp = append(tmp, e.Name())
		}
	}
	return tmp
}

func dbsizes(t *testing.T, s *redistest.Server) map[int]int64 {
	t.Helper()
	out := map[int]int64{}
	for k, v := range mustInfo(t, s, "keyspace") {
		db, _ := strconv.Atoi(strings.TrimPrefix(k, "db"))
		keys, _, _ := strings.Cut(strings.TrimPrefix(v, "keys="), ",")
		out[db], _ = strconv.ParseInt(keys, 10, 64)
	}
	return out
}

func mustInfo(t *testing.T, s *redistest.Server, section string) map[string]string {
	t.Helper()
	m, err := s.Info(section)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// proxyProcess is the replproxy binary run against an upstream, for tests
// that SIGKILL or SIGTERM it. restart starts it again on the same data dir,
// port and log.
type proxyProcess struct {
	*redistest.Process
	t       *testing.T
	bin     string
	addr    string
	dataDir string
	logPath string
	args    []string
}

func startProxyProcess(t *testing.T, upstream string, extra ...string) *proxyProcess {
	t.Helper()
	return startProxyBinary(t, redistest.ProxyBinary(t), upstream, extra...)
}

// startProxyBinary is startProxyProcess with a given binary.
func startProxyBinary(t *testing.T, bin, upstream string, extra ...string) *proxyProcess {
	t.Helper()
	port, err := redistest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	pp := &proxyProcess{t: t, bin: bin, addr: "127.0.0.1:" + strconv.Itoa(port),
		dataDir: t.TempDir(), logPath: filepath.Join(t.TempDir(), "proxy.log")}
	pp.args = append([]string{"--upstream", upstream, "--listen", pp.addr, "--data-dir", pp.dataDir,
		"--log-format", "text", "--metrics-listen", "127.0.0.1:0"}, extra...)
	pp.restart()
	return pp
}

func (pp *proxyProcess) restart() {
	pp.Process = redistest.StartProxyProcess(pp.t, pp.bin, pp.logPath, pp.args...)
}

// waitOffsetGrows waits until the origin's stream has grown by n bytes.
func waitOffsetGrows(t *testing.T, origin *redistest.Server, n int64) {
	t.Helper()
	from := origin.InfoInt("replication", "master_repl_offset")
	redistest.Eventually(t, 20*time.Second, "the origin's stream grows", func() bool {
		return origin.InfoInt("replication", "master_repl_offset") >= from+n
	})
}

// streamReplica plays a replica that continued at from, keeping every
// stream byte it reads, to compare with the origin's own stream.
type streamReplica struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
	from int64
	got  []byte
	buf  []byte
}

// psyncAt runs the handshake on conn and PSYNCs replid at from, which the
// proxy must continue.
func psyncAt(t *testing.T, conn net.Conn, replid string, from int64) *streamReplica {
	t.Helper()
	r := &streamReplica{t: t, conn: conn, br: bufio.NewReaderSize(conn, 64<<10), from: from, buf: make([]byte, 64<<10)}
	must(t, psync.Handshake(conn, r.br, psync.HandshakeConfig{ListeningPort: 1}))
	reply, err := psync.Psync(conn, r.br, replid, from, nil)
	if err != nil || reply.Kind != psync.ReplyContinue {
		t.Fatalf("PSYNC %d: %+v %v", from, reply, err)
	}
	return r
}

// read takes what one read gives.
func (r *streamReplica) read() {
	r.t.Helper()
	_ = r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := r.br.Read(r.buf)
	must(r.t, err)
	r.got = append(r.got, r.buf[:n]...)
}

// readThrough reads until it holds offset end.
func (r *streamReplica) readThrough(end int64) {
	r.t.Helper()
	for r.from+int64(len(r.got)) <= end {
		r.read()
	}
}

// singleWrites writes n keys one at a time, reading each through; it
// returns the origin's offset after the last one.
func (r *streamReplica) singleWrites(origin *redistest.Server, p *testProxy, n int) int64 {
	r.t.Helper()
	var end int64
	for i := range n {
		must(r.t, origin.Client().Set(context.Background(), fmt.Sprintf("single:%d", i), strings.Repeat("s", 500), 0).Err())
		end = waitSynced(r.t, origin, p.backlogEnd, 20*time.Second)
		r.readThrough(end)
	}
	return end
}

// matchOrigin checks that [from, end] as received equals the origin's own
// stream there.
func (r *streamReplica) matchOrigin(origin *redistest.Server, replid string, end int64) {
	r.t.Helper()
	got := r.got[:end-r.from+1] // the origin's PINGs may have come on since
	ref := originStream(r.t, origin, replid, r.from, end)
	if !bytes.Equal(got, ref) {
		i := firstDiff(got, ref)
		r.t.Fatalf("the replica's stream differs from the origin's at offset %d of [%d, %d]", r.from+int64(i), r.from, end)
	}
}
