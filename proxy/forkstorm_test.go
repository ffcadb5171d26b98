package proxy

import (
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/upstream"
)

// fillRandom writes n keys of size random (incompressible) bytes.
func fillRandom(t *testing.T, origin *redistest.Server, n, size int) {
	t.Helper()
	ctx := context.Background()
	pipe := origin.Client().Pipeline()
	for i := range n {
		v := make([]byte, size)
		_, _ = rand.Read(v)
		pipe.Set(ctx, "k"+strconv.Itoa(i), v, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
}

// mountTmpfs mounts a tmpfs of size at a new dir for the test's length.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("mounting a small volume needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// TestDiskFullNoForkStorm: a data dir on a volume smaller than the
// snapshot costs the origin at most two forks in a minute, whichever way
// the payload is framed; the proxy says disk_full with the sizes, and once
// the volume grows the next attempt succeeds without a restart.
func TestDiskFullNoForkStorm(t *testing.T) {
	t.Parallel()
	for _, diskless := range []string{"yes", "no"} {
		t.Run("diskless-"+diskless, func(t *testing.T) {
			t.Parallel()
			mnt := mountTmpfs(t, "8m")
			origin := redistest.StartT(t, "origin", "--repl-diskless-sync", diskless)
			fillRandom(t, origin, 1700, 8<<10) // ~14 MB of incompressible values
			forks0 := origin.InfoInt("stats", "total_forks")
			p := startProxy(t, origin.Addr(), mnt)
			start := time.Now()
			for time.Since(start) < 60*time.Second {
				if n := origin.InfoInt("stats", "total_forks") - forks0; n > 2 {
					t.Fatalf("the origin forked %d times in %v", n, time.Since(start))
				}
				time.Sleep(250 * time.Millisecond)
			}
			st := p.Status()
			if !strings.HasPrefix(st.FullSync.Blocked, "disk_full: ") || !strings.Contains(st.FullSync.Blocked, "MiB free") || st.LinkUp {
				t.Fatalf("held back: %q, link up %v", st.FullSync.Blocked, st.LinkUp)
			}
			if !strings.Contains(p.info("replproxy"), "full_sync_blocked:disk_full: a snapshot needs about") {
				t.Fatalf("INFO does not say disk_full:\n%s", p.info("replproxy"))
			}
			if !strings.Contains(p.logBuf.String(), "held back until the data dir has room") {
				t.Fatal("no log line for the held-back full sync")
			}
			if out, err := exec.Command("mount", "-o", "remount,size=64m", mnt).CombinedOutput(); err != nil {
				t.Fatalf("grow the volume: %v %s", err, out)
			}
			redistest.Eventually(t, 60*time.Second, "the full sync succeeds once there is room", func() bool {
				return p.linkUp() && p.position().Snap != nil
			})
			waitSynced(t, origin, p.backlogEnd, 10*time.Second)
			if ok, local := p.Stats().UpstreamFullSyncOutcomes.Load("initial/ok"), p.Stats().UpstreamFullSyncOutcomes.Load("initial/local"); ok != 1 || local < 1 {
				t.Fatalf("initial full syncs: %d ok, %d local failures", ok, local)
			}
			if n := origin.InfoInt("stats", "total_forks") - forks0; n > 3 {
				t.Fatalf("the origin forked %d times in all", n)
			}
			if st := p.Status(); st.FullSync.Blocked != "" {
				t.Fatalf("still held back: %q", st.FullSync.Blocked)
			}
			if tmp := tempFiles(t, mnt); len(tmp) > 0 {
				t.Fatalf("temp files left: %v", tmp)
			}
		})
	}
}

// TestOriginRestartWithPersistenceIsCheap: an origin restarted from its
// RDB continues the proxy's history; that reconnect and the ones while it
// was down follow the fast reconnect backoff, never the full-sync one.
func TestOriginRestartWithPersistenceIsCheap(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	ctx := context.Background()
	_ = origin.Client().Set(ctx, "x", "1", 0).Err()
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	_ = origin.Client().Set(ctx, "y", "2", 0).Err()
	waitSynced(t, origin, p.backlogEnd, 10*time.Second)
	partial := p.Stats().UpstreamPartialSyncs.Load()
	_ = origin.Client().Do(ctx, "SHUTDOWN", "SAVE").Err()
	redistest.Eventually(t, 10*time.Second, "origin down", func() bool { return !p.linkUp() })
	redistest.Eventually(t, 10*time.Second, "a few cheap retries", func() bool {
		return strings.Count(p.logBuf.String(), "upstream link down") >= 3
	})
	if err := origin.Restart(); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 20*time.Second, "partial resync with the restarted origin", func() bool {
		return p.Stats().UpstreamPartialSyncs.Load() > partial && p.linkUp()
	})
	if n := origin.InfoInt("stats", "sync_full"); n != 0 {
		t.Fatalf("the restarted origin served %d full syncs", n)
	}
	for _, line := range strings.Split(p.logBuf.String(), "\n") {
		_, v, ok := strings.Cut(line, "retry_in=")
		if !ok {
			continue
		}
		d, err := time.ParseDuration(strings.Fields(v)[0])
		if err != nil || d > upstream.BackoffMax {
			t.Fatalf("a cheap reconnect waited %q (max %v): %s", v, upstream.BackoffMax, line)
		}
	}
	if fs := p.Status().FullSync; fs.LastClass != "" || !fs.NextAt.IsZero() {
		t.Fatalf("cost backoff engaged: %+v", fs)
	}
}

// TestRefreshHeldBackWithoutRoom: a snapshot refresh needs room for a
// second snapshot beside the one in service; without it the proxy does
// not ask the origin (no fork), says disk_full, and refreshes once the
// volume grows.
func TestRefreshHeldBackWithoutRoom(t *testing.T) {
	t.Parallel()
	mnt := mountTmpfs(t, "24m")
	origin := redistest.StartT(t, "origin")
	ctx := context.Background()
	fillRandom(t, origin, 1200, 8<<10) // ~10 MB of incompressible values
	p := startProxy(t, origin.Addr(), mnt, func(c *Config) { c.BacklogSize, c.RefreshUpstream = 2<<20, upstream.RefreshUpstreamEager })
	redistest.Eventually(t, 30*time.Second, "link up", p.linkUp)
	forks := origin.InfoInt("stats", "total_forks")
	val := make([]byte, 64<<10)
	for i := range 40 { // 2.5 MB of stream: past half the budget
		_, _ = rand.Read(val)
		_ = origin.Client().Set(ctx, "w"+strconv.Itoa(i), val, 0).Err()
	}
	redistest.Eventually(t, 20*time.Second, "the refresh is held back", func() bool {
		return strings.HasPrefix(p.Status().FullSync.Blocked, "disk_full: ")
	})
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(250 * time.Millisecond) {
		if n := origin.InfoInt("stats", "total_forks"); n != forks {
			t.Fatalf("the origin forked for a refresh that cannot fit (%d -> %d)", forks, n)
		}
	}
	if p.Stats().Refreshes.Load()+p.Stats().RefreshFailures.Load() != 0 {
		t.Fatal("a refresh was attempted")
	}
	if out, err := exec.Command("mount", "-o", "remount,size=64m", mnt).CombinedOutput(); err != nil {
		t.Fatalf("grow the volume: %v %s", err, out)
	}
	redistest.Eventually(t, 30*time.Second, "the refresh runs once there is room", func() bool {
		return p.Stats().Refreshes.Load() == 1
	})
	if ok := p.Stats().UpstreamFullSyncOutcomes.Load("refresh/ok"); ok != 1 {
		t.Fatalf("%d refreshes from the upstream", ok)
	}
}
