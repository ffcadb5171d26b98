package proxy

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tidwall/resp"

	"github.com/replproxy/replproxy/internal/acl"
)

// Pub/sub as a Redis replica offers it: clients subscribe here and receive
// what other clients PUBLISH here and the PUBLISH commands that arrive in
// the replication stream. Sentinel depends on it: it subscribes to
// __sentinel__:hello on every instance it watches and drops a link that
// stays quiet.

// Limits of a subscriber's pending output, as Redis' default
// client-output-buffer-limit pubsub 32mb.
const (
	subscriberMaxBytes = 32 << 20
	subscriberMaxMsgs  = 4096
)

// allowedSubscribed are the commands a RESP2 client in pub/sub mode may
// send (server.c:processCommand).
var allowedSubscribed = map[string]bool{"subscribe": true, "psubscribe": true, "unsubscribe": true,
	"punsubscribe": true, "ping": true, "quit": true, "reset": true}

var errSubscriberOverflow = errors.New("pub/sub output buffer limit reached")

// pubsub routes messages to subscribers. Publishers never block: a
// subscriber that does not read is dropped.
type pubsub struct {
	mu       sync.RWMutex
	channels map[string]map[*subscriber]struct{}
	patterns map[string]map[*subscriber]struct{}
	active   atomic.Int64 // subscriptions, so the stream is not scanned for nobody
}

func newPubsub() *pubsub {
	return &pubsub{channels: map[string]map[*subscriber]struct{}{}, patterns: map[string]map[*subscriber]struct{}{}}
}

// subscriber is a session in pub/sub mode. Its writer goroutine owns the
// socket from then on; the session's replies go through the same queue,
// so they stay in order with the messages.
type subscriber struct {
	s        *session
	queue    chan []byte
	pending  atomic.Int64 // bytes queued
	sent     atomic.Int64 // frames written (replies and messages)
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{} // the writer returned
	// The session goroutine's own view, under ps.mu for writes.
	channels map[string]struct{}
	patterns map[string]struct{}
}

// subscriberFor puts s in pub/sub mode once and starts its writer; the
// session's goroutine joins it when the session ends (subscriber.end).
func (s *session) subscriberFor() *subscriber {
	if s.subs == nil {
		sub := &subscriber{s: s, queue: make(chan []byte, subscriberMaxMsgs), stop: make(chan struct{}),
			done: make(chan struct{}), channels: map[string]struct{}{}, patterns: map[string]struct{}{}}
		go sub.writer()
		s.subs = sub
	}
	return s.subs
}

// writer sends queued replies and messages until the session ends.
func (sub *subscriber) writer() {
	defer close(sub.done)
	s := sub.s
	for {
		select {
		case <-sub.stop:
			return
		case b := <-sub.queue:
			sub.pending.Add(-int64(len(b)))
			_ = s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			n, err := s.conn.Write(b)
			s.p.stats.NetOutputBytes.Add(int64(n))
			s.p.stats.WritesProcessed.Add(1)
			if err != nil {
				s.close(DownClosed)
				return
			}
			sub.sent.Add(1)
		}
	}
}

// send queues b without blocking; a subscriber past its limits is
// disconnected, as Redis does.
func (sub *subscriber) send(b []byte) error {
	if sub.pending.Add(int64(len(b))) > subscriberMaxBytes {
		return sub.overflow()
	}
	select {
	case sub.queue <- b:
		return nil
	case <-sub.stop:
		return errSubscriberOverflow
	default:
		return sub.overflow()
	}
}

func (sub *subscriber) overflow() error {
	sub.stopOnce.Do(func() {
		s := sub.s
		s.p.stats.OutputBufferDrops.Add(1)
		s.log.Warn("closing a subscriber that does not read its messages", "pending_bytes", sub.pending.Load())
		s.close(DownClosed)
	})
	return errSubscriberOverflow
}

// end stops the writer and waits for it; called by the session's goroutine
// once the session is over.
func (sub *subscriber) end() {
	select {
	case <-sub.stop:
	default:
		close(sub.stop)
	}
	<-sub.done
}

// count is the subscriptions of sub; the session's goroutine only.
func (sub *subscriber) count() int { return len(sub.channels) + len(sub.patterns) }

// subscribe adds sub to name (a channel, or a pattern); it returns sub's
// subscription count.
func (ps *pubsub) subscribe(sub *subscriber, name string, pattern bool) int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	own, table := ps.sets(sub, pattern)
	if _, ok := own[name]; !ok {
		own[name] = struct{}{}
		if table[name] == nil {
			table[name] = map[*subscriber]struct{}{}
		}
		table[name][sub] = struct{}{}
		ps.active.Add(1)
	}
	return sub.recount()
}

// unsubscribe removes sub from name; it returns sub's subscription count.
func (ps *pubsub) unsubscribe(sub *subscriber, name string, pattern bool) int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	own, table := ps.sets(sub, pattern)
	if _, ok := own[name]; ok {
		delete(own, name)
		delete(table[name], sub)
		if len(table[name]) == 0 {
			delete(table, name)
		}
		ps.active.Add(-1)
	}
	return sub.recount()
}

// sets are sub's own names and the shared table, of channels or of
// patterns; ps.mu held.
func (ps *pubsub) sets(sub *subscriber, pattern bool) (map[string]struct{}, map[string]map[*subscriber]struct{}) {
	if pattern {
		return sub.patterns, ps.patterns
	}
	return sub.channels, ps.channels
}

// recount publishes sub's counts for CLIENT LIST and returns their sum;
// ps.mu held.
func (sub *subscriber) recount() int {
	sub.s.subCount.Store(int32(len(sub.channels)))
	sub.s.psubCount.Store(int32(len(sub.patterns)))
	return sub.count()
}

// drop removes every subscription of sub (its session ended).
func (ps *pubsub) drop(sub *subscriber) {
	ps.mu.Lock()
	names, pats := sortedKeys(sub.channels), sortedKeys(sub.patterns)
	ps.mu.Unlock()
	for _, n := range names {
		ps.unsubscribe(sub, n, false)
	}
	for _, n := range pats {
		ps.unsubscribe(sub, n, true)
	}
}

// publish delivers msg on channel; it returns the receivers, as PUBLISH.
func (ps *pubsub) publish(channel, msg []byte) int {
	if ps.active.Load() == 0 {
		return 0
	}
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	n := 0
	if subs := ps.channels[string(channel)]; len(subs) > 0 {
		frame := pushFrame("message", nil, channel, msg)
		for sub := range subs {
			_ = sub.send(frame)
			n++
		}
	}
	for pat, subs := range ps.patterns {
		if !globMatch([]byte(pat), channel) {
			continue
		}
		frame := pushFrame("pmessage", []byte(pat), channel, msg)
		for sub := range subs {
			_ = sub.send(frame)
			n++
		}
	}
	return n
}

// counts are INFO's pubsub_channels, pubsub_patterns and pubsub_clients.
func (ps *pubsub) counts() (channels, patterns, clients int) {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	seen := map[*subscriber]struct{}{}
	for _, t := range []map[string]map[*subscriber]struct{}{ps.channels, ps.patterns} {
		for _, subs := range t {
			for sub := range subs {
				seen[sub] = struct{}{}
			}
		}
	}
	return len(ps.channels), len(ps.patterns), len(seen)
}

// pushFrame is a RESP2 pub/sub message: message channel payload, or
// pmessage pattern channel payload.
func pushFrame(kind string, pattern, channel, msg []byte) []byte {
	var b bytes.Buffer
	b.Grow(len(kind) + len(pattern) + len(channel) + len(msg) + 64) // one allocation, whatever the message
	n := 3
	if pattern != nil {
		n = 4
	}
	b.WriteString("*" + strconv.Itoa(n) + "\r\n")
	bulk(&b, []byte(kind))
	if pattern != nil {
		bulk(&b, pattern)
	}
	bulk(&b, channel)
	bulk(&b, msg)
	return b.Bytes()
}

func bulk(b *bytes.Buffer, v []byte) {
	b.WriteString("$" + strconv.Itoa(len(v)) + "\r\n")
	b.Write(v)
	b.WriteString("\r\n")
}

// subscribeCommand answers SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE and
// PUNSUBSCRIBE: one confirmation per name with the client's subscription
// count after it, as Redis does.
func (s *session) subscribeCommand(cmd string, names [][]byte) error {
	ps := s.p.pubsub
	pattern := cmd == "psubscribe" || cmd == "punsubscribe"
	if cmd == "subscribe" || cmd == "psubscribe" {
		sub := s.subscriberFor()
		for _, n := range names {
			if err := s.confirm(cmd, n, ps.subscribe(sub, string(n), pattern)); err != nil {
				return err
			}
		}
		return nil
	}
	if len(names) == 0 { // all of them
		if s.subs != nil {
			ps.mu.RLock()
			own, _ := ps.sets(s.subs, pattern)
			for _, n := range sortedKeys(own) {
				names = append(names, []byte(n))
			}
			ps.mu.RUnlock()
		}
		if len(names) == 0 {
			count := 0
			if s.subs != nil {
				count = s.subs.count()
			}
			return s.confirm(cmd, nil, count)
		}
	}
	for _, n := range names {
		count := 0
		if s.subs != nil {
			count = ps.unsubscribe(s.subs, string(n), pattern)
		}
		if err := s.confirm(cmd, n, count); err != nil {
			return err
		}
	}
	return nil
}

// confirm is one (un)subscribe reply; name nil is a null bulk.
func (s *session) confirm(kind string, name []byte, count int) error {
	v := resp.NullValue()
	if name != nil {
		v = resp.BytesValue(name)
	}
	return s.reply(resp.ArrayValue([]resp.Value{resp.StringValue(kind), v, resp.IntegerValue(count)}))
}

// globMatch is Redis' stringmatchlen: *, ?, [set], [^set], [a-z] and \
// escapes, over bytes.
func globMatch(pat, str []byte) bool {
	for len(pat) > 0 {
		switch pat[0] {
		case '*':
			for len(pat) > 1 && pat[1] == '*' {
				pat = pat[1:]
			}
			if len(pat) == 1 {
				return true
			}
			for i := 0; i <= len(str); i++ {
				if globMatch(pat[1:], str[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(str) == 0 {
				return false
			}
			str = str[1:]
		case '[':
			if len(str) == 0 {
				return false
			}
			pat = pat[1:]
			not := len(pat) > 0 && pat[0] == '^'
			if not {
				pat = pat[1:]
			}
			match := false
			for len(pat) > 0 && pat[0] != ']' {
				switch {
				case pat[0] == '\\' && len(pat) >= 2:
					pat = pat[1:]
					if pat[0] == str[0] {
						match = true
					}
				case len(pat) >= 3 && pat[1] == '-':
					lo, hi := pat[0], pat[2]
					if lo > hi {
						lo, hi = hi, lo
					}
					if str[0] >= lo && str[0] <= hi {
						match = true
					}
					pat = pat[2:]
				case pat[0] == str[0]:
					match = true
				}
				pat = pat[1:]
			}
			if len(pat) == 0 { // an unterminated set: Redis treats its end as ']'
				pat = []byte{']'}
			}
			if match == not {
				return false
			}
			str = str[1:]
		case '\\':
			if len(pat) >= 2 {
				pat = pat[1:]
			}
			fallthrough
		default:
			if len(str) == 0 || pat[0] != str[0] {
				return false
			}
			str = str[1:]
		}
		pat = pat[1:]
	}
	return len(str) == 0
}

func sortedKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// pingSubscribed is PING in pub/sub mode: RESP2 answers it as a message.
func (s *session) pingSubscribed(args [][]byte) error {
	arg := []byte{}
	if len(args) > 1 {
		arg = args[1]
	}
	return s.reply(resp.ArrayValue([]resp.Value{resp.StringValue("pong"), resp.BytesValue(arg)}))
}

// reset is RESET: out of MULTI and pub/sub, nameless, and back to the
// default user (unauthenticated when it needs a password), as Redis does.
func (s *session) reset() error {
	s.multi = nil
	if s.subs != nil {
		s.p.pubsub.drop(s.subs)
	}
	s.clientName.Store("")
	s.authed = s.p.sec.users.Load().DefaultOpen()
	if s.authed {
		s.user.Store(acl.DefaultUser)
	} else {
		s.user.Store("")
	}
	return s.reply(resp.SimpleStringValue("RESET"))
}
