package proxy

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redistest"
)

// TestDelayedReplicas: behind --delayed-listen with --delay 20s, under a
// write load, a marker reaches the delayed replica no earlier than 20 s
// after it was written (and not much later); a delayed replica joining
// later full-syncs to the state of 20 s ago; after FLUSHALL on the origin
// the delayed replica keeps the data until the delay has passed.
func TestDelayedReplicas(t *testing.T) {
	t.Parallel()
	const delay = 20 * time.Second
	origin := redistest.StartT(t, "origin")
	ctx := context.Background()
	// Not populate(): its SELECTs leave pooled connections on other DBs.
	must(t, origin.Client().Do(ctx, "DEBUG", "POPULATE", 1000).Err())
	p := startProxy(t, origin.Addr(), t.TempDir(), func(c *Config) { c.DelayedListen, c.Delay = "127.0.0.1:0", delay })
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	stop := make(chan struct{})
	var load sync.WaitGroup
	load.Go(func() { // the stream keeps moving
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			_ = origin.Client().Set(ctx, "tick"+strconv.Itoa(i%100), i, 0).Err()
		}
	})
	defer func() { close(stop); load.Wait() }()
	dAddr := p.DelayedAddr().String()
	d1 := startReplicas(t, 1, dAddr)[0]

	written := time.Now()
	must(t, origin.Client().Set(ctx, "marker", "m", 0).Err())
	var seen time.Time
	if err := redistest.WaitFor(delay+15*time.Second, func() bool {
		if v, _ := d1.Client().Get(ctx, "marker").Result(); v == "m" {
			seen = time.Now()
			return true
		}
		return false
	}); err != nil {
		t.Fatalf("the marker never reached the delayed replica: %v; replica: %v; proxy horizon %d end %d", err,
			mustInfo(t, d1, "replication"), p.store.Horizon(), p.store.Backlog.End())
	}
	if d := seen.Sub(written); d < delay || d > delay+8*time.Second {
		t.Fatalf("the marker reached the delayed replica %v after it was written; the delay is %v", d, delay)
	}

	// A delayed replica joining now gets the data as it was 20 s ago.
	must(t, origin.Client().Set(ctx, "late", "l", 0).Err())
	d2 := startReplicas(t, 1, dAddr)[0]
	redistest.Eventually(t, 30*time.Second, "the late delayed replica syncs", func() bool {
		v, _ := d2.Client().Get(ctx, "marker").Result()
		return v == "m" && mustInfo(t, d2, "replication")["master_link_status"] == "up"
	})
	if v, _ := d2.Client().Get(ctx, "late").Result(); v != "" {
		t.Fatal("the late delayed replica has a key written less than the delay ago")
	}

	// FLUSHALL reaches the delayed replicas only after the delay.
	flushed := time.Now()
	must(t, origin.Client().FlushAll(ctx).Err())
	if n := d1.Client().DBSize(ctx).Val(); n == 0 {
		t.Fatal("FLUSHALL reached the delayed replica at once")
	}
	var emptied time.Time
	redistest.Eventually(t, delay+15*time.Second, "FLUSHALL reaches the delayed replica after the delay", func() bool {
		// Only "no such key" counts: an error (a timeout on a loaded
		// machine) says nothing about the key.
		if _, err := d1.Client().Get(ctx, "marker").Result(); errors.Is(err, redis.Nil) {
			emptied = time.Now()
			return true
		}
		return false
	})
	if d := emptied.Sub(flushed); d < delay {
		t.Fatalf("FLUSHALL reached the delayed replica %v after it ran; the delay is %v", d, delay)
	}
	if ds := p.DelayStatus(); !ds.Enabled || !ds.Covered {
		t.Fatalf("delay status %+v", ds)
	}
}
