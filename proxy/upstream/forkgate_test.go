package upstream

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync/snapshot"
)

func testGate(t *testing.T, jitter float64) (*forkGate, *time.Time) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	g := newForkGate(DefaultFullSyncRetryMin, DefaultFullSyncRetryMax, filepath.Join(t.TempDir(), "gate"))
	g.now = func() time.Time { return now }
	g.jitter = func() float64 { return jitter }
	return g, &now
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want vocab.FailureClass
	}{
		{localError(syscall.ENOSPC), vocab.FailLocal},
		{fmt.Errorf("full sync: %w", localError(errors.New("disk_full: ..."))), vocab.FailLocal},
		{&snapshot.VerifyError{Reason: "CRC mismatch"}, vocab.FailPayload},
		{fmt.Errorf("refresh: %w", store.ErrRefreshRejected), vocab.FailPayload},
		{syscall.ECONNRESET, vocab.FailLink},
		{errors.New("i/o timeout"), vocab.FailLink},
	} {
		if got := classify(c.err); got != c.want {
			t.Errorf("%v: %s, want %s", c.err, got, c.want)
		}
	}
}

// TestGateSchedule: failed fork-costing syncs back off from 15 s, doubling
// to the 5 min cap, whatever the jitter does: at most 3 attempts in the
// first minute. A success resets it; a cheap reconnect never waits.
func TestGateSchedule(t *testing.T) {
	for _, jitter := range []float64{0, 0.5, 0.999} {
		g, now := testGate(t, jitter)
		var attempts []time.Duration
		start := *now
		for range 8 {
			if d := g.wait(true, true); d > 0 {
				*now = now.Add(d)
			}
			attempts = append(attempts, now.Sub(start))
			g.started(vocab.PurposeInitial)
			g.failed(vocab.PurposeInitial, &snapshot.VerifyError{Reason: "bad"}, 100)
		}
		inFirstMinute := 0
		for _, a := range attempts {
			if a < time.Minute {
				inFirstMinute++
			}
		}
		if inFirstMinute > 3 {
			t.Errorf("jitter %v: %d attempts in the first minute: %v", jitter, inFirstMinute, attempts)
		}
		for i := 1; i < len(attempts); i++ {
			gap := attempts[i] - attempts[i-1]
			want := min(DefaultFullSyncRetryMin<<(i-1), DefaultFullSyncRetryMax)
			if gap < want*3/4 || gap > want {
				t.Errorf("jitter %v: gap %d is %v, want within [%v, %v]", jitter, i, gap, want*3/4, want)
			}
		}
		if gs := g.status(); gs.InARow != 8 || gs.LastClass != "payload" || gs.NextAt.IsZero() {
			t.Errorf("status %+v", gs)
		}
		// A history in hand and no pending main sync: a reconnect is cheap.
		g.succeeded(vocab.PurposeInitial, 1000)
		if d := g.wait(true, false); d != 0 {
			t.Errorf("after a success the main link waits %v", d)
		}
		if gs := g.status(); gs.InARow != 0 || !gs.NextAt.IsZero() {
			t.Errorf("after a success: %+v", gs)
		}
	}
}

// TestGateRefreshDoesNotHoldMainLink: a failed refresh spaces out the next
// refresh but not the main link's partial resyncs; a failed main full sync
// holds the main link back too.
func TestGateRefreshDoesNotHoldMainLink(t *testing.T) {
	g, now := testGate(t, 0.5)
	g.started(vocab.PurposeRefresh)
	g.failed(vocab.PurposeRefresh, errors.New("connection reset"), 10)
	if d := g.wait(false, false); d <= 0 {
		t.Fatal("the next refresh does not wait")
	}
	if d := g.wait(true, false); d != 0 {
		t.Fatalf("the main link waits %v after a failed refresh", d)
	}
	g.started(vocab.PurposeHistoryChange)
	g.failed(vocab.PurposeHistoryChange, localError(syscall.ENOSPC), 5000)
	if d := g.wait(true, false); d <= 0 {
		t.Fatal("a pending main full sync does not wait")
	}
	if g.expected() != 5000 {
		t.Fatalf("expected %d", g.expected())
	}
	*now = now.Add(time.Hour)
	g.continued() // the upstream took our history after all
	if d := g.wait(true, false); d != 0 {
		t.Fatalf("after +CONTINUE the main link waits %v", d)
	}
}

// TestGateAbortIsNoFailure: a full sync the proxy ended itself (shutdown)
// sets no wait; one after failures keeps theirs.
func TestGateAbortIsNoFailure(t *testing.T) {
	g, _ := testGate(t, 0.5)
	g.started(vocab.PurposeInitial)
	g.aborted(vocab.PurposeInitial)
	if d := g.wait(true, true); d != 0 {
		t.Fatalf("after an aborted first sync the next waits %v", d)
	}
	g.started(vocab.PurposeInitial)
	g.failed(vocab.PurposeInitial, errors.New("connection reset"), 10)
	g.started(vocab.PurposeInitial)
	g.aborted(vocab.PurposeInitial)
	if d := g.wait(true, true); d <= 0 {
		t.Fatal("an abort erased the backoff of an earlier failure")
	}
	if gs := g.status(); gs.InARow != 1 || !gs.Pending {
		t.Fatalf("%+v", gs)
	}
}

// TestGatePersists: a proxy restarted (or crash-looping) mid-sync keeps
// its distance: the wait was recorded when the fork started.
func TestGatePersists(t *testing.T) {
	g, _ := testGate(t, 0.5)
	g.started(vocab.PurposeInitial) // and the process dies here
	g2 := newForkGate(DefaultFullSyncRetryMin, DefaultFullSyncRetryMax, g.path)
	g2.now = g.now
	if cut, err := g2.load(); err != nil || len(cut) != 1 || cut[0] != vocab.PurposeInitial {
		t.Fatalf("load: %q, %v; want the cut initial sync", cut, err)
	}
	if d := g2.wait(true, true); d < DefaultFullSyncRetryMin*3/4 {
		t.Fatalf("after a restart mid-sync the next full sync waits only %v", d)
	}
	if gs := g2.status(); !gs.Pending {
		t.Fatalf("%+v", gs)
	}
	g2.moved()
	if d := g2.wait(true, true); d != 0 {
		t.Fatalf("a new upstream waits %v", d)
	}
}

// TestGateCountsCutRequests: a request the proxy's own death cut before
// the upstream answered (a diskless origin answers +FULLRESYNC only when
// it forks) counts as a failure at the next start, so a crash loop backs
// off exponentially instead of asking at every start.
func TestGateCountsCutRequests(t *testing.T) {
	g, now := testGate(t, 0.5)
	var waits []time.Duration
	for range 4 {
		g.asking(vocab.PurposeRefresh) // and the process dies here, every time
		g2 := newForkGate(DefaultFullSyncRetryMin, DefaultFullSyncRetryMax, g.path)
		g2.now, g2.jitter = g.now, g.jitter
		cut, err := g2.load()
		if err != nil || len(cut) != 1 || cut[0] != vocab.PurposeRefresh {
			t.Fatalf("load: %q, %v", cut, err)
		}
		waits = append(waits, g2.wait(false, false))
		gs := g2.status()
		if gs.LastClass != string(vocab.FailInterrupted) || gs.Pending {
			t.Fatalf("%+v: want an interrupted refresh, the main link not pending", gs)
		}
		g = g2
	}
	for i := 1; i < len(waits); i++ {
		if waits[i] <= waits[i-1] {
			t.Fatalf("waits %v: the backoff does not grow across cut requests", waits)
		}
	}
	// Ended requests leave no mark.
	*now = now.Add(time.Hour)
	g.asking(vocab.PurposeHistoryChange)
	g.askEnded(vocab.PurposeHistoryChange)
	g3 := newForkGate(DefaultFullSyncRetryMin, DefaultFullSyncRetryMax, g.path)
	if cut, err := g3.load(); err != nil || len(cut) != 0 {
		t.Fatalf("load after an ended request: %q, %v", cut, err)
	}
	// The main link's and a refresh's requests have a slot each: one
	// ending does not clear the other's mark.
	g.asking(vocab.PurposeRefresh)
	g.asking(vocab.PurposeHistoryChange)
	g.continued()
	g4 := newForkGate(DefaultFullSyncRetryMin, DefaultFullSyncRetryMax, g.path)
	if cut, err := g4.load(); err != nil || len(cut) != 1 || cut[0] != vocab.PurposeRefresh {
		t.Fatalf("load: %q, %v; want the refresh still marked", cut, err)
	}
	if gs := g4.status(); gs.Pending {
		t.Fatal("a cut refresh holds the main link")
	}
}

// TestGateSavesNewestLast: concurrent changes leave the newest state on
// disk, whatever order their file writes were scheduled in.
func TestGateSavesNewestLast(t *testing.T) {
	g, _ := testGate(t, 0.5)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			if i%2 == 0 {
				g.asking(vocab.PurposeRefresh)
			} else {
				g.askEnded(vocab.PurposeRefresh)
			}
		})
	}
	wg.Wait()
	g.mu.Lock()
	want := g.st.AskingRefresh
	g.mu.Unlock()
	g2 := newForkGate(DefaultFullSyncRetryMin, DefaultFullSyncRetryMax, g.path)
	cut, err := g2.load()
	if err != nil || (len(cut) == 1) != want {
		t.Fatalf("on disk: cut %q (%v); in memory the refresh is marked: %v", cut, err, want)
	}
}
