// Package downstream owns the replicas: the connections that SYNC or PSYNC
// made replica links. A Replica is a thin executor of the sync planner
// (package plan): the planner decides Continue, Hold, FullSync or Refuse
// from the request, the store's position and what the replica announced;
// the replica writes, waits (full-sync slots, a snapshot, the upstream
// catching up) and streams from the store's backlog, its snapshot sent
// with sendfile (TLS through one reused buffer). The package also owns
// the fan-out writer that feeds caught-up replicas from the follower's
// appends, the full-sync rate limit, and the memory of replicas that
// could not load an RDB version.
//
// It sees the upstream side only through the Upstream interface it
// declares; the command surface hands it connections (package handoff;
// NewReplica, Run).
//
// # Goroutines
//
// Run executes on the session's goroutine; it starts the replica's ACK
// reader and joins it before it returns. The fan-out starts none: the
// follower's goroutine delivers, each replica's goroutine parks and
// leaves.
//
// # Locks
//
// Downstream.mu guards the replica set, refusedMu the RDB-version
// refusals; the fan-out's mu serialises parking and leaving (deliver never
// takes it); the rate limiter's mu its tokens. Replicas are closed after
// the set's lock is released; no lock is held across I/O.
package downstream
