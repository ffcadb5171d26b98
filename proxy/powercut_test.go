package proxy

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/lazyfs"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/psync/backlog"
)

// TestPowerCutDataDir: replproxy's data dir on a file system that loses
// what was not fsynced (internal/lazyfs), under a write load; the proxy is
// SIGKILLed and its disk "loses power" again and again. With --fsync
// always nothing the proxy had ACKed upstream is lost; with everysec at
// most what came after the last fsync. Either way the proxy comes back on
// what survived, its replicas (ahead of it now) are held and continue, a
// replica recording the stream across every cut got exactly the origin's
// bytes, every replica ends with the origin's digest, and nothing
// full-syncs: the origin's backlog covers what the cut lost.
func TestPowerCutDataDir(t *testing.T) {
	for _, policy := range []string{"always", "everysec"} {
		t.Run(policy, func(t *testing.T) { powerCuts(t, policy) })
	}
}

func powerCuts(t *testing.T, policy string) {
	lfs := mountLazyFS(t, "power cuts")
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "256mb")
	populate(t, origin)
	dataDir := filepath.Join(lfs.Mountpoint, "data")
	proc := startProxyProcess(t, origin.Addr(), "--data-dir", dataDir, "--fsync", policy)
	replicas := startReplicas(t, 2, proc.addr)
	waitConverged(t, origin, replicas, 60*time.Second)
	replid := mustInfo(t, origin, "replication")["master_replid"]
	rec := startRecorder(t, proc.addr, replid, origin.InfoInt("replication", "master_repl_offset")+1)

	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 21)
	const rounds = 4
	seed := uint64(time.Now().UnixNano())
	rnd := rand.New(rand.NewPCG(seed, 2))
	t.Logf("seed %d", seed)
	for round := range rounds {
		// Cut at a random moment once the proxy has caught up with what
		// the origin had at its restart: with everysec, some rounds then
		// lose up to a second of stream, some less.
		target := origin.InfoInt("replication", "master_repl_offset")
		redistest.Eventually(t, time.Minute, "the proxy catches up", func() bool {
			return proxyAckAtOrigin(t, origin) >= target
		})
		time.Sleep(time.Duration(200+rnd.IntN(2300)) * time.Millisecond) // the moment of the cut
		acked := proxyAckAtOrigin(t, origin)
		proc.Kill()
		must(t, lfs.PowerCut())
		sum, err := backlog.Inspect(filepath.Join(dataDir, "backlog"))
		must(t, err)
		t.Logf("round %d: origin had the proxy's ACK at %d; the data dir kept up to %d; the recording replica had %d",
			round, acked, sum.End, rec.end())
		// What the cut left is the origin's stream, byte for byte.
		if from := max(sum.First, sum.End-(8<<20)+1); sum.End >= from && from > 0 {
			kept := backlogFileBytes(t, dataDir, from, sum.End)
			if ref := originStream(t, origin, replid, from, sum.End); !bytes.Equal(kept, ref) {
				t.Fatalf("round %d: after the cut the data dir's backlog differs from the origin's stream at offset %d of [%d, %d]",
					round, from+int64(firstDiff(kept, ref)), from, sum.End)
			}
		}
		if policy == "always" && sum.End < acked {
			t.Fatalf("--fsync always lost acknowledged stream: the origin had an ACK for %d, the data dir ends at %d", acked, sum.End)
		}
		proc.restart()
	}
	close(stop)
	wg.Wait()
	waitConverged(t, origin, replicas, 2*time.Minute)
	end := origin.InfoInt("replication", "master_repl_offset")
	rec.waitFor(t, end)
	rec.stop()
	rec.matchOrigin(t, origin, replid, end)
	if got := origin.InfoInt("stats", "sync_full"); got != 1 {
		t.Fatalf("origin sync_full %d, want 1 (the proxy's first sync)", got)
	}
	for _, r := range replicas {
		b, _ := os.ReadFile(r.Log)
		if full := strings.Count(string(b), "Full resync from master"); full != 1 {
			t.Fatalf("replica %d: %d full syncs, want 1", r.Port, full)
		}
	}
	if lfs.Cuts() != rounds {
		t.Fatalf("%d power cuts, want %d", lfs.Cuts(), rounds)
	}
}

// proxyAckAtOrigin waits until the proxy streams from the origin (INFO
// replication's slave0 online; it is the origin's only replica) and
// returns the offset of its last ACK there.
func proxyAckAtOrigin(t *testing.T, origin *redistest.Server) int64 {
	t.Helper()
	var off int64
	redistest.Eventually(t, 30*time.Second, "the proxy streams from the origin", func() bool {
		line := mustInfo(t, origin, "replication")["slave0"]
		online := false
		for _, kv := range strings.Split(line, ",") {
			if v, ok := strings.CutPrefix(kv, "offset="); ok {
				off, _ = strconv.ParseInt(v, 10, 64)
			}
			online = online || kv == "state=online"
		}
		return online
	})
	return off
}

// mountLazyFS mounts a lazyfs for the test (unmounted at its end), or
// skips it, saying what it needs, where FUSE is not available.
func mountLazyFS(t *testing.T, needs string) *lazyfs.FS {
	t.Helper()
	lfs, err := lazyfs.Mount(t.TempDir(), filepath.Join(t.TempDir(), "mnt"))
	if errors.Is(err, lazyfs.ErrUnavailable) {
		t.Skipf("no FUSE here for the %s this test needs: %v", needs, err)
	}
	must(t, err)
	t.Cleanup(func() {
		if err := lfs.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return lfs
}
