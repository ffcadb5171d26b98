package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/internal/atomicfile"

	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/backlog"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// The empty-origin guard. A master restarted without persistence comes back
// empty under a new replication ID, and its replicas full-sync to nothing.
// When the upstream offers a new history whose snapshot holds fewer keys
// than --guard-min-keys-ratio of the current one, the proxy holds it: it
// keeps serving the current history (replicas keep their data, new ones
// get the current snapshot), keeps the new snapshot and stream in
// data-dir/held without asking the origin for anything more, and waits for
// an operator to accept it. A refresh (same history) is never guarded.

// DefaultGuardMinKeysRatio: a new history with less than half the keys is
// held.
const DefaultGuardMinKeysRatio = 0.5

// heldHistory is a new history kept aside until accepted.
type heldHistory struct {
	store.HeldRecord
	bl      *backlog.Log
	scanner psync.Scanner
}

// guard is the follower's empty-origin guard. The held history is the
// follow goroutine's: it alone holds, appends to, accepts and drops it (an
// operator's accept is a request to it, on accepts). mu guards only the
// held pointer, for the readers on other goroutines (status, the ACK
// ticker); the follow goroutine reads it without mu and writes it under mu.
type guard struct {
	dir     store.Layout
	mu      sync.Mutex
	held    *heldHistory
	holds   atomic.Int64
	accepts chan acceptRequest // an operator's accept
	pending *acceptRequest     // taken at a link's start, served after it (follow goroutine only)
	f       *Follower          // whose store, stream and link the guard works with
}

// set publishes the held history (the follow goroutine only).
func (g *guard) set(h *heldHistory) {
	g.mu.Lock()
	g.held = h
	g.mu.Unlock()
}

func (f *Follower) GuardStatus() vocab.GuardStatus {
	g := f.guard
	st := vocab.GuardStatus{Enabled: !f.cfg.GuardDisabled, Holds: g.holds.Load(), MinRatio: f.cfg.GuardMinKeysRatio}
	g.mu.Lock()
	defer g.mu.Unlock()
	if h := g.held; h != nil {
		st.Holding, st.Since, st.ReplID, st.Offset = true, h.Since, h.Snapshot.ReplID, h.Snapshot.Offset
		st.HeldEnd, st.CurKeys, st.NewKeys = h.bl.End(), h.CurKeys, h.NewKeys
	}
	return st
}

func totalKeys(ks []snapshot.KeyStats) int64 {
	var n int64
	for _, k := range ks {
		n += k.Keys
	}
	return n
}

// keysOf counts a snapshot's keys: from its metadata, else by a scan.
func (g *guard) keysOf(info *snapshot.Info, dir string) (int64, error) {
	if info.Keyspace != nil {
		return totalKeys(info.Keyspace), nil
	}
	ks, err := snapshot.ScanFile(context.Background(), dir, info, snapshot.ScanOptions{})
	if err != nil {
		return 0, err
	}
	return totalKeys(ks), nil
}

// shouldHold decides on a new history's snapshot, installed in snapDir.
func (g *guard) shouldHold(info *snapshot.Info) (hold bool, cur, nw int64) {
	f := g.f
	if f.cfg.GuardDisabled {
		return false, 0, 0
	}
	curSnap := f.store.Position().Snap
	if curSnap == nil || curSnap.ReplID == info.ReplID {
		return false, 0, 0
	}
	cur, err := g.keysOf(curSnap, f.store.SnapDir)
	if err != nil {
		f.log.Warn("guard: the current snapshot's keys cannot be counted; not guarding this history change", "err", err)
		return false, 0, 0
	}
	nw, err = g.keysOf(info, f.store.SnapDir)
	if err != nil {
		f.log.Warn("guard: the new snapshot's keys cannot be counted; not guarding this history change", "err", err)
		return false, cur, 0
	}
	if cur == 0 {
		return false, cur, nw
	}
	return float64(nw) < f.cfg.GuardMinKeysRatio*float64(cur), cur, nw
}

// hold moves the new snapshot aside and starts its stream in the held dir.
// The files are written before the history is published: readers never
// wait for them.
func (g *guard) hold(info *snapshot.Info, cur, nw int64) error {
	f := g.f
	g.drop()
	if err := atomicfile.MkdirAll(g.dir.Held(), 0o755, nil); err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	if err := os.Rename(filepath.Join(f.store.SnapDir, info.Name), filepath.Join(g.dir.Held(), info.Name)); err != nil {
		return fmt.Errorf("guard: move the held snapshot: %w", err)
	}
	bl, _, err := backlog.Open(g.dir.HeldBacklog(), backlog.Options{SegmentSize: f.cfg.SegmentSize, Fsync: f.cfg.Fsync, ValidPrefix: store.ValidStreamPrefix})
	if err != nil {
		return fmt.Errorf("guard: %w", err)
	}
	if err := bl.Reset(info.Offset+1, snapshot.FileName(info.ReplID, info.Offset)); err != nil {
		bl.Close()
		return fmt.Errorf("guard: %w", err)
	}
	h := &heldHistory{HeldRecord: store.HeldRecord{Snapshot: info, Since: time.Now(), CurKeys: cur, NewKeys: nw}, bl: bl}
	if err := g.dir.WriteHeldRecord(h.HeldRecord); err != nil {
		bl.Close()
		return err
	}
	g.set(h)
	g.holds.Add(1)
	f.maint.cancelRefresh("guard holds a new history")
	f.log.Error("guard: the upstream offers a new history with far fewer keys; holding it, replicas keep the current data until an operator accepts it (REPLPROXY GUARD ACCEPT or POST /guard/accept)",
		"current_keys", cur, "new_keys", nw, "min_keys_ratio", f.cfg.GuardMinKeysRatio, "new_replid", info.ReplID, "current_replid", f.store.Position().Hist.ReplID)
	return nil
}

// drop forgets a held history and its files (the follow goroutine only).
func (g *guard) drop() {
	f := g.f
	h := g.held
	if h == nil {
		return
	}
	g.set(nil)
	h.bl.Close()
	if err := os.RemoveAll(g.dir.Held()); err != nil {
		f.log.Warn("guard: remove the held history", "err", err)
	}
}

// loadHeld recovers a history held before a restart.
func (g *guard) loadHeld() error {
	f := g.f
	rec, err := g.dir.ReadHeldRecord()
	if errors.Is(err, os.ErrNotExist) {
		_ = os.RemoveAll(g.dir.Held()) // a hold that never completed
		return nil
	}
	if err != nil || rec.Snapshot == nil {
		return fmt.Errorf("guard: %s: unreadable (%v)", g.dir.HeldRecordFile(), err)
	}
	h := heldHistory{HeldRecord: rec}
	if _, err := os.Stat(filepath.Join(g.dir.Held(), h.Snapshot.Name)); err != nil {
		return fmt.Errorf("guard: the held snapshot: %w", err)
	}
	bl, _, err := backlog.Open(g.dir.HeldBacklog(), backlog.Options{SegmentSize: f.cfg.SegmentSize, Fsync: f.cfg.Fsync, ValidPrefix: store.ValidStreamPrefix})
	if err != nil {
		return err
	}
	h.bl = bl
	g.held = &h
	f.log.Error("guard: still holding a new history from before the restart", "current_keys", h.CurKeys, "new_keys", h.NewKeys,
		"new_replid", h.Snapshot.ReplID, "held_since", h.Since, "held_end", bl.End())
	return nil
}

// heldPosition is where the held history continues, ok false when none
// (the follow goroutine only).
func (g *guard) heldPosition() (replid string, next int64, ok bool) {
	h := g.held
	if h == nil {
		return "", 0, false
	}
	return h.Snapshot.ReplID, h.bl.End() + 1, true
}

// ackOffset is the offset the proxy acknowledges upstream: what it has
// stored of the history it follows (--ack-policy self), or what at least
// N online replicas have acknowledged, never more than that (replicas:N),
// so WAIT and min-replicas-to-write on the origin count replicas that
// have the data.
func (f *Follower) ackOffset() int64 {
	g := f.guard
	g.mu.Lock()
	h := g.held
	g.mu.Unlock()
	return f.ackFor(h)
}

// ackFor is ackOffset with the held history already read.
func (f *Follower) ackFor(h *heldHistory) int64 {
	if h != nil {
		if f.cfg.AckReplicas > 0 {
			return h.Snapshot.Offset // no replica has the held stream
		}
		return h.bl.End()
	}
	if f.cfg.AckReplicas > 0 {
		return min(f.store.Backlog.End(), f.down.NthAck(f.cfg.AckReplicas))
	}
	// What a SIGKILL would not lose: with an intake buffer, the files
	// trail what replicas were sent.
	return f.store.Backlog.Flushed()
}

// ReplicaAcked tells the ACK loop a replica ACKed (replicas:N only).
func (f *Follower) ReplicaAcked() {
	if f.cfg.AckReplicas == 0 {
		return
	}
	select {
	case f.ackKick <- struct{}{}:
	default:
	}
}

// appendHeld stores a chunk of the held history.
func (g *guard) appendHeld(h *heldHistory, chunk []byte, u *upstreamConn) error {
	f := g.f
	getack := false
	if err := scanAppend(&h.scanner, h.bl, chunk, func(_ int, c *psync.Command) { getack = getack || c.IsGetAck() }); err != nil {
		if errors.Is(err, errStreamInvalid) {
			f.log.Error("invalid replication stream in the held history; dropping it", "err", err)
			g.drop()
		}
		return err
	}
	f.stats.UpstreamStreamBytes.Add(int64(len(chunk)))
	if getack {
		return u.ack(f.ackFor(h))
	}
	return nil
}

// acceptRequest is an operator's accept of the history replid, the one
// held when it was asked; the answer goes on done.
type acceptRequest struct {
	replid string
	done   chan error
}

// errAccepting cuts the link so the follow goroutine serves an accept.
var errAccepting = errors.New("an operator accepts the held history")

// errStopped answers a request the follow goroutine will not serve.
var errStopped = errors.New("replproxy is stopping")

// AcceptHeld installs the history the guard holds (REPLPROXY GUARD ACCEPT).
// It is a request to the follow goroutine, which owns the held history and
// the stream scanner. A link streaming the held history is cut (the next
// one continues the accepted history with a partial resync); any other
// link is left to reach the follow goroutine's next wait, or the start of
// its streaming, where the request is served (a full sync the origin
// forked for is never cut for it). The request names the history held
// when it was asked: if another is held by the time it is served, it is
// refused, so an operator never accepts a history not seen.
func (f *Follower) AcceptHeld() error {
	f.guard.mu.Lock()
	h := f.guard.held
	f.guard.mu.Unlock()
	if h == nil { // no link is cut for nothing
		return vocab.ErrNothingHeld
	}
	if !f.following.Load() {
		return errNotFollowing
	}
	req := acceptRequest{replid: h.Snapshot.ReplID, done: make(chan error, 1)}
	select {
	case f.guard.accepts <- req:
	case <-f.stopped:
		return errStopped
	}
	f.mu.Lock()
	if f.cutLink != nil && f.link.State == vocab.LinkConnected {
		f.cutLink(errAccepting)
	}
	f.mu.Unlock()
	select {
	case err := <-req.done:
		return err
	case <-f.stopped:
		return errStopped
	}
}

// errNotFollowing answers an accept before the follow goroutine runs.
var errNotFollowing = errors.New("replproxy is not following its upstream yet; accept again once it runs")

// serveAccept answers an accept request, if one waits.
func (g *guard) serveAccept() bool {
	if req := g.pending; req != nil {
		g.pending = nil
		req.done <- g.acceptHeld(req.replid)
		return true
	}
	select {
	case req := <-g.accepts:
		req.done <- g.acceptHeld(req.replid)
		return true
	default:
		return false
	}
}

// acceptBeforeStreaming takes an accept asked while this link connected or
// received a full sync. One for the history held now ends the link before
// it streams (it is served between links); any other is answered at once
// (nothing held any more, or another history) and the link streams on.
func (g *guard) acceptBeforeStreaming() bool {
	select {
	case req := <-g.accepts:
		if h := g.held; h != nil && h.Snapshot.ReplID == req.replid {
			g.pending = &req
			return true
		}
		req.done <- g.acceptHeld(req.replid)
	default:
	}
	return false
}

// acceptHeld installs the held history as if it had just arrived: its
// snapshot, then its stream since, copied into the backlog. Replicas of
// the old history are disconnected by the reset and full-sync to it. The
// follow goroutine only, between links.
func (g *guard) acceptHeld(replid string) error {
	f := g.f
	h := g.held
	if h == nil {
		return vocab.ErrNothingHeld
	}
	if h.Snapshot.ReplID != replid {
		return fmt.Errorf("%w (now %s, asked %s): check REPLPROXY GUARD STATUS and accept again", vocab.ErrHeldChanged, h.Snapshot.ReplID, replid)
	}
	info := h.Snapshot
	if err := os.Rename(filepath.Join(g.dir.Held(), info.Name), filepath.Join(f.store.SnapDir, info.Name)); err != nil {
		return fmt.Errorf("guard: move the held snapshot back: %w", err)
	}
	f.maint.cancelRefresh("guard accepted a new history")
	installed, err := f.store.InstallFullSync(info)
	if !installed {
		return fmt.Errorf("guard: install: %w", err)
	}
	f.scanner.Reset()
	f.publishes = streamPublishes{}
	f.stats.UpstreamFullSyncs.Add(1)
	copied, cerr := g.copyHeld(h)
	g.set(nil)
	h.bl.Close()
	_ = os.RemoveAll(g.dir.Held())
	f.log.Warn("guard: the held history is accepted and installed; replicas full-sync to it",
		"replid", info.ReplID, "keys", h.NewKeys, "held_stream_bytes", copied)
	return errors.Join(err, cerr)
}

// copyHeld appends the held stream to the (just reset) backlog.
func (g *guard) copyHeld(h *heldHistory) (int64, error) {
	f := g.f
	cur, err := h.bl.NewCursor(h.Snapshot.Offset + 1)
	if err != nil {
		if errors.Is(err, backlog.ErrAhead) {
			return 0, nil
		}
		return 0, err
	}
	defer cur.Close()
	buf := make([]byte, readBuf)
	var total int64
	for {
		n, err := cur.Read(buf)
		if n > 0 {
			if aerr := scanAppend(&f.scanner, f.store.Backlog, buf[:n], nil); aerr != nil {
				return total, aerr
			}
			total += int64(n)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return total, err
		}
		if n == 0 {
			return total, nil
		}
	}
}
