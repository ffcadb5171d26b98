package proxy

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redistest"
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
