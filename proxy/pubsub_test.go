package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redistest"
)

// receive waits for the next message of ps.
func receive(t *testing.T, ps *redis.PubSub) *redis.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		v, err := ps.Receive(ctx)
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if m, ok := v.(*redis.Message); ok {
			return m
		}
	}
}

// TestPubSubDelivery: subscribers of the proxy get what clients publish to
// it and the PUBLISH commands of the upstream stream, in order, whole
// however the reads cut them, under a write load; channels and patterns;
// Redis' pub/sub mode rules.
func TestPubSubDelivery(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	ctx := context.Background()
	cli := redis.NewClient(&redis.Options{Addr: p.addr})
	defer cli.Close()
	sub := cli.Subscribe(ctx, "news")
	defer sub.Close()
	psub := cli.PSubscribe(ctx, "ne[a-z]?")
	defer psub.Close()
	for _, ps := range []*redis.PubSub{sub, psub} {
		if _, err := ps.Receive(ctx); err != nil { // the confirmation
			t.Fatal(err)
		}
	}
	check := func(want, how string) {
		t.Helper()
		if m := receive(t, sub); m.Channel != "news" || m.Payload != want || m.Pattern != "" {
			t.Fatalf("%s: channel subscriber got %q on %q, want %.40q", how, m.Payload, m.Channel, want)
		}
		if m := receive(t, psub); m.Channel != "news" || m.Payload != want || m.Pattern != "ne[a-z]?" {
			t.Fatalf("%s: pattern subscriber got %.40q on %q (%q)", how, m.Payload, m.Channel, m.Pattern)
		}
	}
	if n, err := cli.Publish(ctx, "news", "from a client").Result(); err != nil || n != 2 {
		t.Fatalf("PUBLISH to the proxy: %d %v", n, err)
	}
	check("from a client", "client PUBLISH")
	must(t, origin.Client().Publish(ctx, "news", "from the origin").Err())
	check("from the origin", "stream PUBLISH")

	big := strings.Repeat("x", 3<<20) // longer than any read: cut between them
	must(t, origin.Client().Publish(ctx, "news", big).Err())
	check(big, "3 MB stream PUBLISH")

	stop := make(chan struct{})
	wg := runMixedLoad(t, origin.Client(), stop, 5)
	for i := range 300 {
		must(t, origin.Client().Publish(ctx, "news", fmt.Sprintf("m%d", i)).Err())
	}
	for i := range 300 {
		check(fmt.Sprintf("m%d", i), "stream PUBLISH under load")
	}
	close(stop)
	wg.Wait()

	info, err := cli.Info(ctx, "stats", "clients").Result()
	must(t, err)
	for _, f := range []string{"pubsub_channels:1\r\n", "pubsub_patterns:1\r\n", "pubsub_clients:2\r\n"} {
		if !strings.Contains(info, f) {
			t.Errorf("INFO lacks %q", f)
		}
	}
	list, err := cli.ClientList(ctx).Result()
	must(t, err)
	if !strings.Contains(list, "flags=P db=0 sub=1 psub=0") || !strings.Contains(list, "flags=P db=0 sub=0 psub=1") {
		t.Errorf("CLIENT LIST does not show the subscribers:\n%s", list)
	}

	// Pub/sub mode on a raw connection, byte for byte as Redis 7 (RESP2).
	c, err := net.Dial("tcp", p.addr)
	must(t, err)
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	exchange := func(cmd, want string) {
		t.Helper()
		_, _ = c.Write([]byte(cmd))
		got := make([]byte, len(want))
		if _, err := io.ReadFull(br, got); err != nil || string(got) != want {
			t.Fatalf("%q: got %q (%v), want %q", cmd, got, err, want)
		}
	}
	exchange("UNSUBSCRIBE\r\n", "*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n")
	exchange("SUBSCRIBE a b\r\n", "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n")
	exchange("PING\r\n", "*2\r\n$4\r\npong\r\n$0\r\n\r\n")
	exchange("ROLE\r\n", "-ERR Can't execute 'role': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n")
	if n, err := cli.Publish(ctx, "a", "hi").Result(); err != nil || n != 1 {
		t.Fatalf("PUBLISH a: %d %v", n, err)
	}
	exchange("", "*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n")
	exchange("UNSUBSCRIBE\r\n", "*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n")
	exchange("PING\r\n", "+PONG\r\n") // out of pub/sub mode
	exchange("PSUBSCRIBE x*\r\n", "*3\r\n$10\r\npsubscribe\r\n$2\r\nx*\r\n:1\r\n")
	exchange("RESET\r\n", "+RESET\r\n")
	exchange("PING\r\n", "+PONG\r\n")
}

// TestPubSubSlowSubscriber: a subscriber that stops reading is dropped at
// the output limit (Redis' client-output-buffer-limit pubsub), counted;
// the others keep receiving and the stream keeps flowing.
func TestPubSubSlowSubscriber(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	ctx := context.Background()
	frozen, err := net.Dial("tcp", p.addr)
	must(t, err)
	defer frozen.Close()
	_, _ = frozen.Write([]byte("SUBSCRIBE bulk\r\n")) // and never read
	cli := redis.NewClient(&redis.Options{Addr: p.addr})
	defer cli.Close()
	live := cli.Subscribe(ctx, "bulk")
	defer live.Close()
	if _, err := live.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "both subscribed", func() bool { _, _, n := p.pubsub.Counts(); return n == 2 })
	msg := strings.Repeat("y", 1<<20)
	for i := 0; p.Stats().OutputBufferDrops.Load() == 0; i++ {
		if i == 200 {
			t.Fatal("200 MB published and the frozen subscriber is still there")
		}
		must(t, origin.Client().Publish(ctx, "bulk", msg).Err())
		if m := receive(t, live); len(m.Payload) != len(msg) {
			t.Fatalf("live subscriber: %d bytes", len(m.Payload))
		}
	}
	redistest.Eventually(t, 10*time.Second, "the frozen subscriber is gone", func() bool { _, _, n := p.pubsub.Counts(); return n == 1 })
	if !strings.Contains(p.logBuf.String(), "closing a subscriber that does not read its messages") {
		t.Error("the drop was not logged")
	}
}

// TestSentinelPubSubLink: a real Sentinel keeps one pub/sub link to the
// proxy for 60 s (it drops a link quiet for 6 s and reconnects every 15 s)
// and receives hello messages through it.
func TestSentinelPubSubLink(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	sen := redistest.StartSentinelT(t, origin.Addr(), "sentinel down-after-milliseconds mymaster 5000")
	ctx := context.Background()
	find := func() (id int64, sent int64, ok bool) {
		for _, v := range p.srv.Subscribers() {
			if strings.HasPrefix(v.Name, "sentinel-") && strings.HasSuffix(v.Name, "-pubsub") && v.Channels == 1 {
				return v.ID, v.Sent, true
			}
		}
		return 0, 0, false
	}
	var link int64
	redistest.Eventually(t, 30*time.Second, "Sentinel subscribes to the proxy", func() bool {
		id, _, ok := find()
		link = id
		return ok
	})
	cli := redis.NewClient(&redis.Options{Addr: p.addr})
	defer cli.Close()
	sentinel := redis.NewSentinelClient(&redis.Options{Addr: sen.Addr})
	defer sentinel.Close()
	start := time.Now()
	for time.Since(start) < 60*time.Second {
		if id, _, _ := find(); id != link {
			t.Fatalf("after %v Sentinel's pub/sub link is a new connection", time.Since(start).Round(time.Second))
		}
		list, err := cli.ClientList(ctx).Result()
		must(t, err)
		if !strings.Contains(list, fmt.Sprintf("id=%d ", link)) {
			t.Fatalf("CLIENT LIST lost client %d", link)
		}
		time.Sleep(time.Second) // pacing the checks, not synchronisation
	}
	if _, n, _ := find(); n < 20 { // hellos every 2 s, from Sentinel directly and through the stream
		t.Errorf("Sentinel's pub/sub link got %d frames in 60 s", n)
	}
	reps, err := sentinel.Replicas(ctx, "mymaster").Result()
	must(t, err)
	ok := false
	for _, r := range reps {
		ok = ok || r["port"] == strings.TrimPrefix(p.addr[strings.LastIndex(p.addr, ":"):], ":") && r["master-link-status"] == "ok"
	}
	if !ok {
		t.Errorf("Sentinel does not list the proxy as a healthy replica: %v", reps)
	}
}
