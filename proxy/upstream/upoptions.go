package upstream

import (
	"os"
	"slices"
	"time"

	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync/backlog"
)

// Options are what the upstream side reads of the configuration (see
// the flags of the same names).
type Options struct {
	Upstream                           string
	UpstreamUser, UpstreamPassword     string
	UpstreamTLS, UpstreamTLSInsecure   bool
	AnnounceIP, AnnounceVersion        string
	AnnouncePort                       int
	ReplicaAuthUser                    string
	ReplicaAuthPassword                string
	ReplTimeout, ReplicaTimeout        time.Duration
	DataDir                            string
	BacklogSize, SegmentSize           int64
	Fsync                              backlog.FsyncPolicy
	Delay                              time.Duration
	AckReplicas                        int
	CalmWaitMax                        time.Duration
	FullSyncRetryMin, FullSyncRetryMax time.Duration
	GuardDisabled                      bool
	GuardMinKeysRatio                  float64
	RefreshFrom, RefreshTrust          []string
	RefreshMode, RefreshUpstream       string
	RefreshRatio                       float64
	// Observer times upstream full syncs (histograms); never nil.
	Observer interface{ ObserveUpstreamFullSync(seconds float64) }
	// SyncFile replaces fsync where the upstream side persists (a test hook).
	SyncFile func(*os.File) error
	// Deliver hands each stored stream chunk to the downstream's fan-out;
	// nil when it is disabled.
	Deliver func(start int64, chunk []byte, busy bool)
}

// hasRefreshSource reports whether src is one of the refresh sources.
func (o *Options) hasRefreshSource(src string) bool { return slices.Contains(o.RefreshFrom, src) }

// Replicas is the upstream side's view of the replicas the proxy serves.
type Replicas interface {
	// Port is the port replicas follow, announced to the upstream as the
	// listening port when none is configured.
	Port() int
	// SourcePorts are the ports a refresh source's master_port may name.
	SourcePorts() []int
	// CloseReplicas disconnects every replica (the history moved).
	CloseReplicas(reason vocab.DisconnectReason) int
	// DropTrimmedReplicas disconnects replicas behind the backlog's front.
	DropTrimmedReplicas()
	// NthAck is the offset the n-th most advanced replica acknowledged.
	NthAck(n int) int64
	// RefreshCandidates are the replicas a refresh may ask, most
	// caught-up first, avoid last; refused ones are left out.
	RefreshCandidates(avoid string, refused func(addr string) bool) []vocab.Candidate
}

// NewCounters are the upstream side's counters, every labelled series
// present from start-up.
func NewCounters() *vocab.UpstreamCounters {
	return &vocab.UpstreamCounters{UpstreamDisconnects: vocab.NewCounts(vocab.UpstreamReasons),
		RefreshAttempts:          vocab.NewCounts(pairs(vocab.SnapshotSources, vocab.RefreshOutcomes)),
		UpstreamFullSyncOutcomes: vocab.NewCounts(pairs(vocab.SyncPurposes(), vocab.SyncOutcomes)),
		SourceRefusals:           vocab.NewCounts(vocab.SourceRefusals)}
}

// countFullSync counts one upstream full sync; class "" is success.
func countFullSync(s *vocab.UpstreamCounters, purpose vocab.SyncPurpose, class vocab.FailureClass) {
	outcome := "ok"
	if class != "" {
		outcome = string(class)
	}
	s.UpstreamFullSyncOutcomes[string(purpose)+"/"+outcome].Add(1)
}

// pairs lists "a/b" for every a, then b.
func pairs(as, bs []string) []string {
	var out []string
	for _, a := range as {
		for _, b := range bs {
			out = append(out, a+"/"+b)
		}
	}
	return out
}
