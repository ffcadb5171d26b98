package vocab

import (
	"time"

	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// Status is a consistent picture of the proxy for INFO, ROLE and metrics.
type Status struct {
	// RefusedSources are the replicas that could not serve the last
	// refreshes that asked them (untrusted, protected mode, unreachable,
	// writable...).
	RefusedSources []RefusedSource
	// Calm is the wait, after the upstream cut replproxy behind a burst,
	// for the burst to calm before a full sync is asked.
	Calm CalmStatus

	RunID   string
	Version string
	Started time.Time
	// RedisVersion is the redis_version tools see: the upstream's, as its
	// last snapshot recorded it.
	RedisVersion string

	// Upstream is where the follower connects and why (the configuration
	// or a REPLICAOF); Refresh is the last snapshot refresh; Guard the
	// empty-origin guard; Delay the delayed listener.
	UpstreamAddr, UpstreamSource string
	Refresh                      RefreshStatus
	Guard                        GuardStatus
	Delay                        DelayStatus
	// TailCapacity is the backlog's in-memory tail (INFO's
	// mem_replication_backlog).
	TailCapacity int64
	// IntakeBuffer is --intake-buffer in force (0: off); IntakeBuffered
	// the stream in memory not yet in the backlog's files.
	IntakeBuffer, IntakeBuffered int64

	UpstreamHost   string
	UpstreamPort   int
	LinkState      LinkState
	LinkUp         bool
	LastIO         time.Time // zero when never
	LinkDownSince  time.Time // zero while up
	LinkChanged    time.Time // last up/down transition; zero if none
	SyncTotalBytes int64
	SyncReadBytes  int64
	// LinkDownReason and LinkDownError: why the last upstream connection
	// ended, the upstream's own words included ("" before any).
	LinkDownReason UpstreamReason
	LinkDownError  string
	// BacklogWindowShort: the backlog is full and covers less than
	// minBacklogWindow of stream at the current write rate.
	BacklogWindowShort bool

	History      psync.History
	BacklogFirst int64
	BacklogEnd   int64 // master_repl_offset
	BacklogSize  int64 // configured budget
	Snapshot     *snapshot.Info
	Refreshing   bool

	Clients      int
	Replicas     []ReplicaStatus
	Queued       int64
	FullSyncing  int       // replicas receiving a snapshot
	OldestEntry  time.Time // arrival of the backlog's first byte (zero if unknown)
	Keyspace     []snapshot.KeyStats
	DownDuration time.Duration // total time the upstream link was down, now included
	// FullSync is the cost backoff of requests that fork the origin.
	FullSync GateStatus
}

// SnapshotStale reports whether the snapshot has lapsed: the backlog no
// longer holds the stream after it (lazy refresh), so a full sync needs a
// refresh first.
func (st Status) SnapshotStale() bool {
	return st.Snapshot != nil && st.BacklogFirst > st.Snapshot.Offset+1
}

// BudgetExceeded reports whether the stream since the snapshot outgrew the
// backlog budget: no refresh succeeded, so the backlog cannot be trimmed.
func (st Status) BudgetExceeded() bool {
	return st.Snapshot != nil && !st.SnapshotStale() && st.BacklogEnd-st.Snapshot.Offset > st.BacklogSize
}

// ReplicaStatus is one downstream replica.
type ReplicaStatus struct {
	ID      int64
	IP      string
	Port    int
	Addr    string // peer address
	State   ReplicaState
	AckOff  int64
	AckTime time.Time
	Legacy  bool
	// LagBytes is the proxy's end offset minus the ACKed offset; LagSeconds
	// is how long ago the first unacknowledged byte arrived from upstream.
	LagBytes   int64
	LagSeconds float64
	SentOffset int64 // last byte written to the replica; -1 before streaming
}

// DelayStatus is the delayed listener's state, for INFO and metrics.
type DelayStatus struct {
	Enabled bool
	Delay   time.Duration
	Horizon int64 // last offset delayed replicas may have now
	Covered bool  // the backlog budget holds the stream they need
}
