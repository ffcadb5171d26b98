package command

import (
	"github.com/tidwall/resp"

	"github.com/replproxy/replproxy/internal/acl"
	"github.com/replproxy/replproxy/proxy/pubsub"
	"github.com/replproxy/replproxy/proxy/vocab"
)

// Pub/sub as a Redis replica offers it: clients subscribe here and receive
// what other clients PUBLISH here and the PUBLISH commands that arrive in
// the replication stream. Sentinel depends on it: it subscribes to
// __sentinel__:hello on every instance it watches and drops a link that
// stays quiet.

// allowedSubscribed are the commands a RESP2 client in pub/sub mode may
// send (server.c:processCommand).
var allowedSubscribed = map[string]bool{"subscribe": true, "psubscribe": true, "unsubscribe": true,
	"punsubscribe": true, "ping": true, "quit": true, "reset": true}

// subscriberFor puts s in pub/sub mode once and starts its writer; the
// session's goroutine joins it when the session ends (Subscriber.End).
func (s *session) subscriberFor() *pubsub.Subscriber {
	if s.subs == nil {
		s.subs = pubsub.NewSubscriber(s.conn, pubsub.Hooks{
			Wrote: func(n int) {
				s.srv.stats.NetOutputBytes.Add(int64(n))
				s.srv.stats.WritesProcessed.Add(1)
			},
			Close: func() { s.close(vocab.DownClosed) },
			Overflow: func(pending int64) {
				s.srv.stats.OutputBufferDrops.Add(1)
				s.log.Warn("closing a subscriber that does not read its messages", "pending_bytes", pending)
			},
			Counts: func(channels, patterns int) {
				s.subCount.Store(int32(channels))
				s.psubCount.Store(int32(patterns))
			},
		})
		s.subsView.Store(s.subs)
	}
	return s.subs
}

// subscriber is the session's subscriber for other goroutines (nil: not
// in pub/sub mode).
func (s *session) subscriber() *pubsub.Subscriber { return s.subsView.Load() }

// subscribeCommand answers SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE and
// PUNSUBSCRIBE: one confirmation per name with the client's subscription
// count after it, as Redis does.
func (s *session) subscribeCommand(cmd string, names [][]byte) error {
	ps := s.srv.pubsub
	pattern := cmd == "psubscribe" || cmd == "punsubscribe"
	if cmd == "subscribe" || cmd == "psubscribe" {
		sub := s.subscriberFor()
		for _, n := range names {
			if err := s.confirm(cmd, n, ps.Subscribe(sub, string(n), pattern)); err != nil {
				return err
			}
		}
		return nil
	}
	if len(names) == 0 { // all of them
		if s.subs != nil {
			for _, n := range ps.Names(s.subs, pattern) {
				names = append(names, []byte(n))
			}
		}
		if len(names) == 0 {
			count := 0
			if s.subs != nil {
				count = s.subs.Count()
			}
			return s.confirm(cmd, nil, count)
		}
	}
	for _, n := range names {
		count := 0
		if s.subs != nil {
			count = ps.Unsubscribe(s.subs, string(n), pattern)
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
		s.srv.pubsub.Drop(s.subs)
	}
	s.clientName.Store("")
	s.authed = s.srv.sec.Users.Load().DefaultOpen()
	if s.authed {
		s.user.Store(acl.DefaultUser)
	} else {
		s.user.Store("")
	}
	return s.reply(resp.SimpleStringValue("RESET"))
}

// SubscriberView is one client in pub/sub mode, as the status page and
// tests see it.
type SubscriberView struct {
	ID       int64
	Name     string
	Channels int   // subscriptions: channels and patterns
	Sent     int64 // messages and replies written to it
}

// Subscribers lists the clients in pub/sub mode.
func (d *Server) Subscribers() []SubscriberView {
	var out []SubscriberView
	for _, s := range d.selectSessions(func(s *session) bool { return s.subCount.Load()+s.psubCount.Load() > 0 }) {
		name, _ := s.clientName.Load().(string)
		v := SubscriberView{ID: s.id, Name: name, Channels: int(s.subCount.Load() + s.psubCount.Load())}
		if sub := s.subscriber(); sub != nil {
			v.Sent = sub.Sent()
		}
		out = append(out, v)
	}
	return out
}
