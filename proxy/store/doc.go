// Package store owns replproxy's data dir: its layout (Layout names every
// file), the exclusive lock, the replication history, the snapshot (and
// the older one delayed replicas are served from), the backlog, the state
// file that ties them together and the rule that says whether they do
// (inconsistency, shared with Inspect), the arrival index (when stream
// offsets arrived: lag in seconds, the delay's horizon), the snapshot's
// key counts and the persisted REPLICAOF.
//
// Writers (the upstream side, one at a time) take Store's write mutex and
// persist under it; readers never take it: they load the published
// history and snapshot, an immutable value replaced on every change, and
// the backlog's lock-free view, so INFO, metrics and PSYNC decisions never
// wait for an fsync. The arrival index and the key counts each have a
// mutex of their own that guards only their fields and is held for no
// I/O.
//
// The package starts no goroutine. KeyspaceStats.Scan (a recount of a
// snapshot recovered without counts) runs on the caller's goroutine; the
// daemon runs it and joins it. It knows no network and no other component.
package store
