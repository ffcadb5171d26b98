package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/replproxy/replproxy/internal/atomicfile"
	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// A full sync from the upstream costs the origin a fork, a BGSAVE and a
// whole dataset on the wire. The forkGate decides when the proxy may ask
// for one again after one failed, apart from the cheap reconnect backoff:
// a cause the proxy can fix itself (a full disk) is waited out, anything
// else backs off exponentially up to minutes.

// errLocal marks a failure of the proxy's own data dir.
var errLocal = errors.New("data dir")

// localError wraps err as a local failure.
func localError(err error) error { return fmt.Errorf("%w: %w", errLocal, err) }

// classify tells why a full sync failed.
func classify(err error) vocab.FailureClass {
	var ve *snapshot.VerifyError
	switch {
	case errors.Is(err, errInterrupted):
		return vocab.FailInterrupted
	case errors.Is(err, errLocal):
		return vocab.FailLocal
	case errors.As(err, &ve), errors.Is(err, store.ErrRefreshRejected):
		return vocab.FailPayload
	}
	return vocab.FailLink
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
	Expected  int64              `json:"expected"`
	InARow    int                `json:"in_a_row"`
	LastClass vocab.FailureClass `json:"last_class,omitempty"`
	LastError string             `json:"last_error,omitempty"`
	LastAt    time.Time          `json:"last_at"`
	// AskingMain and AskingRefresh are set, and persisted, before the main
	// link or a refresh sends a PSYNC that may make the origin fork, and
	// cleared when that request ends. Found set at start, the request was
	// cut by the proxy's own death: a failure like any other, so a crash
	// loop cannot ask faster than the backoff.
	AskingMain    vocab.SyncPurpose `json:"asking_main,omitempty"`
	AskingRefresh bool              `json:"asking_refresh,omitempty"`
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
	seq     uint64 // bumped by every change of st, so saves keep the newest
	blocked string // a local cause holding the next attempt back, as said to operators
	persist error  // the last persist failure, reported once

	// saveMu serialises the file writes (never held by readers) so that two
	// concurrent saves cannot leave the older state on disk last.
	saveMu sync.Mutex
	saved  uint64 // the seq on disk; under saveMu
}

func newForkGate(min, max time.Duration, path string) *forkGate {
	g := &forkGate{min: min, max: max, path: path, now: time.Now, jitter: rand.Float64}
	g.st.Backoff = min
	return g
}

// errInterrupted is the failure recorded for a request the proxy's own
// death cut.
var errInterrupted = errors.New("replproxy stopped (killed, crashed or lost power) while a full sync it had asked the upstream for was under way")

// load restores persisted state; a missing or unreadable file starts fresh.
// Requests found under way were cut by the proxy's death: each is recorded
// as a failure, and their purposes returned. Only a cut initial sync makes
// the main link's next request wait the backoff: one with a history most
// likely continues.
func (g *forkGate) load() ([]vocab.SyncPurpose, error) {
	b, err := os.ReadFile(g.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st gateState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse %s: %w", g.path, err)
	}
	st.Backoff = min(max(st.Backoff, g.min), g.max)
	st.MainPending = st.MainPending || st.AskingMain == vocab.PurposeInitial
	g.mu.Lock()
	g.st = st
	g.mu.Unlock()
	var cut []vocab.SyncPurpose
	if st.AskingMain != "" {
		cut = append(cut, st.AskingMain)
	}
	if st.AskingRefresh {
		cut = append(cut, vocab.PurposeRefresh)
	}
	for _, purpose := range cut {
		g.failed(purpose, errInterrupted, 0) // clears its mark and saves
	}
	return cut, nil
}

// change applies fn to the state under g.mu and persists the result,
// outside g.mu (a file write readers must not wait for).
func (g *forkGate) change(fn func(st *gateState)) {
	g.mu.Lock()
	fn(&g.st)
	g.seq++
	st, seq := g.st, g.seq
	g.mu.Unlock()
	g.save(st, seq)
}

// save writes the state of change number seq, unless a newer one is on
// disk already.
func (g *forkGate) save(st gateState, seq uint64) {
	if g.path == "" {
		return
	}
	g.saveMu.Lock()
	defer g.saveMu.Unlock()
	if seq <= g.saved {
		return
	}
	b, _ := json.Marshal(st)
	err := atomicfile.Write(g.path, append(b, '\n'), nil)
	if err == nil {
		g.saved = seq
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.persist = err
}

// flush writes the state if the last save of it failed (a full data dir),
// so a clean stop does not leave a request marked as under way.
func (g *forkGate) flush() error {
	g.mu.Lock()
	st, seq := g.st, g.seq
	g.mu.Unlock()
	g.saveMu.Lock()
	current := seq <= g.saved
	g.saveMu.Unlock()
	if current {
		return nil
	}
	g.save(st, seq)
	return g.persistError()
}

// persistError returns a failure to persist the state, once.
func (g *forkGate) persistError() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	err := g.persist
	g.persist = nil
	return err
}

// asking records, before the PSYNC goes out, that a request which may
// make the origin fork is under way: a proxy killed before the answer (a
// diskless origin answers +FULLRESYNC only when it forks, seconds later)
// still counts it at its next start.
func (g *forkGate) asking(purpose vocab.SyncPurpose) {
	g.change(func(st *gateState) { st.mark(purpose, true) })
}

// mark sets or clears the request slot of purpose.
func (st *gateState) mark(purpose vocab.SyncPurpose, on bool) {
	if purpose == vocab.PurposeRefresh {
		st.AskingRefresh = on
		return
	}
	st.AskingMain = ""
	if on {
		st.AskingMain = purpose
	}
}

// marked reports whether purpose's request slot is set.
func (st *gateState) marked(purpose vocab.SyncPurpose) bool {
	if purpose == vocab.PurposeRefresh {
		return st.AskingRefresh
	}
	return st.AskingMain != ""
}

// askEnded records that a request ended before the upstream forked for it
// (it continued, was refused, or the link broke before +FULLRESYNC).
func (g *forkGate) askEnded(purpose vocab.SyncPurpose) {
	g.mu.Lock()
	marked := g.st.marked(purpose)
	g.mu.Unlock()
	if marked {
		g.change(func(st *gateState) { st.mark(purpose, false) })
	}
}

// started records that the upstream answered +FULLRESYNC: a fork is
// happening. Until it is known to have succeeded, the next one waits a
// backoff, so even a proxy killed mid-transfer does not come straight back.
func (g *forkGate) started(purpose vocab.SyncPurpose) {
	g.change(func(st *gateState) {
		st.NotBefore = g.now().Add(g.delay(st))
		st.mark(purpose, true)
		if purpose != vocab.PurposeRefresh {
			st.MainPending = true
		}
	})
}

// delay is the current backoff with jitter (75–100%).
func (g *forkGate) delay(st *gateState) time.Duration {
	return time.Duration(float64(st.Backoff) * (0.75 + 0.25*g.jitter()))
}

// succeeded records an installed snapshot of size bytes.
func (g *forkGate) succeeded(purpose vocab.SyncPurpose, size int64) {
	g.mu.Lock()
	g.blocked = ""
	g.mu.Unlock()
	g.change(func(st *gateState) {
		st.NotBefore, st.Backoff, st.InARow = time.Time{}, g.min, 0
		st.LastClass, st.LastError = "", ""
		st.Expected = size
		st.mark(purpose, false)
		if purpose != vocab.PurposeRefresh {
			st.MainPending = false
		}
	})
}

// aborted records a request the proxy itself ended (a shutdown, a
// REPLICAOF, a refresh cancelled): no failure, so no wait beyond what
// failures before it set; the next connection still needs a full sync.
func (g *forkGate) aborted(purpose vocab.SyncPurpose) {
	g.change(func(st *gateState) {
		if st.InARow == 0 {
			st.NotBefore = time.Time{}
		}
		st.mark(purpose, false)
	})
}

// continued records a partial resync: the main link needed no full sync.
func (g *forkGate) continued() {
	g.mu.Lock()
	unchanged := !g.st.MainPending && g.st.AskingMain == ""
	g.mu.Unlock()
	if unchanged {
		return
	}
	g.change(func(st *gateState) { st.MainPending, st.AskingMain = false, "" })
}

// failed records a failed full sync of purpose after got bytes of it
// arrived, and returns its class. The next attempt waits the backoff,
// which then doubles.
func (g *forkGate) failed(purpose vocab.SyncPurpose, err error, got int64) vocab.FailureClass {
	class := classify(err)
	g.change(func(st *gateState) {
		now := g.now()
		st.NotBefore = now.Add(g.delay(st))
		st.Backoff = min(st.Backoff*2, g.max)
		st.InARow++
		if st.LastClass != class {
			st.InARow = 1
		}
		st.LastClass, st.LastError, st.LastAt = class, err.Error(), now
		st.Expected = max(st.Expected, got)
		st.mark(purpose, false)
	})
	return class
}

// moved forgets the backoff: a new upstream has its own costs.
func (g *forkGate) moved() {
	g.change(func(st *gateState) { st.NotBefore, st.Backoff, st.InARow = time.Time{}, g.min, 0 })
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

func (g *forkGate) status() vocab.GateStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	gs := vocab.GateStatus{InARow: g.st.InARow, LastClass: string(g.st.LastClass), LastError: g.st.LastError,
		LastAt: g.st.LastAt, Blocked: g.blocked, Pending: g.st.MainPending}
	if g.st.NotBefore.After(g.now()) {
		gs.NextAt = g.st.NotBefore
	}
	return gs
}

// Persist saves the fork gate if its last save failed (at shutdown).
func (f *Follower) Persist() error { return f.gate.flush() }
