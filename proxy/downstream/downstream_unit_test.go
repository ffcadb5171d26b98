package downstream

import (
	"context"
	"fmt"
	"log/slog"
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

// TestNewReplicaChecksSync: a malformed SYNC or PSYNC is answered with
// Redis' error and makes no replica (so no replica is listed, counted or
// disconnected for it); a well-formed one is parsed once.
func TestNewReplicaChecksSync(t *testing.T) {
	d := &Downstream{replicas: map[*Replica]struct{}{}}
	var replied []string
	link := handoff.Link{Log: slog.New(slog.DiscardHandler), Errorf: func(format string, a ...any) error {
		replied = append(replied, fmt.Sprintf(format, a...))
		return nil
	}}
	args := func(s ...string) [][]byte {
		var out [][]byte
		for _, a := range s {
			out = append(out, []byte(a))
		}
		return out
	}
	for _, c := range []struct {
		cmd   string
		args  [][]byte
		reply string
	}{
		{"sync", args("sync", "x"), "ERR wrong number of arguments for 'sync' command"},
		{"psync", args("psync", "?"), "ERR wrong number of arguments for 'psync' command"},
		{"psync", args("psync", "?", "abc"), "ERR value is not an integer or out of range"},
		{"psync", args("psync", "id", "1", "FAILOVER"), "ERR PSYNC FAILOVER can't be sent to replproxy: it never becomes a master"},
		{"psync", args("psync", "id", "1", "x"), "ERR syntax error"},
	} {
		replied = nil
		r, err := d.NewReplica(link, c.cmd, c.args)
		if r != nil || err != nil || len(replied) != 1 || replied[0] != c.reply {
			t.Errorf("%q: replica %v, err %v, replied %q; want none and %q", c.args, r, err, replied, c.reply)
		}
	}
	r, err := d.NewReplica(link, "psync", args("psync", "abc", "42"))
	if err != nil || r == nil || r.req.replid != "abc" || r.req.offset != 42 || r.legacy {
		t.Fatalf("PSYNC abc 42: %+v, %v", r, err)
	}
	if r, _ := d.NewReplica(link, "sync", args("sync")); r == nil || !r.legacy || r.req.offset != -1 {
		t.Fatalf("SYNC: %+v", r)
	}
	if len(d.replicas) != 0 {
		t.Fatal("a replica was registered before it ran")
	}
}
