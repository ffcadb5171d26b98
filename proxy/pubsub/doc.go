// Package pubsub is the registry of the proxy's pub/sub subscribers: the
// channels and patterns each follows, delivery that never blocks a
// publisher, and each subscriber's writer with Redis' output-buffer limit.
// It knows nothing of sessions: a subscriber writes to the connection it is
// given and reports through its Hooks.
//
// Goroutines: each Subscriber runs one writer, started by NewSubscriber
// and joined by End. Locks: Registry.mu guards the tables and every
// subscriber's own name sets; nothing holds it across I/O (Send only
// queues).
package pubsub
