// Package plan is the sync planner: what a replica's SYNC or PSYNC gets,
// from the request, the store's position and what the replica announced.
// It does no I/O, starts no goroutine and reads no clock: the session
// executes its answer (write, wait, stream) and asks again after waiting.
// The rules are Redis' continue rule (replication.c,
// masterTryPartialResynchronization), the hold-ahead rule for a proxy
// catching up after a restart, and RDB-version compatibility.
package plan
