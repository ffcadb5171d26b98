package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/backlog"
)

// TestIntakeBufferSIGKILLDuringBursts: replproxy is SIGKILLed at moments
// when its intake buffer holds stream its files do not, in the middle of
// bulk loads, and restarted. Replicas it had sent those bytes are then
// ahead of its data dir: they are held until the upstream resends them and
// continue. Every replica ends with the origin's digest, a replica that
// records the stream across every restart got exactly the origin's bytes,
// and nothing full-syncs: the origin's backlog covers every restart, so a
// data dir written up to each kill would have needed none either.
func TestIntakeBufferSIGKILLDuringBursts(t *testing.T) {
	// The data dir is on a slow disk (lazyfs, 2 ms a write request: at most
	// about 64 MB/s), so that the buffer holds stream the files do not at
	// every kill, however fast this machine's own disk is. No power cut:
	// a SIGKILL keeps what reached the file system.
	lfs := mountLazyFS(t, "slow disk")
	lfs.SetWriteDelay(2 * time.Millisecond)
	dataDir := filepath.Join(lfs.Mountpoint, "data")
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "1gb")
	proc := startProxyProcess(t, origin.Addr(), "--intake-buffer", "64mb", "--data-dir", dataDir)
	replicas := startReplicas(t, 2, proc.addr)
	waitConverged(t, origin, replicas, 60*time.Second)
	replid := mustInfo(t, origin, "replication")["master_replid"]
	rec := startRecorder(t, proc.addr, replid, origin.InfoInt("replication", "master_repl_offset")+1)

	seed := uint64(time.Now().UnixNano())
	rnd := rand.New(rand.NewPCG(seed, 1))
	t.Logf("seed %d", seed)
	ahead := 0
	const rounds = 4
	for round := range rounds {
		done := make(chan error, 1)
		size := int64(60+rnd.IntN(60)) << 20
		go func() { done <- bulkLoad(origin.Client(), size, 100_000) }()
		// Kill while the buffer holds bytes the files do not, or, if the
		// disk keeps up this time, at a random point of the load.
		want := int64(1+rnd.IntN(8)) << 20
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if m, err := proxyInfo(proc.addr, "memory"); err == nil && atoi(m["mem_intake_buffer"]) >= want {
				break
			}
			time.Sleep(2 * time.Millisecond) // poll pace
		}
		proc.Kill()
		sum, err := backlog.Inspect(filepath.Join(dataDir, "backlog"))
		must(t, err)
		if got := rec.end(); got > sum.End {
			ahead++
			t.Logf("round %d: the recording replica had offset %d, the data dir %d", round, got, sum.End)
		}
		proc.restart()
		must(t, <-done)
	}
	waitConverged(t, origin, replicas, 2*time.Minute)
	end := origin.InfoInt("replication", "master_repl_offset")
	rec.waitFor(t, end)
	rec.stop()
	if ahead == 0 {
		t.Fatalf("in none of %d kills was a replica ahead of the data dir: the intake buffer was not exercised", rounds)
	}
	if got := origin.InfoInt("stats", "sync_full"); got != 1 {
		t.Fatalf("origin sync_full %d, want 1 (the proxy's first sync)", got)
	}
	for _, r := range replicas {
		b, _ := os.ReadFile(r.Log)
		if full := strings.Count(string(b), "Full resync from master"); full != 1 {
			t.Fatalf("replica %d: %d full syncs, want 1", r.Port, full)
		}
	}
	rec.matchOrigin(t, origin, replid, end)
}

// bulkLoad writes about total bytes of SETs of value bytes to 1000 keys,
// 16 to a pipeline on 4 connections: a bulk load at the origin's speed.
func bulkLoad(cli *redis.Client, total int64, value int) error {
	val := strings.Repeat("v", value)
	per := total / int64(value) / 4
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Go(func() {
			ctx := context.Background()
			for i := int64(0); i < per; i += 16 {
				pipe := cli.Pipeline()
				for j := range int64(16) {
					pipe.Set(ctx, "bulk:"+strconv.FormatInt(((i+j)*4+int64(w))%1000, 10), val, 0)
				}
				if _, err := pipe.Exec(ctx); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func proxyInfo(addr, section string) (map[string]string, error) {
	cli := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second, ReadTimeout: time.Second, MaxRetries: -1})
	defer cli.Close()
	s, err := cli.Info(context.Background(), section).Result()
	if err != nil {
		return nil, err
	}
	return redistest.ParseInfo(s), nil
}

func atoi(s string) int64 { n, _ := strconv.ParseInt(s, 10, 64); return n }

// recorder is a replica of the proxy that keeps a digest of every stream
// byte it reads, and after a lost link (a killed proxy) PSYNCs again from
// the next byte: it must be continued every time.
type recorder struct {
	addr, replid string
	from         int64
	mu           sync.Mutex
	next         int64     // offset of the next byte
	hash         hash.Hash // of every byte read
	err          error
	quit         chan struct{}
	wg           sync.WaitGroup
}

func startRecorder(t *testing.T, addr, replid string, from int64) *recorder {
	r := &recorder{addr: addr, replid: replid, from: from, next: from, hash: sha256.New(), quit: make(chan struct{})}
	r.wg.Go(r.run)
	t.Cleanup(r.stop)
	return r
}

func (r *recorder) stop() {
	select {
	case <-r.quit:
	default:
		close(r.quit)
	}
	r.wg.Wait()
}

func (r *recorder) end() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next - 1
}

func (r *recorder) run() {
	for {
		select {
		case <-r.quit:
			return
		default:
		}
		if err := r.session(); err != nil && errors.Is(err, errNotContinued) {
			r.mu.Lock()
			r.err = err
			r.mu.Unlock()
			return
		}
		time.Sleep(20 * time.Millisecond) // the proxy is restarting: retry pace
	}
}

var errNotContinued = errors.New("recorder: the proxy did not continue the stream")

// session is one link: handshake, PSYNC at the next byte, read until it
// fails or the recorder stops.
func (r *recorder) session() error {
	conn, err := net.DialTimeout("tcp", r.addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	ended := make(chan struct{})
	defer close(ended)
	r.wg.Go(func() {
		select {
		case <-r.quit:
			conn.Close() // ends the read below
		case <-ended:
		}
	})
	br := bufio.NewReaderSize(conn, 1<<20)
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := psync.Handshake(conn, br, psync.HandshakeConfig{ListeningPort: 1}); err != nil {
		return err
	}
	next := r.end() + 1
	reply, err := psync.Psync(conn, br, r.replid, next, nil)
	if err != nil {
		return err
	}
	if reply.Kind != psync.ReplyContinue {
		return fmt.Errorf("%w: PSYNC %d answered %+v", errNotContinued, next, reply)
	}
	_ = conn.SetDeadline(time.Time{})
	buf := make([]byte, 1<<20)
	acked := time.Now()
	for {
		n, err := br.Read(buf)
		if n > 0 {
			r.mu.Lock()
			r.hash.Write(buf[:n])
			r.next += int64(n)
			off := r.next - 1
			r.mu.Unlock()
			if time.Since(acked) > time.Second {
				conn.Write(psync.AckCommand(off))
				acked = time.Now()
			}
		}
		if err != nil {
			return err
		}
	}
}

// waitFor waits until the recorder holds offset end.
func (r *recorder) waitFor(t *testing.T, end int64) {
	t.Helper()
	redistest.Eventually(t, time.Minute, "the recording replica reaches the origin's offset", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.next > end
	})
}

// matchOrigin compares the digest of [from, end] as recorded with the
// origin's own stream there.
func (r *recorder) matchOrigin(t *testing.T, origin *redistest.Server, replid string, end int64) {
	t.Helper()
	r.mu.Lock()
	if r.next-1 != end { // the origin's PINGs may have come since: read only to end
		r.mu.Unlock()
		t.Fatalf("recorded through %d, the origin's offset is %d", r.next-1, end)
	}
	got := r.hash.Sum(nil)
	r.mu.Unlock()
	conn, err := net.DialTimeout("tcp", origin.Addr(), 5*time.Second)
	must(t, err)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	br := bufio.NewReaderSize(conn, 1<<20)
	must(t, psync.Handshake(conn, br, psync.HandshakeConfig{ListeningPort: 1}))
	reply, err := psync.Psync(conn, br, replid, r.from, nil)
	if err != nil || reply.Kind != psync.ReplyContinue {
		t.Fatalf("reference PSYNC %d: %+v %v", r.from, reply, err)
	}
	ref := sha256.New()
	if _, err := io.CopyN(ref, br, end-r.from+1); err != nil {
		t.Fatalf("reference stream: %v", err)
	}
	if string(ref.Sum(nil)) != string(got) {
		t.Fatalf("the recorded stream [%d, %d] differs from the origin's", r.from, end)
	}
}
