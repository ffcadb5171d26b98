package pubsub

import (
	"bufio"
	"net"
	"sync/atomic"
	"testing"
)

// TestRegistry: delivery to channel and pattern subscribers, counts, and
// a subscriber dropped with its subscriptions.
func TestRegistry(t *testing.T) {
	r := New()
	server, client := net.Pipe()
	defer client.Close()
	var counts atomic.Int64
	sub := NewSubscriber(server, Hooks{Counts: func(c, p int) { counts.Store(int64(c*10 + p)) }})
	defer sub.End()
	if n := r.Subscribe(sub, "news", false); n != 1 {
		t.Fatalf("count %d", n)
	}
	if n := r.Subscribe(sub, "n*", true); n != 2 || counts.Load() != 11 {
		t.Fatalf("count %d, hook %d", n, counts.Load())
	}
	if got := r.Publish([]byte("news"), []byte("hi")); got != 2 {
		t.Fatalf("PUBLISH reached %d", got)
	}
	br := bufio.NewReader(client)
	want := string(PushFrame("message", nil, []byte("news"), []byte("hi"))) + string(PushFrame("pmessage", []byte("n*"), []byte("news"), []byte("hi")))
	got := make([]byte, len(want))
	for i := range got {
		b, err := br.ReadByte()
		if err != nil {
			t.Fatal(err)
		}
		got[i] = b
	}
	if string(got) != want {
		t.Fatalf("frames %q, want %q", got, want)
	}
	if c, p, n := r.Counts(); c != 1 || p != 1 || n != 1 {
		t.Fatalf("counts %d %d %d", c, p, n)
	}
	r.Drop(sub)
	if r.Active() || r.Publish([]byte("news"), []byte("x")) != 0 {
		t.Fatal("a dropped subscriber still receives")
	}
}

// TestSubscriberOverflow: a subscriber that reads nothing is closed once
// its queue is full, and its sends fail without blocking the publisher.
func TestSubscriberOverflow(t *testing.T) {
	server, client := net.Pipe() // nobody reads client: the writer blocks
	var closes, overflows atomic.Int64
	sub := NewSubscriber(server, Hooks{
		Close:    func() { closes.Add(1); server.Close() },
		Overflow: func(int64) { overflows.Add(1) },
	})
	frame := PushFrame("message", nil, []byte("c"), make([]byte, 1024))
	var err error
	for range maxMsgs + 10 {
		if err = sub.Send(frame); err != nil {
			break
		}
	}
	if err != ErrOverflow || overflows.Load() != 1 || closes.Load() < 1 {
		t.Fatalf("err %v, overflows %d, closes %d", err, overflows.Load(), closes.Load())
	}
	sub.End()
	client.Close()
}

func TestGlobMatch(t *testing.T) {
	for _, c := range []struct {
		pat, s string
		want   bool
	}{
		{"*", "", true}, {"*", "a/b", true}, {"__sentinel__:*", "__sentinel__:hello", true},
		{"h?llo", "hello", true}, {"h?llo", "hllo", false}, {"h[ae]llo", "hallo", true},
		{"h[^e]llo", "hello", false}, {"h[^e]llo", "hallo", true}, {"h[a-b]llo", "hbllo", true},
		{"h[b-a]llo", "hallo", true}, {"h\\*llo", "h*llo", true}, {"h\\*llo", "hello", false},
		{"a*b*c", "axxbyyc", true}, {"a*b*c", "axxbyy", false}, {"[abc", "a", true}, {"", "", true}, {"", "a", false},
	} {
		if got := GlobMatch([]byte(c.pat), []byte(c.s)); got != c.want {
			t.Errorf("GlobMatch(%q, %q) = %v", c.pat, c.s, got)
		}
	}
}
