package vocab

import (
	"time"
)

// GateStatus is the cost backoff as INFO, metrics and the status page show it.
type GateStatus struct {
	InARow    int
	LastClass string
	LastError string
	LastAt    time.Time
	NextAt    time.Time // zero: no wait
	Blocked   string    // a local cause, e.g. "disk_full: ..."
	Pending   bool      // the main link's last full sync did not complete
}

// GuardStatus is what INFO, metrics and REPLPROXY GUARD STATUS show.
type GuardStatus struct {
	Enabled  bool
	Holding  bool
	Since    time.Time
	ReplID   string
	Offset   int64 // of the held snapshot
	HeldEnd  int64 // last byte of the held stream
	CurKeys  int64
	NewKeys  int64
	Holds    int64 // since start
	MinRatio float64
}

// SourceRefusal is why a replica cannot serve a refresh, as the log, INFO
// and metrics name it.
type SourceRefusal string

const (
	RefusedUntrusted   SourceRefusal = "untrusted"   // its identity is not in --snapshot-refresh-trust
	RefusedDenied      SourceRefusal = "denied"      // -DENIED: protected mode without a password
	RefusedAuth        SourceRefusal = "auth"        // -NOAUTH, -WRONGPASS, -NOPERM
	RefusedUnreachable SourceRefusal = "unreachable" // the announced address cannot be dialled
	RefusedWritable    SourceRefusal = "writable"    // replica-read-only no
	RefusedNotOurs     SourceRefusal = "not_replica" // not an up-to-date replica of this proxy's history
)

// SourceRefusals lists every SourceRefusal.
var SourceRefusals = []SourceRefusal{RefusedUntrusted, RefusedDenied, RefusedAuth, RefusedUnreachable, RefusedWritable, RefusedNotOurs}

// RefusedSource is a replica refused as a refresh source, as INFO and the
// status page show it.
type RefusedSource struct {
	Addr   string
	Reason SourceRefusal
	Detail string
	At     time.Time
}

// LinkStatus is the upstream link as INFO shows it.
type LinkStatus struct {
	State     LinkState
	Up        bool
	LastIO    time.Time
	DownSince time.Time
	Changed   time.Time // last up/down transition
	SyncTotal int64     // payload size; 0 for EOF-form
	SyncRead  int64
	// downReason and downErr: why the last connection ended, the upstream's
	// words included.
	DownReason UpstreamReason
	DownErr    string
}

// CalmStatus is the wait for an origin's write burst to calm.
type CalmStatus struct {
	Waiting    bool  // a full sync is held until the burst calms
	Waits      int64 // waits begun since start
	OriginRate int64 // bytes/s the origin wrote at the last sample
	Intake     int64 // bytes/s replproxy measured it can take, at the last cut
}

// UpstreamStatus is the upstream side as INFO, ROLE and metrics show it: a
// value, each part read under its own owner's lock or atomically.
type UpstreamStatus struct {
	Addr   string // where the follower connects
	Source string // why: the configuration, or a REPLICAOF (store.UpstreamFrom*)
	Link   LinkStatus
	// Refreshing: a snapshot refresh runs; Refresh: how the last one went.
	Refreshing bool
	Refresh    RefreshStatus
	FullSync   GateStatus
	Calm       CalmStatus
	Guard      GuardStatus
	// RefusedSources are the replicas that could not serve the last
	// refreshes that asked them.
	RefusedSources []RefusedSource
	// WindowShort: the backlog is full and covers less than
	// minBacklogWindow of stream at the current write rate.
	WindowShort bool
	// DelayShort: the budget cannot hold the stream delayed replicas need.
	DelayShort bool
}

// RefreshStatus is the last snapshot refresh, as Redis reports its BGSAVE.
type RefreshStatus struct {
	Failed      bool      // rdb_last_bgsave_status err
	LastSecs    int64     // rdb_last_bgsave_time_sec, -1 before any
	CurrentSecs int64     // rdb_current_bgsave_time_sec, -1 when none runs
	DoneAt      time.Time // when the last one ended; zero before any
}

// DownstreamStatus is the replica side: the replicas by ID and the full
// syncs waiting for a slot.
type DownstreamStatus struct {
	Replicas []ReplicaStatus
	Queued   int64
}
