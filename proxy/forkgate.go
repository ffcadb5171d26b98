package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/replproxy/replproxy/psync/snapshot"
)

// A full sync from the upstream costs the origin a fork, a BGSAVE and a
// whole dataset on the wire. The forkGate decides when the proxy may ask
// for one again after one failed, apart from the cheap reconnect backoff:
// a cause the proxy can fix itself (a full disk) is waited out, anything
// else backs off exponentially up to minutes.

// failureClass is why a full sync from the upstream failed.
type failureClass string

const (
	failLocal   failureClass = "local"   // the data dir: full, read-only, I/O errors
	failPayload failureClass = "payload" // the RDB failed verification
	failLink    failureClass = "link"    // the connection broke or timed out mid-transfer
)

// FailureClasses are the failure classes, as metrics label them.
var FailureClasses = []string{string(failLocal), string(failPayload), string(failLink)}

// syncPurpose is why the proxy asked the upstream for an RDB.
type syncPurpose string

const (
	purposeInitial       syncPurpose = "initial"        // no history yet
	purposeHistoryChange syncPurpose = "history_change" // the upstream could not continue ours
	purposeRefresh       syncPurpose = "refresh"        // a fresh snapshot of the same history
)

var syncPurposes = []syncPurpose{purposeInitial, purposeHistoryChange, purposeRefresh}

// SyncOutcomes are the outcome labels of upstream full syncs: ok or a
// failure class.
var SyncOutcomes = []string{"ok", string(failLocal), string(failPayload), string(failLink)}

// SyncPurposes are the purpose labels of upstream full syncs.
func SyncPurposes() []string {
	out := make([]string, len(syncPurposes))
	for i, p := range syncPurposes {
		out[i] = string(p)
	}
	return out
}

// errLocal marks a failure of the proxy's own data dir.
var errLocal = errors.New("data dir")

// localError wraps err as a local failure.
func localError(err error) error { return fmt.Errorf("%w: %w", errLocal, err) }

// classify tells why a full sync failed.
func classify(err error) failureClass {
	var ve *snapshot.VerifyError
	switch {
	case errors.Is(err, errLocal):
		return failLocal
	case errors.As(err, &ve), errors.Is(err, errRefreshRejected):
		return failPayload
	}
	return failLink
}

// Defaults of the cost backoff.
const (
	DefaultFullSyncRetryMin = 15 * time.Second
	DefaultFullSyncRetryMax = 5 * time.Minute
)

// gateState is what the gate persists, so a proxy in a crash loop keeps
// its distance from the origin too.
type gateState struct {
	// NotBefore: no fork-costing request before this time.
	NotBefore time.Time     `json:"not_before"`
	Backoff   time.Duration `json:"backoff"` // the wait after the next failure
	// MainPending: the main link's last full sync did not complete, so the
	// next connection will most likely need one again.
	MainPending bool `json:"main_pending"`
	// Expected is the size the next snapshot needs on disk, at least: the
	// last one installed, or as far as a failed transfer got.
	Expected  int64        `json:"expected"`
	InARow    int          `json:"in_a_row"`
	LastClass failureClass `json:"last_class,omitempty"`
	LastError string       `json:"last_error,omitempty"`
	LastAt    time.Time    `json:"last_at"`
}

// forkGate is safe for concurrent use: the follower and the refresh both
// ask it; INFO and metrics read it.
type forkGate struct {
	min, max time.Duration
	path     string // persisted here; "" keeps it in memory
	now      func() time.Time
	jitter   func() float64 // in [0, 1)

	mu      sync.Mutex
	st      gateState
	blocked string // a local cause holding the next attempt back, as said to operators
	persist error  // the last persist failure, reported once
}

func newForkGate(min, max time.Duration, path string) *forkGate {
	g := &forkGate{min: min, max: max, path: path, now: time.Now, jitter: rand.Float64}
	g.st.Backoff = min
	return g
}

// load restores persisted state; a missing or unreadable file starts fresh.
func (g *forkGate) load() error {
	b, err := os.ReadFile(g.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st gateState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("parse %s: %w", g.path, err)
	}
	st.Backoff = min(max(st.Backoff, g.min), g.max)
	g.mu.Lock()
	g.st = st
	g.mu.Unlock()
	return nil
}

// save writes the state; called without g.mu (a file write), with a copy.
func (g *forkGate) save(st gateState) {
	if g.path == "" {
		return
	}
	b, _ := json.Marshal(st)
	err := writeFileAtomic(g.path, append(b, '\n'))
	g.mu.Lock()
	defer g.mu.Unlock()
	g.persist = err
}

// persistError returns a failure to persist the state, once.
func (g *forkGate) persistError() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	err := g.persist
	g.persist = nil
	return err
}

// started records that the upstream answered +FULLRESYNC: a fork is
// happening. Until it is known to have succeeded, the next one waits a
// backoff, so even a proxy killed mid-transfer does not come straight back.
func (g *forkGate) started(purpose syncPurpose) {
	g.mu.Lock()
	g.st.NotBefore = g.now().Add(g.delayLocked())
	if purpose != purposeRefresh {
		g.st.MainPending = true
	}
	st := g.st
	g.mu.Unlock()
	g.save(st)
}

// delayLocked is the current backoff with jitter (75–100%).
func (g *forkGate) delayLocked() time.Duration {
	return time.Duration(float64(g.st.Backoff) * (0.75 + 0.25*g.jitter()))
}

// succeeded records an installed snapshot of size bytes.
func (g *forkGate) succeeded(purpose syncPurpose, size int64) {
	g.mu.Lock()
	g.st.NotBefore, g.st.Backoff, g.st.InARow = time.Time{}, g.min, 0
	g.st.LastClass, g.st.LastError = "", ""
	g.st.Expected = size
	if purpose != purposeRefresh {
		g.st.MainPending = false
	}
	g.blocked = ""
	st := g.st
	g.mu.Unlock()
	g.save(st)
}

// aborted records a full sync the proxy itself ended (a shutdown, a
// REPLICAOF): no failure, so no wait beyond what failures before it set;
// the next connection still needs a full sync.
func (g *forkGate) aborted() {
	g.mu.Lock()
	if g.st.InARow == 0 {
		g.st.NotBefore = time.Time{}
	}
	st := g.st
	g.mu.Unlock()
	g.save(st)
}

// continued records a partial resync: the main link needed no full sync.
func (g *forkGate) continued() {
	g.mu.Lock()
	if !g.st.MainPending {
		g.mu.Unlock()
		return
	}
	g.st.MainPending = false
	st := g.st
	g.mu.Unlock()
	g.save(st)
}

// failed records a failed full sync after got bytes of it arrived, and
// returns its class. The next attempt waits the backoff, which then doubles.
func (g *forkGate) failed(err error, got int64) failureClass {
	class := classify(err)
	g.mu.Lock()
	now := g.now()
	g.st.NotBefore = now.Add(g.delayLocked())
	g.st.Backoff = min(g.st.Backoff*2, g.max)
	g.st.InARow++
	if g.st.LastClass != class {
		g.st.InARow = 1
	}
	g.st.LastClass, g.st.LastError, g.st.LastAt = class, err.Error(), now
	g.st.Expected = max(g.st.Expected, got)
	st := g.st
	g.mu.Unlock()
	g.save(st)
	return class
}

// moved forgets the backoff: a new upstream has its own costs.
func (g *forkGate) moved() {
	g.mu.Lock()
	g.st.NotBefore, g.st.Backoff, g.st.InARow = time.Time{}, g.min, 0
	st := g.st
	g.mu.Unlock()
	g.save(st)
}

// wait reports how long a fork-costing request must still wait (0: go).
// main says the request is the main link's, which waits only while its
// last full sync is pending or it has no history.
func (g *forkGate) wait(main, noHistory bool) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	if main && !noHistory && !g.st.MainPending {
		return 0
	}
	return max(g.st.NotBefore.Sub(g.now()), 0)
}

// setBlocked records (or, with "", clears) a local cause holding requests
// back; it reports whether that changed, so callers log once per cause.
func (g *forkGate) setBlocked(reason string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	changed := g.blocked != reason
	g.blocked = reason
	return changed
}

// expected is the disk space the next snapshot needs, at least.
func (g *forkGate) expected() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.st.Expected
}

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

func (g *forkGate) status() GateStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	gs := GateStatus{InARow: g.st.InARow, LastClass: string(g.st.LastClass), LastError: g.st.LastError,
		LastAt: g.st.LastAt, Blocked: g.blocked, Pending: g.st.MainPending}
	if g.st.NotBefore.After(g.now()) {
		gs.NextAt = g.st.NotBefore
	}
	return gs
}
