package vocab

import "sync/atomic"

// Stats are the event counters shown in INFO and metrics: one group per
// owner, each group written by its owner only.
type Stats struct {
	*UpstreamCounters // the upstream side (package upstream)
	*ReplicaCounters  // the replicas served (package downstream)
	*ClientCounters   // client connections and commands (package command, and security's refusals)
}

// UpstreamCounters are the upstream side's event counters; only it
// writes them.
type UpstreamCounters struct {
	UpstreamConnects     atomic.Int64
	UpstreamLinkChanges  atomic.Int64
	UpstreamDownNanos    atomic.Int64 // time the link was down, closed periods only
	UpstreamDisconnects  Counts[UpstreamReason]
	UpstreamFullSyncs    atomic.Int64
	UpstreamPartialSyncs atomic.Int64
	UpstreamSyncFailures atomic.Int64 // payloads rejected or cut
	UpstreamRDBBytes     atomic.Int64
	UpstreamStreamBytes  atomic.Int64
	Refreshes            atomic.Int64
	RefreshFailures      atomic.Int64
	// RefreshAttempts counts refresh attempts by "source/outcome".
	RefreshAttempts Counts[string]
	// UpstreamFullSyncOutcomes counts full syncs the upstream started (each
	// a fork on the origin) by "purpose/outcome" (SyncPurposes, SyncOutcomes).
	UpstreamFullSyncOutcomes Counts[string]
	// SourceRefusals counts replicas that could not serve a snapshot
	// refresh, by reason (SourceRefusals).
	SourceRefusals Counts[SourceRefusal]
}

// ReplicaCounters are the replica side's event counters; only it writes
// them.
type ReplicaCounters struct {
	SyncFull        atomic.Int64 // served to replicas
	SyncPartialOK   atomic.Int64
	SyncPartialErr  atomic.Int64
	SentRDBBytes    atomic.Int64
	SentStreamBytes atomic.Int64
	Rejections      [5]atomic.Int64 // by psync.ContinueVerdict
	Disconnects     Counts[DisconnectReason]
	// FanoutBytes: stream bytes the fan-out wrote to caught-up replicas
	// (also in SentStreamBytes); FanoutHandbacks: replicas it handed back
	// to their own copy loop (a full socket, a gap, a reset).
	FanoutBytes     atomic.Int64
	FanoutHandbacks atomic.Int64
}

// ClientCounters count client traffic as Redis' Stats section does
// (replication has its own), written by the command surface; AuthFailures
// by security.
type ClientCounters struct {
	RejectedConns       atomic.Int64 // refused at --max-clients
	ConnectionsReceived atomic.Int64
	CommandsProcessed   atomic.Int64
	NetInputBytes       atomic.Int64
	NetOutputBytes      atomic.Int64
	ReadsProcessed      atomic.Int64
	WritesProcessed     atomic.Int64
	// OutputBufferDrops: subscribers dropped for not reading their messages.
	OutputBufferDrops atomic.Int64
	// AuthFailures counts refused authentications and TLS handshakes by
	// reason (security.AuthFailureReasons).
	AuthFailures Counts[string]
}
