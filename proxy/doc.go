// Package proxy is the replproxy daemon. To its upstream it is one replica;
// to any number of stock Redis/Valkey replicas it is their master, serving
// full syncs from a stored snapshot and partial resyncs from a disk
// backlog, relaying the upstream's bytes and offsets unchanged.
//
// # Components and what each owns
//
// Proxy composes three components; each is the only writer of its state.
//
//   - store (store.go): the data dir: its lock, the replication history,
//     the snapshot, the backlog and the state file, and the rule that ties
//     them together (inconsistency, also used by Inspect). Writers (the
//     follower) take its write mutex and persist under it; readers never
//     take it: they load the published history and snapshot, an immutable
//     value, and the backlog's lock-free View. So INFO, /metrics and PSYNC
//     decisions never wait for an fsync.
//   - follower (follower.go): the upstream connection, the stream scanner,
//     the reconnect backoff, the cost backoff of full syncs (forkgate.go),
//     the wait for a write burst to calm before one (calm.go), the ACKs,
//     the link state and its reasons (upstreamerr.go), the streaming
//     phase (stream.go), trimming
//     (maintain.go) and snapshot refreshes with their sources' trust
//     (refresh.go, refreshsource.go).
//   - downstream (downstream.go, session.go, replica.go): the listener and
//     the sessions. A session is a thin executor of the pure sync planner
//     (package plan): the planner decides Continue, Hold, FullSync or Refuse
//     from the request, the store's position and what the replica announced;
//     the session writes, waits and streams.
//
// Packages below the root, each importing nothing of the daemon above it
// (layers_test.go at the repository root checks it): plan, the pure sync
// planner; pubsub, the subscriber registry and each subscriber's writer.
//
// The vocabulary of states and reasons (vocab.go) is typed and listed once;
// metrics iterate over it, so every series exists from start-up.
//
// # Goroutines and who joins them
//
// Serve runs and joins: the follower's follow loop (each link's ACK ticker
// is joined when the link ends) and maintain loop (which joins the one
// refresh it may run), the downstream's accept loop (which joins every
// session; each session joins its replica's ACK reader and, in pub/sub
// mode, its subscriber's writer), and a keyspace
// scan of a snapshot recovered without counts. A snapshot being received
// runs one key-counting goroutine, joined by the receiver's Finish or
// Abort; the backlog's background fsync loop is joined by its Close.
// Shutdown cancels the context, closes the listener and every session,
// waits for all of the above, then closes the store (persist, backlog,
// data-dir lock).
//
// # Locks
//
// Each component's mutex guards only its own fields and is never held
// across network I/O or an fsync a reader could wait on: the store's write
// mutex is taken by writers only; the follower's guards the link status and
// the upstream address; the downstream's guards the session set (sessions
// are closed after it is released).
package proxy
