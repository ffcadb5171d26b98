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
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/redis/go-redis/v9"
	"github.com/replproxy/replproxy/internal/faultproxy"
	"github.com/replproxy/replproxy/internal/loopback"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/request"
	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/upstream"
	"github.com/replproxy/replproxy/psync"
)

func populate(t *testing.T, s *redistest.Server) {
	t.Helper()
	ctx := context.Background()
	c := s.Client()
	for db, n := range map[int]int{0: 3000, 3: 500, 7: 20} {
		if err := c.Do(ctx, "SELECT", db).Err(); err != nil {
			t.Fatal(err)
		}
		// DEBUG POPULATE runs on the connection's DB; use a dedicated conn.
		conn := c.Conn()
		_ = conn.Do(ctx, "SELECT", db).Err()
		if err := conn.Do(ctx, "DEBUG", "POPULATE", n, fmt.Sprintf("db%d", db), 32).Err(); err != nil {
			t.Fatal(err)
		}
		_ = conn.RPush(ctx, "list", 1, 2, 3).Err()
		_ = conn.HSet(ctx, "hash", "a", 1).Err()
		_ = conn.Set(ctx, "ttl", "x", time.Hour).Err()
		conn.Close()
	}
}

// TestFullSyncBothFramings: a full sync with either payload framing leaves a
// snapshot whose keyspace matches the origin and a backlog byte-identical to
// the origin's own stream; the origin sees the proxy online and WAIT counts it.
func TestFullSyncBothFramings(t *testing.T) {
	t.Parallel()
	for _, diskless := range []string{"yes", "no"} {
		t.Run("diskless-"+diskless, func(t *testing.T) {
			t.Parallel()
			origin := redistest.StartT(t, "origin", "--repl-diskless-sync", diskless)
			populate(t, origin)
			dir := t.TempDir()
			p := startProxy(t, origin.Addr(), dir)
			redistest.Eventually(t, 20*time.Second, "proxy link up", p.linkUp)
			pos := p.position()
			if pos.Snap == nil || pos.Snap.RDBVersion != 10 {
				t.Fatalf("snapshot %+v", pos.Snap)
			}
			in, err := store.Inspect(t.Context(), dir, store.InspectOptions{Keys: true, Types: true})
			if err != nil || !in.Consistent {
				t.Fatalf("inspect: %+v %v", in, err)
			}
			want := dbsizes(t, origin)
			got := map[int]int64{}
			for _, ks := range in.Keyspace {
				got[ks.DB] = ks.Keys
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("snapshot keyspace %v, origin DBSIZE %v", got, want)
			}

			stop := make(chan struct{})
			n := load(t, origin.Client(), stop, 1)
			redistest.Eventually(t, 20*time.Second, "load runs", func() bool { return n.Load() > 2000 })
			ctx := context.Background()
			if got, err := origin.Client().Wait(ctx, 1, 2000).Result(); err != nil || got != 1 {
				t.Errorf("WAIT 1 = %d, %v", got, err)
			}
			close(stop)
			end := waitSynced(t, origin, p.backlogEnd, 20*time.Second)
			redistest.Eventually(t, 10*time.Second, "origin sees the proxy online at its offset", func() bool {
				info := mustInfo(t, origin, "replication")
				s0 := info["slave0"]
				return strings.Contains(s0, "state=online") && strings.Contains(s0, "offset="+info["master_repl_offset"]+",") &&
					strings.Contains(s0, "port="+strconv.Itoa(p.port()))
			})
			from := pos.Snap.Offset + 1
			ref := originStream(t, origin, pos.Hist.ReplID, from, end)
			mine := backlogBytes(t, p.Proxy, from, end)
			if !bytes.Equal(ref, mine) {
				i := firstDiff(ref, mine)
				t.Fatalf("backlog differs from the origin stream at offset %d", from+int64(i))
			}
			if tmp := tempFiles(t, dir); len(tmp) > 0 {
				t.Fatalf("temp files left: %v", tmp)
			}
		})
	}
}

// TestSIGKILLResume: a proxy killed under load resumes with +CONTINUE, the
// origin takes no new full sync, and the backlog has no gap or duplicate.
func TestSIGKILLResume(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "64mb")
	proc := startProxyProcess(t, origin.Addr())
	dir := proc.dataDir
	// The origin lists the proxy online once it ACKs the payload, before
	// the proxy has installed and persisted it; a SIGKILL in between is a
	// cut full sync (and the restart rightly waits the full-sync backoff).
	// Kill only once the proxy's own link is up.
	pcli := redis.NewClient(&redis.Options{Addr: proc.addr})
	defer pcli.Close()
	redistest.Eventually(t, 20*time.Second, "proxy link up", func() bool {
		info, err := pcli.Info(context.Background(), "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	stop := make(chan struct{})
	n := load(t, origin.Client(), stop, 2)
	for round := range 2 {
		before := n.Load()
		redistest.Eventually(t, 20*time.Second, "load progresses", func() bool { return n.Load() > before+3000 })
		proc.Kill()
		proc.restart()
		// The origin may still list the killed connection as online, so
		// "back" means: this round's partial resync was accepted.
		redistest.Eventually(t, 20*time.Second, fmt.Sprintf("proxy back online (round %d)", round), func() bool {
			return origin.InfoInt("stats", "sync_partial_ok") >= int64(round+1) &&
				strings.Contains(mustInfo(t, origin, "replication")["slave0"], "state=online")
		})
	}
	close(stop)
	redistest.Eventually(t, 20*time.Second, "proxy caught up", func() bool {
		s0 := mustInfo(t, origin, "replication")
		return strings.Contains(s0["slave0"], "offset="+s0["master_repl_offset"]+",")
	})
	if got := origin.InfoInt("stats", "sync_full"); got != 1 {
		t.Fatalf("origin sync_full = %d after restarts, want 1", got)
	}
	if got := origin.InfoInt("stats", "sync_partial_ok"); got < 2 {
		t.Fatalf("origin sync_partial_ok = %d, want >= 2", got)
	}
	proc.Signal(15)
	if code := proc.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	backlogMatchesOrigin(t, dir, origin)
}

// TestLinkCuts: cuts mid-RDB (both framings) fail that sync only: the
// previous snapshot stays in service and no temp file remains; a cut
// mid-stream resumes with +CONTINUE.
func TestLinkCuts(t *testing.T) {
	t.Parallel()
	for _, diskless := range []string{"yes", "no"} {
		t.Run("diskless-"+diskless, func(t *testing.T) {
			t.Parallel()
			origin := redistest.StartT(t, "origin", "--repl-diskless-sync", diskless, "--repl-backlog-size", "16kb")
			populate(t, origin)
			fp, err := faultproxy.New(origin.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer fp.Close()
			dir := t.TempDir()
			p := startProxy(t, fp.Addr(), dir)
			redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
			first := p.position().Snap

			// Mid-stream cut: partial resync, no full sync.
			_ = origin.Client().Set(context.Background(), "a", "1", 0).Err()
			waitSynced(t, origin, p.backlogEnd, 10*time.Second)
			partial := p.Stats().UpstreamPartialSyncs.Load()
			fp.CutAll()
			_ = origin.Client().Set(context.Background(), "b", "2", 0).Err()
			redistest.Eventually(t, 20*time.Second, "partial resync after a mid-stream cut", func() bool {
				return p.Stats().UpstreamPartialSyncs.Load() > partial && p.linkUp()
			})
			waitSynced(t, origin, p.backlogEnd, 10*time.Second)
			if got := origin.InfoInt("stats", "sync_full"); got != 1 {
				t.Fatalf("sync_full %d after a stream cut", got)
			}

			// Push the proxy out of the origin's 16kb backlog so the next
			// connection needs a full sync, and cut that inside the RDB.
			fp.Refuse(true)
			fp.CutAll()
			redistest.Eventually(t, 10*time.Second, "link down", func() bool { return !p.linkUp() })
			big := strings.Repeat("x", 1024)
			for i := range 64 {
				_ = origin.Client().Set(context.Background(), "fill"+strconv.Itoa(i), big, 0).Err()
			}
			failures := p.Stats().UpstreamSyncFailures.Load()
			fp.CutAfter(first.Size / 2)
			fp.Refuse(false)
			redistest.Eventually(t, 20*time.Second, "a cut full sync is counted as failed", func() bool {
				return p.Stats().UpstreamSyncFailures.Load() > failures
			})
			pos := p.position()
			if pos.Snap.Name != first.Name || pos.Hist.ReplID != first.ReplID {
				t.Fatalf("snapshot changed after a failed sync: %+v", pos.Snap)
			}
			if _, err := os.Stat(filepath.Join(dir, "snapshots", first.Name)); err != nil {
				t.Fatalf("previous snapshot file: %v", err)
			}
			if tmp := tempFiles(t, dir); len(tmp) > 0 {
				t.Fatalf("temp files left: %v", tmp)
			}
			fp.CutAfter(0)
			redistest.Eventually(t, 30*time.Second, "new full sync completes", func() bool {
				s := p.position().Snap
				return p.linkUp() && s.Offset > first.Offset
			})
			waitSynced(t, origin, p.backlogEnd, 10*time.Second)
			if tmp := tempFiles(t, dir); len(tmp) > 0 {
				t.Fatalf("temp files left: %v", tmp)
			}
		})
	}
}

// fakeMaster answers the replica handshake and PSYNC with a scripted full
// sync, for payloads no real Redis would send.
func fakeMaster(t *testing.T, payload func(conn net.Conn)) string {
	t.Helper()
	return fakeMasterSeeing(t, func(conn net.Conn, _ [][]string) { payload(conn) })
}

// fakeMasterSeeing is fakeMaster for a script that depends on the
// handshake: payload gets the commands received before PSYNC.
func fakeMasterSeeing(t *testing.T, payload func(conn net.Conn, handshake [][]string)) string {
	t.Helper()
	return fakeMasterInfo(t, nil, payload)
}

// fakeSource is fakeMaster as a replica of p would be asked for a refresh:
// it answers INFO replication as an up-to-date read-only replica of p.
func fakeSource(t *testing.T, p *testProxy, payload func(conn net.Conn)) string {
	t.Helper()
	info := func() string {
		return fmt.Sprintf("# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:%d\r\nmaster_link_status:up\r\n"+
			"slave_read_only:1\r\nmaster_replid:%s\r\n", p.port(), p.position().Hist.ReplID)
	}
	return fakeMasterInfo(t, info, func(conn net.Conn, _ [][]string) { payload(conn) })
}

// fakeMasterInfo is fakeMasterSeeing answering INFO with info() (nil: +OK).
func fakeMasterInfo(t *testing.T, info func() string, payload func(conn net.Conn, handshake [][]string)) string {
	t.Helper()
	ln, err := loopback.Listen()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				rd := request.NewReader(br)
				var seen [][]string
				for {
					args, err := rd.Next()
					if err != nil {
						return
					}
					if len(args) == 0 {
						continue
					}
					switch strings.ToLower(string(args[0])) {
					case "ping":
						conn.Write([]byte("+PONG\r\n"))
					case "psync":
						payload(conn, seen)
						return
					case "info":
						if info != nil {
							txt := info()
							fmt.Fprintf(conn, "$%d\r\n%s\r\n", len(txt), txt)
							continue
						}
						conn.Write([]byte("+OK\r\n"))
					default:
						cmd := make([]string, len(args))
						for i, a := range args {
							cmd[i] = string(a)
						}
						seen = append(seen, cmd)
						conn.Write([]byte("+OK\r\n"))
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestCorruptRDBRejected: an upstream that serves a corrupt RDB (one
// flipped byte) every time fails each sync, and, since each attempt costs
// a real origin a fork, is asked at most 3 times in the first minute, then
// minutes apart; the failures are classed "payload" and counted for the
// alert after the second in a row.
func TestCorruptRDBRejected(t *testing.T) {
	t.Parallel()
	id := strings.Repeat("c", 40)
	rdb := []byte("REDIS0010\xfe\x00\xfb\x01\x00\x00\x03key\x05value\xff")
	rdb = binary.LittleEndian.AppendUint64(rdb, psync.CRC64(0, rdb))
	rdb[17] ^= 0x20 // "key" -> "kEy"
	var served atomic.Int64
	addr := fakeMaster(t, func(conn net.Conn) {
		served.Add(1)
		fmt.Fprintf(conn, "+FULLRESYNC %s 0\r\n$%d\r\n", id, len(rdb))
		conn.Write(rdb)
		_, _ = io.Copy(io.Discard, conn) // until the proxy hangs up
	})
	dir := t.TempDir()
	p := startProxy(t, addr, dir)
	start := time.Now()
	redistest.Eventually(t, 30*time.Second, "the sync is retried", func() bool { return served.Load() >= 2 })
	for time.Since(start) < 62*time.Second {
		if n := served.Load(); n > 3 {
			t.Fatalf("%d full syncs asked for within %v", n, time.Since(start))
		}
		time.Sleep(250 * time.Millisecond)
	}
	fs := p.Status().FullSync
	if fs.LastClass != "payload" || fs.InARow < 2 || fs.NextAt.Sub(fs.LastAt) < 45*time.Second {
		t.Fatalf("after %d failed syncs: %+v (want payload, the next attempt a minute or more later)", served.Load(), fs)
	}
	if got := p.Stats().UpstreamFullSyncOutcomes.Load("initial/payload"); got != served.Load() {
		t.Fatalf("%d payload failures counted, %d served", got, served.Load())
	}
	if !strings.Contains(p.logBuf.String(), "keeps sending RDBs that fail verification") {
		t.Fatal("no error line after the second failure in a row")
	}
	if pos := p.position(); pos.Snap != nil || !pos.Hist.Empty() {
		t.Fatalf("a corrupt snapshot was installed: %+v", pos)
	}
	if !strings.Contains(p.logBuf.String(), "CRC mismatch") {
		t.Fatal("no clear log line for the CRC mismatch")
	}
	if tmp := tempFiles(t, dir); len(tmp) > 0 {
		t.Fatalf("temp files left: %v", tmp)
	}
}

// TestOriginRestartNewHistory: an origin restarted without persistence has
// a new replid; the proxy takes a new full sync and resets its history.
func TestOriginRestartNewHistory(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	_ = origin.Client().Set(context.Background(), "x", "1", 0).Err()
	dir := t.TempDir()
	// The guard off: the restarted origin is (nearly) empty, and this test
	// is about following a new history (TestGuardEmptyOrigin holds it).
	p := startProxy(t, origin.Addr(), dir, func(c *Config) { c.GuardDisabled = true })
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	old := p.position()
	if err := origin.Restart(); err != nil {
		t.Fatal(err)
	}
	_ = origin.Client().Set(context.Background(), "y", "2", 0).Err()
	// The restarted origin takes yet another ID when it creates its backlog
	// for the proxy's PSYNC: read it each time, not once before.
	var newID string
	redistest.Eventually(t, 30*time.Second, "proxy follows the new history", func() bool {
		newID = mustInfo(t, origin, "replication")["master_replid"]
		pos := p.position()
		return pos.Hist.ReplID == newID && pos.Hist.ReplID != old.Hist.ReplID && p.linkUp()
	})
	pos := p.position()
	if pos.Hist.ReplID2 != psync.NoReplID || pos.Snap.ReplID != newID || pos.Snap.Name == old.Snap.Name {
		t.Fatalf("history not reset: %+v snap %+v", pos.Hist, pos.Snap)
	}
	if _, err := os.Stat(filepath.Join(dir, "snapshots", old.Snap.Name)); !os.IsNotExist(err) {
		t.Fatalf("old snapshot still on disk: %v", err)
	}
	// A write on the new history: without one the origin's offset stays 0
	// until its first replica PING (every 10 s), which waitSynced cannot
	// tell from "nothing relayed".
	must(t, origin.Client().Set(context.Background(), "z", "3", 0).Err())
	waitSynced(t, origin, p.backlogEnd, 10*time.Second)
	if got := p.Stats().UpstreamFullSyncs.Load(); got != 2 {
		t.Fatalf("upstream full syncs %d, want 2", got)
	}
}

// TestSmallBacklogRefresh: with a small budget under sustained writes, disk
// use stays near the budget and refreshed snapshots arrive on a second
// connection without disturbing the main link.
func TestSmallBacklogRefresh(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	populate(t, origin)
	dir := t.TempDir()
	const budget = 1 << 20
	p := startProxy(t, origin.Addr(), dir, func(c *Config) { c.BacklogSize, c.RefreshUpstream = budget, upstream.RefreshUpstreamEager })
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	connects := p.Stats().UpstreamConnects.Load()
	stop := make(chan struct{})
	load(t, origin.Client(), stop, 3)
	maxDisk := int64(0)
	redistest.Eventually(t, 90*time.Second, "three refreshes under load", func() bool {
		maxDisk = max(maxDisk, dirSize(t, filepath.Join(dir, "backlog")))
		return p.Stats().Refreshes.Load() >= 3
	})
	close(stop)
	waitSynced(t, origin, p.backlogEnd, 20*time.Second)
	// Budget plus one segment of slack, plus what accrues while a refresh
	// runs (the refresh starts at half the budget).
	if limit := int64(budget + budget/16 + budget/2); maxDisk > limit {
		t.Fatalf("backlog disk use peaked at %d, limit %d", maxDisk, limit)
	}
	if got := p.Stats().UpstreamConnects.Load(); got != connects {
		t.Fatalf("main link reconnected %d times during refreshes", got-connects)
	}
	var fulls, want int64
	redistest.Eventually(t, 30*time.Second, "origin full syncs are the initial one plus refreshes", func() bool {
		busy := p.refreshing()
		fulls = origin.InfoInt("stats", "sync_full")
		want = 1 + p.Stats().Refreshes.Load() + p.Stats().RefreshFailures.Load()
		return !busy && fulls == want
	})
	in, err := store.Inspect(t.Context(), dir, store.InspectOptions{Keys: true, Types: true})
	if err != nil || !in.Consistent || in.Snapshot.Offset <= 0 {
		t.Fatalf("inspect %+v %v", in, err)
	}
}

func dirSize(t *testing.T, dir string) int64 {
	ents, _ := os.ReadDir(dir)
	var n int64
	for _, e := range ents {
		if info, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".seg") {
			n += info.Size()
		}
	}
	return n
}

// TestBacklogWriteFailure: the data dir refuses writes mid-stream (a file
// size limit on the proxy process stands in for a full disk; both end a
// write short). The proxy keeps what it stored, drops the link, retries with
// backoff, and once writes succeed again resumes with a partial sync: the
// origin never forks again, the backlog has no gap and no duplicate, and the
// replicas converge.
func TestBacklogWriteFailure(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "128mb")
	proc := startProxyProcess(t, origin.Addr())
	replicas := startReplicas(t, 2, proc.addr)
	waitConverged(t, origin, replicas, 30*time.Second)
	stop := make(chan struct{})
	n := load(t, origin.Client(), stop, 41)
	redistest.Eventually(t, 20*time.Second, "load flows", func() bool { return n.Load() > 2000 })

	limit := uint64(activeSegmentSize(t, proc.dataDir) + 1<<20)
	setFileSizeLimit(t, proc.PID(), limit)
	// retries lists the backoff logged for each refusal.
	retries := func() []time.Duration {
		b, _ := os.ReadFile(proc.logPath)
		var out []time.Duration
		for _, line := range strings.Split(string(b), "\n") {
			if _, after, ok := strings.Cut(line, "reason=backlog_write"); ok {
				_, v, _ := strings.Cut(after, "retry_in=")
				if f := strings.Fields(v); len(f) > 0 {
					d, _ := time.ParseDuration(f[0])
					out = append(out, d)
				}
			}
		}
		return out
	}
	redistest.Eventually(t, 30*time.Second, "writes refused three times", func() bool { return len(retries()) >= 3 })
	// A link that stores nothing is no reason to retry at once: the
	// backoff grows instead of having the origin resend every 100 ms.
	if r := retries(); r[2] <= r[0] {
		t.Fatalf("backoff does not grow while writes fail: %v", r)
	}
	if size := activeSegmentSize(t, proc.dataDir); size != int64(limit) {
		t.Fatalf("active segment is %d bytes, the limit %d: a short write was not kept", size, limit)
	}
	setFileSizeLimit(t, proc.PID(), unix.RLIM_INFINITY)
	waitOffsetGrows(t, origin, 256<<10)
	close(stop)
	waitConverged(t, origin, replicas, 60*time.Second)

	if got := origin.InfoInt("stats", "sync_full"); got != 1 {
		t.Fatalf("origin sync_full %d, want 1", got)
	}
	if got := origin.InfoInt("stats", "sync_partial_ok"); got < 2 {
		t.Fatalf("origin sync_partial_ok %d: the proxy did not resume after each refusal", got)
	}
	for _, r := range replicas {
		b, _ := os.ReadFile(r.Log)
		if full := strings.Count(string(b), "Full resync from master"); full != 1 {
			t.Fatalf("replica %d: %d full syncs", r.Port, full)
		}
	}
	proc.Signal(syscall.SIGTERM)
	if code := proc.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	backlogMatchesOrigin(t, proc.dataDir, origin)
}

// activeSegmentSize is the size of the newest backlog segment file.
func activeSegmentSize(t *testing.T, dataDir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dataDir, "backlog"))
	if err != nil {
		t.Fatal(err)
	}
	var newest os.DirEntry
	for _, e := range ents { // names are zero-padded offsets: lexical order is offset order
		if strings.HasSuffix(e.Name(), ".seg") && (newest == nil || e.Name() > newest.Name()) {
			newest = e
		}
	}
	if newest == nil {
		t.Fatal("no backlog segment")
	}
	fi, err := newest.Info()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// setFileSizeLimit sets RLIMIT_FSIZE of a running process: writes past the
// limit end short with EFBIG, as on a full disk.
func setFileSizeLimit(t *testing.T, pid int, limit uint64) {
	t.Helper()
	lim := unix.Rlimit{Cur: limit, Max: unix.RLIM_INFINITY}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &lim, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
}

// TestUpstreamClosedWhileBehind: an upstream that hangs up while the proxy
// still has stream queued to read (as an origin does when its replica
// output buffer for the proxy passes client-output-buffer-limit) gets the
// advice that names the limit; one that hangs up once the proxy has caught
// up does not.
func TestUpstreamClosedWhileBehind(t *testing.T) {
	t.Parallel()
	const advice = "the upstream hung up while replproxy was reading behind it"
	rdb := []byte("REDIS0010\xff")
	rdb = binary.LittleEndian.AppendUint64(rdb, psync.CRC64(0, rdb))
	val := strings.Repeat("v", 16<<10)
	var stream []byte
	for i := 0; len(stream) < 64<<20; i++ {
		stream = respCommand(stream, []byte("SET"), []byte("k:"+strconv.Itoa(i)), []byte(val))
	}
	for _, c := range []struct {
		name   string
		behind bool
	}{{"behind", true}, {"caught up", false}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var conns atomic.Int64
			var p *testProxy
			var ready = make(chan struct{})
			addr := fakeMaster(t, func(conn net.Conn) {
				<-ready
				id := strings.Repeat("e", 40)
				fmt.Fprintf(conn, "+FULLRESYNC %s 0\r\n$%d\r\n", id, len(rdb))
				conn.Write(rdb)
				if conns.Add(1) > 1 {
					_, _ = io.Copy(io.Discard, conn) // later connections: an idle link, until the proxy stops
					return
				}
				go func() { _, _ = io.Copy(io.Discard, conn) }() // ACKs
				if c.behind {
					// Write until at least 4 MB are still queued when the
					// link ends, however fast the proxy reads on this run.
					tc := conn.(*net.TCPConn)
					_ = tc.SetWriteBuffer(4 << 20)
					for range 16 {
						if _, err := conn.Write(stream); err != nil || socketOutq(tc) >= 4<<20 {
							break
						}
					}
				} else {
					// As much as the run that counts, then a pause longer
					// than the wait that tells a caught-up proxy apart.
					conn.Write(stream[:8<<20])
					redistest.Eventually(t, 30*time.Second, "the proxy caught up", func() bool {
						return p.backlogEnd() >= 8<<20
					})
					time.Sleep(3 * upstream.BehindEOFWait) // the scenario: an idle link, then the hang-up
				}
				// FIN after the data, as an origin's close: nothing queued is lost.
				conn.(*net.TCPConn).CloseWrite()
			})
			p = startProxy(t, addr, t.TempDir())
			close(ready)
			redistest.Eventually(t, 30*time.Second, "the link ended", func() bool {
				return strings.Contains(p.logBuf.String(), "upstream link down")
			})
			if got := strings.Contains(p.logBuf.String(), advice); got != c.behind {
				t.Fatalf("advice about the output-buffer limit logged: %v, want %v", got, c.behind)
			}
		})
	}
}

// socketOutq is what c's kernel still holds to send (SIOCOUTQ).
func socketOutq(c *net.TCPConn) int {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
	return n
}
