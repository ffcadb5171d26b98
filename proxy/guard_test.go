package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/faultproxy"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// TestGuardEmptyOrigin: an origin with 100k keys is killed and restarts
// empty (no persistence). With the guard on, the replicas keep every key
// and their digest while the new history is held, the origin forks once
// (for the held snapshot) however long it is held, the held stream takes
// the new writes, and an operator's REPLPROXY GUARD ACCEPT moves the
// replicas to the new dataset with no further fork. With the guard off,
// the replicas follow the origin into emptiness, as before.
func TestGuardEmptyOrigin(t *testing.T) {
	t.Parallel()
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("guard=%v", on), func(t *testing.T) {
			t.Parallel()
			origin := redistest.StartT(t, "origin")
			ctx := context.Background()
			must(t, origin.Client().Do(ctx, "DEBUG", "POPULATE", 100000, "key", 16).Err())
			dir := t.TempDir()
			mod := func(c *Config) { c.GuardDisabled = !on }
			p := startProxy(t, origin.Addr(), dir, mod)
			replicas := startReplicas(t, 2, p.addr)
			waitConverged(t, origin, replicas, 60*time.Second)
			before, err := replicas[0].Digest()
			must(t, err)

			origin.Kill()
			must(t, origin.Restart())
			if !on {
				waitConverged(t, origin, replicas, 60*time.Second)
				if n := replicas[0].Client().DBSize(ctx).Val(); n != 0 {
					t.Fatalf("guard off: the replica has %d keys, want the empty origin's 0", n)
				}
				return
			}
			redistest.Eventually(t, 30*time.Second, "the guard holds the empty history", func() bool { return p.GuardStatus().Holding })
			gs := p.GuardStatus()
			if gs.CurKeys != 100000 || gs.NewKeys != 0 {
				t.Fatalf("guard status %+v", gs)
			}
			for i := range 100 {
				must(t, origin.Client().Set(ctx, fmt.Sprintf("new%d", i), i, 0).Err())
			}
			redistest.Eventually(t, 20*time.Second, "the held stream takes the new writes", func() bool {
				return p.GuardStatus().HeldEnd >= origin.InfoInt("replication", "master_repl_offset")
			})
			// A restart while held: the held history is recovered from the
			// data dir and continued with a partial resync, not asked again.
			p.stop(t)
			p = startProxy(t, origin.Addr(), dir, mod)
			redistest.Eventually(t, 30*time.Second, "the restarted proxy continues the held history", func() bool {
				return p.GuardStatus().Holding && p.linkUp() && origin.InfoInt("stats", "sync_partial_ok") >= 1
			})
			host, port, _ := strings.Cut(p.addr, ":")
			for _, r := range replicas {
				must(t, r.Client().Do(ctx, "REPLICAOF", host, port).Err())
			}
			redistest.Eventually(t, 20*time.Second, "the replicas follow the restarted proxy", func() bool {
				for _, r := range replicas {
					if mustInfo(t, r, "replication")["master_link_status"] != "up" {
						return false
					}
				}
				return true
			})
			for _, r := range replicas {
				if n := r.Client().DBSize(ctx).Val(); n != 100000 {
					t.Fatalf("while held: replica has %d keys", n)
				}
				if d, _ := r.Digest(); d != before {
					t.Fatal("while held: a replica's digest changed")
				}
			}
			if f := origin.InfoInt("stats", "total_forks"); f != 1 {
				t.Fatalf("while held: the origin forked %d times", f)
			}
			info := mustInfo(t, replicas[0], "replication")
			if info["master_link_status"] != "up" {
				t.Fatalf("while held the replicas stay linked to the proxy: %v", info["master_link_status"])
			}
			txt := rawCommand(t, p.addr, "REPLPROXY", "GUARD", "STATUS")
			if !strings.Contains(txt, "guard:holding") || !strings.Contains(txt, "guard_current_keys:100000") || !strings.Contains(txt, "guard_new_keys:0") {
				t.Fatalf("REPLPROXY GUARD STATUS: %q", txt)
			}
			if got := rawCommand(t, p.addr, "REPLPROXY", "GUARD", "ACCEPT"); got != "+OK\r\n" {
				t.Fatalf("accept: %q", got)
			}
			if got := rawCommand(t, p.addr, "REPLPROXY", "GUARD", "ACCEPT"); !strings.HasPrefix(got, "-ERR the guard holds no history") {
				t.Fatalf("a second accept: %q", got)
			}
			waitConverged(t, origin, replicas, 60*time.Second)
			if n := replicas[1].Client().DBSize(ctx).Val(); n != 100 {
				t.Fatalf("after accept: %d keys, want the new origin's 100", n)
			}
			if f := origin.InfoInt("stats", "total_forks"); f != 1 {
				t.Fatalf("after accept: the origin forked %d times", f)
			}
		})
	}
}

// TestGuardAcceptDuringFullSync: operators' GUARD ACCEPTs arrive from
// several goroutines while a history is held and the main link receives
// a slow full sync of yet another history. An accept is a request the
// follow goroutine serves between links (it owns the held history and the
// stream scanner; under -race a write from another goroutine is
// reported), and a full sync in flight is not cut for it. The proxy ends
// on the origin's history with its data, and a replica matches the origin.
func TestGuardAcceptDuringFullSync(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	ctx := context.Background()
	must(t, origin.Client().Do(ctx, "DEBUG", "POPULATE", 20000, "key", 16).Err())
	fp, err := faultproxy.New(origin.Addr())
	must(t, err)
	defer fp.Close()
	p := startProxy(t, fp.Addr(), t.TempDir())
	redistest.Eventually(t, 30*time.Second, "link up", p.linkUp)
	origin.Kill()
	must(t, origin.Restart())
	redistest.Eventually(t, 30*time.Second, "the guard holds the empty history", func() bool { return p.GuardStatus().Holding })

	// Another history with data (DEBUG POPULATE is not replicated: the
	// proxy gets it only in the full sync), sent slowly: the accepts land
	// during its full sync, while the empty history is held, and after.
	fp.Refuse(true)
	origin.Kill()
	must(t, origin.Restart())
	must(t, origin.Client().Do(ctx, "DEBUG", "POPULATE", 3000, "other", 16).Err())
	must(t, origin.Client().ConfigSet(ctx, "rdb-key-save-delay", "1000").Err())
	fp.Refuse(false)
	redistest.Eventually(t, 30*time.Second, "the full sync of the newest history is under way", func() bool {
		return p.Status().LinkState == vocab.LinkSync
	})
	var stop atomic.Bool
	var wg sync.WaitGroup
	var served atomic.Int64
	for range 4 { // during the full sync, a history held
		wg.Go(func() {
			for !stop.Load() {
				switch err := p.GuardAccept(); {
				case err == nil:
					served.Add(1)
				case !errors.Is(err, vocab.ErrNothingHeld) && !errors.Is(err, vocab.ErrHeldChanged):
					t.Errorf("accept: %v", err)
					return
				}
			}
		})
	}
	// The origin names its history when it creates its backlog, at the
	// first full sync: read it then.
	var replid string
	redistest.Eventually(t, 60*time.Second, "the proxy streams or holds the origin's newest history", func() bool {
		replid = mustInfo(t, origin, "replication")["master_replid"]
		return p.linkUp() && p.Status().History.ReplID == replid || p.GuardStatus().Holding && p.GuardStatus().ReplID == replid
	})
	stop.Store(true)
	wg.Wait()
	if served.Load() == 0 {
		t.Fatal("no accept was served")
	}
	if p.GuardStatus().Holding { // the newest history arrived after the last accept
		must(t, p.GuardAccept())
	}
	must(t, origin.Client().ConfigSet(ctx, "rdb-key-save-delay", "0").Err())
	redistest.Eventually(t, 30*time.Second, "the proxy follows the origin's history", func() bool {
		return p.linkUp() && p.Status().History.ReplID == replid
	})
	if f := origin.InfoInt("stats", "total_forks"); f != 1 {
		t.Fatalf("the origin forked %d times for one history: an accept cut a full sync", f)
	}
	replicas := startReplicas(t, 1, p.addr)
	waitConverged(t, origin, replicas, 60*time.Second)
}
