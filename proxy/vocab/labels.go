package vocab

// FailureClass is why a full sync from the upstream failed.
type FailureClass string

const (
	FailLocal   FailureClass = "local"   // the data dir: full, read-only, I/O errors
	FailPayload FailureClass = "payload" // the RDB failed verification
	FailLink    FailureClass = "link"    // the connection broke or timed out mid-transfer
	// FailInterrupted: the proxy itself died (SIGKILL, power loss, OOM)
	// while a fork-costing request was under way; found at the next start.
	FailInterrupted FailureClass = "interrupted"
)

// FailureClasses are the failure classes, as metrics label them.
var FailureClasses = []string{string(FailLocal), string(FailPayload), string(FailLink), string(FailInterrupted)}

// SyncPurpose is why the proxy asked the upstream for an RDB.
type SyncPurpose string

const (
	PurposeInitial       SyncPurpose = "initial"        // no history yet
	PurposeHistoryChange SyncPurpose = "history_change" // the upstream could not continue ours
	PurposeRefresh       SyncPurpose = "refresh"        // a fresh snapshot of the same history
)

var syncPurposeList = []SyncPurpose{PurposeInitial, PurposeHistoryChange, PurposeRefresh}

// SyncOutcomes are the outcome labels of upstream full syncs: ok or a
// failure class.
var SyncOutcomes = []string{"ok", string(FailLocal), string(FailPayload), string(FailLink), string(FailInterrupted)}

// SyncPurposes are the purpose labels of upstream full syncs.
func SyncPurposes() []string {
	out := make([]string, len(syncPurposeList))
	for i, p := range syncPurposeList {
		out[i] = string(p)
	}
	return out
}

// Snapshot sources, as INFO and metrics label them.
const (
	SnapFromReplica  = "replica"
	SnapFromUpstream = "upstream"
)

// SnapshotSources are the label values of a snapshot's source.
var SnapshotSources = []string{SnapFromReplica, SnapFromUpstream}

// RefreshOutcomes are the label values of a refresh attempt's outcome.
var RefreshOutcomes = []string{"ok", "failed"}

// Local causes that hold a full sync back, as metrics label them.
const (
	BlockedDiskFull = "disk_full"
	BlockedDataDir  = "data_dir_error"
)

// BlockedReasons are the label values of a held-back full sync.
var BlockedReasons = []string{BlockedDiskFull, BlockedDataDir}
