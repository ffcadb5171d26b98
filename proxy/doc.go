// Package proxy is the replproxy daemon's wiring. To its upstream the
// daemon is one replica; to any number of stock Redis/Valkey replicas it
// is their master, serving full syncs from a stored snapshot and partial
// resyncs from a disk backlog, relaying the upstream's bytes and offsets
// unchanged.
//
// # Packages
//
// Each component is a package under proxy/, the only owner of its state;
// imports point one way (layers_test.go at the repository root checks it):
//
//   - vocab, security, request, handoff, pubsub, plan: leaves (the
//     vocabulary, counters and status values; TLS material and users; the
//     client request reader; a connection handed over at SYNC/PSYNC; the
//     pub/sub registry; the pure sync planner).
//   - store: the data dir (layout, lock, history, snapshot, backlog, state
//     file, arrival index, delay retention).
//   - upstream: the follower (link, full syncs behind the fork gate,
//     refreshes, the guard, the ACK policy).
//   - downstream: the replicas (serving SYNC/PSYNC, fan-out, full-sync
//     slots and rate).
//   - command: the listeners, the client sessions and the Redis command
//     surface (INFO from status values).
//
// upstream and downstream know each other only through the interfaces each
// declares (Replicas, Upstream); command sees the rest through Daemon.
// This package builds each one's options from Config and constructs them
// in dependency order: security, the fan-out, the store, the upstream (its
// view of the replicas reads the downstream and the command server when
// called, once New has built them), the downstream, the command server. A
// component's fields are not set after its constructor; the listeners are
// attached to the command server when Serve starts, before any goroutine.
// It adapts the components to each other's interfaces and aggregates their
// status values (each component's Status) into Status.
//
// # Goroutines and who joins them
//
// ServeListeners runs and joins: the follower's Follow and Maintain, the
// security file watch, the command server's Serve (which joins its accept
// loops, which join their sessions, which join their replicas' ACK readers
// and their subscribers' writers), and a key count of a snapshot recovered
// without one. Shutdown cancels the context; the server closes its
// listeners and every session; once all have returned the store is closed
// (persist, backlog, data-dir lock).
package proxy
