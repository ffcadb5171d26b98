package pubsub

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of a subscriber's pending output, as Redis' default
// client-output-buffer-limit pubsub 32mb.
const (
	MaxBytes = 32 << 20
	maxMsgs  = 4096
)

// writeTimeout bounds one write to a subscriber: one that reads nothing
// for this long is gone.
const writeTimeout = 10 * time.Second

// ErrOverflow: the subscriber passed its output limit and is being closed.
var ErrOverflow = errors.New("pub/sub output buffer limit reached")

// Hooks are how a subscriber reports to its owner; each may be nil.
type Hooks struct {
	Wrote    func(n int)                  // after each write, the bytes written
	Close    func()                       // the writer failed or the subscriber overflowed: end the connection
	Overflow func(pending int64)          // once, before Close, when the limit is passed
	Counts   func(channels, patterns int) // after each change of its subscriptions
}

// Registry routes messages to subscribers. Publishers never block: a
// subscriber that does not read is dropped.
type Registry struct {
	mu       sync.RWMutex
	channels map[string]map[*Subscriber]struct{}
	patterns map[string]map[*Subscriber]struct{}
	active   atomic.Int64 // subscriptions, so the stream is not scanned for nobody
}

// New returns an empty registry.
func New() *Registry {
	return &Registry{channels: map[string]map[*Subscriber]struct{}{}, patterns: map[string]map[*Subscriber]struct{}{}}
}

// Active reports whether anyone subscribes to anything.
func (r *Registry) Active() bool { return r.active.Load() > 0 }

// Subscriber is a connection in pub/sub mode. Its writer goroutine owns
// the connection from then on; the owner's replies go through the same
// queue (Send), so they stay in order with the messages.
type Subscriber struct {
	conn     net.Conn
	hooks    Hooks
	queue    chan []byte
	pending  atomic.Int64 // bytes queued
	sent     atomic.Int64 // frames written (replies and messages)
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{} // the writer returned
	// Its own names, under the registry's mu.
	channels map[string]struct{}
	patterns map[string]struct{}
}

// NewSubscriber starts a subscriber's writer on conn; End joins it.
func NewSubscriber(conn net.Conn, hooks Hooks) *Subscriber {
	sub := &Subscriber{conn: conn, hooks: hooks, queue: make(chan []byte, maxMsgs), stop: make(chan struct{}),
		done: make(chan struct{}), channels: map[string]struct{}{}, patterns: map[string]struct{}{}}
	go sub.writer()
	return sub
}

// writer sends queued replies and messages until End.
func (sub *Subscriber) writer() {
	defer close(sub.done)
	for {
		select {
		case <-sub.stop:
			return
		case b := <-sub.queue:
			sub.pending.Add(-int64(len(b)))
			_ = sub.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			n, err := sub.conn.Write(b)
			if sub.hooks.Wrote != nil {
				sub.hooks.Wrote(n)
			}
			if err != nil {
				sub.close()
				return
			}
			sub.sent.Add(1)
		}
	}
}

func (sub *Subscriber) close() {
	if sub.hooks.Close != nil {
		sub.hooks.Close()
	}
}

// Send queues b without blocking; a subscriber past its limits is closed,
// as Redis does.
func (sub *Subscriber) Send(b []byte) error {
	if sub.pending.Add(int64(len(b))) > MaxBytes {
		return sub.overflow()
	}
	select {
	case sub.queue <- b:
		return nil
	case <-sub.stop:
		return ErrOverflow
	default:
		return sub.overflow()
	}
}

func (sub *Subscriber) overflow() error {
	sub.stopOnce.Do(func() {
		if sub.hooks.Overflow != nil {
			sub.hooks.Overflow(sub.pending.Load())
		}
		sub.close()
	})
	return ErrOverflow
}

// End stops the writer and waits for it; called by the owner once the
// connection is over.
func (sub *Subscriber) End() {
	select {
	case <-sub.stop:
	default:
		close(sub.stop)
	}
	<-sub.done
}

// Sent is how many frames the writer wrote.
func (sub *Subscriber) Sent() int64 { return sub.sent.Load() }

// Count is sub's subscriptions; its owner's goroutine only.
func (sub *Subscriber) Count() int { return len(sub.channels) + len(sub.patterns) }

// Subscribe adds sub to name (a channel, or a pattern); it returns sub's
// subscription count.
func (r *Registry) Subscribe(sub *Subscriber, name string, pattern bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	own, table := r.sets(sub, pattern)
	if _, ok := own[name]; !ok {
		own[name] = struct{}{}
		if table[name] == nil {
			table[name] = map[*Subscriber]struct{}{}
		}
		table[name][sub] = struct{}{}
		r.active.Add(1)
	}
	return sub.recount()
}

// Unsubscribe removes sub from name; it returns sub's subscription count.
func (r *Registry) Unsubscribe(sub *Subscriber, name string, pattern bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	own, table := r.sets(sub, pattern)
	if _, ok := own[name]; ok {
		delete(own, name)
		delete(table[name], sub)
		if len(table[name]) == 0 {
			delete(table, name)
		}
		r.active.Add(-1)
	}
	return sub.recount()
}

// Names are sub's channels (or patterns), sorted.
func (r *Registry) Names(sub *Subscriber, pattern bool) []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	own, _ := r.sets(sub, pattern)
	out := make([]string, 0, len(own))
	for k := range own {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// sets are sub's own names and the shared table, of channels or of
// patterns; r.mu held.
func (r *Registry) sets(sub *Subscriber, pattern bool) (map[string]struct{}, map[string]map[*Subscriber]struct{}) {
	if pattern {
		return sub.patterns, r.patterns
	}
	return sub.channels, r.channels
}

// recount reports sub's counts to its owner and returns their sum; r.mu held.
func (sub *Subscriber) recount() int {
	if sub.hooks.Counts != nil {
		sub.hooks.Counts(len(sub.channels), len(sub.patterns))
	}
	return sub.Count()
}

// Drop removes every subscription of sub (its connection ended).
func (r *Registry) Drop(sub *Subscriber) {
	for _, pattern := range []bool{false, true} {
		for _, n := range r.Names(sub, pattern) {
			r.Unsubscribe(sub, n, pattern)
		}
	}
}

// Publish delivers msg on channel; it returns the receivers, as PUBLISH.
func (r *Registry) Publish(channel, msg []byte) int {
	if !r.Active() {
		return 0
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := 0
	if subs := r.channels[string(channel)]; len(subs) > 0 {
		frame := PushFrame("message", nil, channel, msg)
		for sub := range subs {
			_ = sub.Send(frame)
			n++
		}
	}
	for pat, subs := range r.patterns {
		if !GlobMatch([]byte(pat), channel) {
			continue
		}
		frame := PushFrame("pmessage", []byte(pat), channel, msg)
		for sub := range subs {
			_ = sub.Send(frame)
			n++
		}
	}
	return n
}

// Counts are INFO's pubsub_channels, pubsub_patterns and pubsub_clients.
func (r *Registry) Counts() (channels, patterns, clients int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	seen := map[*Subscriber]struct{}{}
	for _, t := range []map[string]map[*Subscriber]struct{}{r.channels, r.patterns} {
		for _, subs := range t {
			for sub := range subs {
				seen[sub] = struct{}{}
			}
		}
	}
	return len(r.channels), len(r.patterns), len(seen)
}

// PushFrame is a RESP2 pub/sub message: message channel payload, or
// pmessage pattern channel payload.
func PushFrame(kind string, pattern, channel, msg []byte) []byte {
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
