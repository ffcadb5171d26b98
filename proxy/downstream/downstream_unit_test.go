package downstream

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/proxy/handoff"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// TestRefreshCandidates: online, ACKing replicas with an announced port,
// most caught up first, the one asked last time last while others exist.
func TestRefreshCandidates(t *testing.T) {
	d := &Downstream{replicas: map[*Replica]struct{}{}}
	now := time.Now().UnixNano()
	add := func(ip string, port int, ack int64, state int32, ackAge time.Duration, legacy bool) {
		s := &Replica{Announce: handoff.Announce{IPAddress: ip, ListeningPort: port}, legacy: legacy}
		s.ackOff.Store(ack)
		s.ackTime.Store(now - int64(ackAge))
		s.state.Store(state)
		d.replicas[s] = struct{}{}
	}
	add("10.0.0.1", 6379, 100, stateOnline, 0, false)
	add("10.0.0.2", 6379, 300, stateOnline, 0, false)
	add("10.0.0.3", 6379, 200, stateOnline, 0, false)
	add("10.0.0.4", 6379, 999, stateOnline, 10*time.Second, false) // frozen: no recent ACK
	add("10.0.0.5", 6379, 999, stateSendBulk, 0, false)            // busy receiving a full sync
	add("10.0.0.6", 0, 999, stateOnline, 0, false)                 // no listening port (redis-cli --replica)
	add("10.0.0.7", 6379, 999, stateOnline, 0, true)               // SYNC client
	addrs := func(cs []vocab.Candidate) string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Addr)
		}
		return strings.Join(out, " ")
	}
	none := func(string) bool { return false }
	got := addrs(d.RefreshCandidates("", none))
	if want := "10.0.0.2:6379 10.0.0.3:6379 10.0.0.1:6379"; got != want {
		t.Fatalf("candidates %s, want %s", got, want)
	}
	got = addrs(d.RefreshCandidates("10.0.0.2:6379", none))
	if want := "10.0.0.3:6379 10.0.0.1:6379 10.0.0.2:6379"; got != want {
		t.Fatalf("after asking 10.0.0.2: %s, want %s", got, want)
	}
	// A replica refused before (protected mode, unreachable) goes last.
	got = addrs(d.RefreshCandidates("", func(a string) bool { return a == "10.0.0.2:6379" }))
	if want := "10.0.0.3:6379 10.0.0.1:6379 10.0.0.2:6379"; got != want {
		t.Fatalf("with 10.0.0.2 refused: %s, want %s", got, want)
	}
}

// TestAwaitAbandonedSync: a replica's new full-sync request waits for its
// earlier link that got a payload and never ACKed to end (so that link's
// refusal is noted first), but not for other replicas' links, an ACKed
// link, or past its limit.
func TestAwaitAbandonedSync(t *testing.T) {
	d := &Downstream{replicas: map[*Replica]struct{}{}}
	add := func(port int, sentRDB int32, acked bool) *Replica {
		s := &Replica{Announce: handoff.Announce{IPAddress: "10.0.0.1", ListeningPort: port}}
		s.sentRDB.Store(sentRDB)
		s.acked.Store(acked)
		d.mu.Lock()
		d.replicas[s] = struct{}{}
		d.mu.Unlock()
		return s
	}
	self := add(6379, 0, false)
	add(6380, 12, false) // another replica
	add(6379, 12, true)  // loaded and ACKed: alive
	add(6379, 0, false)  // got no payload
	ctx := context.Background()
	start := time.Now()
	d.awaitAbandonedSync(ctx, self, time.Minute)
	if time.Since(start) > 30*time.Second {
		t.Fatal("waited for links that are not abandoned full syncs")
	}

	old := add(6379, 12, false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.awaitAbandonedSync(ctx, self, time.Minute)
	}()
	select {
	case <-done:
		t.Fatal("did not wait for the replica's abandoned link")
	case <-time.After(100 * time.Millisecond):
	}
	d.mu.Lock()
	delete(d.replicas, old)
	d.mu.Unlock()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("still waiting after the abandoned link ended")
	}

	add(6379, 12, false) // never ends: the limit applies
	start = time.Now()
	d.awaitAbandonedSync(ctx, self, 50*time.Millisecond)
	if time.Since(start) > 10*time.Second {
		t.Fatal("the limit did not end the wait")
	}
}
