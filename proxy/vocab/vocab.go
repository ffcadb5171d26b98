package vocab

import (
	"errors"
	"strings"
	"sync/atomic"
	"time"
)

// WriteTimeout bounds one write of a reply, an ACK or a message: a peer
// that reads nothing for this long is gone.
const WriteTimeout = 10 * time.Second

// The proxy's vocabulary: every state and reason it reports, typed and in
// one place. Metrics iterate over these lists, so each label series exists
// (at 0) from start-up and an increase() alert can fire on its first event.

// LinkState is the upstream link's state, as INFO names it.
type LinkState string

const (
	LinkConnect    LinkState = "connect"    // between connections
	LinkConnecting LinkState = "connecting" // dialling
	LinkHandshake  LinkState = "handshake"  // PING, AUTH, REPLCONF, PSYNC
	LinkSync       LinkState = "sync"       // receiving a full sync
	LinkConnected  LinkState = "connected"  // streaming
)

// LinkStates lists every LinkState.
var LinkStates = []LinkState{LinkConnect, LinkConnecting, LinkHandshake, LinkSync, LinkConnected}

// UpstreamReason is why an upstream connection ended.
type UpstreamReason string

const (
	UpTimeout      UpstreamReason = "timeout"
	UpClosed       UpstreamReason = "closed"
	UpError        UpstreamReason = "error"
	UpShutdown     UpstreamReason = "shutdown"
	UpBacklogWrite UpstreamReason = "backlog_write" // the backlog could not store the stream
	UpReplicaof    UpstreamReason = "replicaof"     // an operator moved the upstream
	UpDataDir      UpstreamReason = "data_dir"      // a full sync failed on the data dir
	// The upstream's own error replies, by class.
	UpDenied         UpstreamReason = "denied"          // -DENIED: protected mode
	UpAuth           UpstreamReason = "auth"            // -NOAUTH, -WRONGPASS, -ERR invalid password
	UpNoPerm         UpstreamReason = "noperm"          // -NOPERM: the ACL user lacks a right
	UpLoading        UpstreamReason = "loading"         // -LOADING
	UpNoMasterLink   UpstreamReason = "nomasterlink"    // -NOMASTERLINK: a replica without its master
	UpUnknownCommand UpstreamReason = "unknown_command" // a renamed or disabled command
)

// UpstreamReasons lists every UpstreamReason.
var UpstreamReasons = []UpstreamReason{UpTimeout, UpClosed, UpError, UpShutdown, UpBacklogWrite, UpReplicaof, UpDataDir,
	UpDenied, UpAuth, UpNoPerm, UpLoading, UpNoMasterLink, UpUnknownCommand}

// DisconnectReason is why a replica link ended.
type DisconnectReason string

const (
	DownClosed          DisconnectReason = "closed"
	DownTimeout         DisconnectReason = "timeout"
	DownError           DisconnectReason = "error"
	DownOffsetTrimmed   DisconnectReason = "offset_trimmed" // fell behind the backlog front
	DownHistoryReset    DisconnectReason = "history_reset"
	DownReplIDChanged   DisconnectReason = "replid_changed"
	DownProtocolError   DisconnectReason = "protocol_error"
	DownShutdown        DisconnectReason = "shutdown"
	DownClosedBeforeAck DisconnectReason = "closed_before_ack" // hung up after a full sync without ACKing
	DownRDBVersion      DisconnectReason = "rdb_version"       // announced a release that cannot load the snapshot
	DownUserRevoked     DisconnectReason = "user_revoked"      // its user was removed or turned off by a users reload
)

// DisconnectReasons lists every DisconnectReason.
var DisconnectReasons = []DisconnectReason{DownClosed, DownTimeout, DownError, DownOffsetTrimmed, DownHistoryReset,
	DownReplIDChanged, DownProtocolError, DownShutdown, DownClosedBeforeAck, DownRDBVersion, DownUserRevoked}

// ReplicaState is a downstream replica's state, as Redis names it in INFO.
type ReplicaState string

const (
	ReplicaHandshake  ReplicaState = "handshake"   // a client, or a replica before PSYNC
	ReplicaWaitBgsave ReplicaState = "wait_bgsave" // full sync: waiting for a slot or a snapshot
	ReplicaSendBulk   ReplicaState = "send_bulk"   // full sync: sending the snapshot
	ReplicaOnline     ReplicaState = "online"      // streaming
)

// ReplicaStates lists the states of sessions that are replicas.
var ReplicaStates = []ReplicaState{ReplicaWaitBgsave, ReplicaSendBulk, ReplicaOnline}

// ReplicaStateByCode maps a session's atomic state code to its name.
var ReplicaStateByCode = [...]ReplicaState{ReplicaHandshake, ReplicaWaitBgsave, ReplicaSendBulk, ReplicaOnline}

// Counts is a fixed set of counters, one per value of a vocabulary: the
// map is built once and only read, so it needs no lock.
type Counts[R ~string] map[R]*atomic.Int64

func NewCounts[R ~string](all []R) Counts[R] {
	c := make(Counts[R], len(all))
	for _, r := range all {
		c[r] = new(atomic.Int64)
	}
	return c
}

// Add counts one r; a value outside the vocabulary is a bug, counted under
// fallback rather than lost.
func (c Counts[R]) Add(r, fallback R) {
	if n, ok := c[r]; ok {
		n.Add(1)
		return
	}
	c[fallback].Add(1)
}

// Load returns r's count.
func (c Counts[R]) Load(r R) int64 {
	if n, ok := c[r]; ok {
		return n.Load()
	}
	return 0
}

// Truncate shortens s to n bytes for a log line or an error reply.
func Truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// OneLine makes s fit on one line of INFO or of an error reply.
func OneLine(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }

// ErrNothingHeld answers a guard accept with nothing to accept.
var ErrNothingHeld = errors.New("the guard holds no history")

// ErrHeldChanged answers a guard accept of a history no longer held:
// another arrived while the accept waited.
var ErrHeldChanged = errors.New("the held history changed")
