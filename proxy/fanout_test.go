package proxy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redistest"
)

// TestFanoutMatchesOrigin: a plaintext replica moves between its own copy
// loop (the files) and the fan-out (written from the follower's memory)
// under a steady write load: caught up, it is fed by the fan-out; when it
// stops reading, a fan-out write falls short and hands it back; reading
// again, it catches up from the files and parks again. What it receives
// is exactly the origin's own stream.
func TestFanoutMatchesOrigin(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin", "--repl-backlog-size", "256mb")
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	// A steady ~4 MB/s: pauses of the reader below fill the socket buffers.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		ctx, val := context.Background(), strings.Repeat("v", 2000)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			pipe := origin.Client().Pipeline()
			for j := range 10 {
				pipe.Set(ctx, fmt.Sprintf("k%d", (i*10+j)%5000), val, 0)
			}
			_, _ = pipe.Exec(ctx)
		}
	})
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	waitOffsetGrows(t, origin, 1<<20)
	st := p.Status()
	from := st.BacklogFirst + 100

	raw, err := net.DialTimeout("tcp", p.addr, 2*time.Second)
	must(t, err)
	defer raw.Close()
	rep := psyncAt(t, raw, st.History.ReplID, from)
	for cycle := 0; cycle < 20 && p.Stats().FanoutHandbacks.Load() < 3; cycle++ {
		rep.readThrough(p.backlogEnd()) // then it is parked and fed by the fan-out
		fanned := p.Stats().FanoutBytes.Load()
		redistest.Eventually(t, 10*time.Second, "the fan-out feeds the caught-up replica", func() bool {
			return p.Stats().FanoutBytes.Load() > fanned
		})
		// Stop reading until the socket is full and a fan-out write falls
		// short.
		handbacks := p.Stats().FanoutHandbacks.Load()
		redistest.Eventually(t, 20*time.Second, "a short write hands the replica back", func() bool {
			return p.Stats().FanoutHandbacks.Load() > handbacks
		})
	}
	stopLoad()
	rep.readThrough(waitSynced(t, origin, p.backlogEnd, 20*time.Second))
	// Caught up and parked again (after the pause that follows a full
	// socket): writes that come one by one reach it through the fan-out.
	redistest.Eventually(t, 10*time.Second, "the replica parks", func() bool { return p.fanout.Parked() == 1 })
	fanned := p.Stats().FanoutBytes.Load()
	rep.singleWrites(origin, p, 20)
	if p.Stats().FanoutBytes.Load() == fanned || p.Stats().FanoutHandbacks.Load() < 3 {
		t.Fatalf("fan-out bytes %d (before the single writes %d), handbacks %d: the replica did not move between the two paths",
			p.Stats().FanoutBytes.Load(), fanned, p.Stats().FanoutHandbacks.Load())
	}
	// A burst: one 8 MB command reaches the follower in full reads (and
	// fills the socket: either hands the parked replica back to its own
	// copy loop; TestFanoutBusyHandsBack tells them apart); then it parks
	// again for single writes.
	handbacks := p.Stats().FanoutHandbacks.Load()
	must(t, origin.Client().Set(context.Background(), "burst", strings.Repeat("b", 8<<20), 0).Err())
	rep.readThrough(waitSynced(t, origin, p.backlogEnd, 20*time.Second))
	if p.Stats().FanoutHandbacks.Load() == handbacks {
		t.Fatal("an 8 MB burst did not hand the parked replica back")
	}
	redistest.Eventually(t, 10*time.Second, "the replica parks after the burst", func() bool { return p.fanout.Parked() == 1 })
	end := rep.singleWrites(origin, p, 5)
	rep.matchOrigin(origin, st.History.ReplID, end)
}
