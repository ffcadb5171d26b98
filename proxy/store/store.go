package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/atomicfile"

	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/backlog"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// Store owns the data dir: its lock, the replication history, the snapshot,
// the backlog and the state file. It is the only writer of persistent
// state. Writers (the follower and its refreshes) take wmu, and persist
// while holding it; readers never take it: they load the published value,
// which is replaced, never changed, so INFO, metrics and PSYNC decisions
// never wait for an fsync.
type Store struct {
	log      *slog.Logger
	dir      string
	SnapDir  string
	lock     *os.File
	Backlog  *backlog.Log
	Arrivals *ArrivalIndex // when stream offsets arrived, for lag in seconds
	delay    time.Duration // --delay: delayed replicas see the data this old
	// retain decides, at a refresh, which older snapshot delayed replicas
	// keep (nil without --delay: the old one is removed) and what to drop.
	retain     func(old, retained, fresh *snapshot.Info) (keep *snapshot.Info, drop []*snapshot.Info)
	Keyspace   KeyspaceStats
	afterReset func() // Options.AfterReset
	// snapOffset mirrors the snapshot's offset for the append path's
	// budget check.
	SnapOffset atomic.Int64

	versions sync.Map // snapshot name -> the redis-ver it records (UpstreamVersion)

	wmu sync.Mutex
	cur atomic.Pointer[Published]
}

// Published is one version of the history and its snapshot.
type Published struct {
	Hist psync.History
	Snap *snapshot.Info
	// retained is an older snapshot of the same history kept for delayed
	// replicas (--delay): the newest one at least the delay old. Memory
	// only: a restart removes it with the other stray files.
	Retained *snapshot.Info
	Gen      uint64        // the backlog generation this history is for
	Next     chan struct{} // closed when a newer version is published
}

// Position is a consistent view of history, backlog range and snapshot.
type Position struct {
	Hist  psync.History
	First int64
	End   int64
	Snap  *snapshot.Info
	Gen   uint64 // backlog generation: cursors opened from this view check it
	// retained: see published.retained.
	Retained *snapshot.Info
}

// Options are what the store needs of the configuration.
type Options struct {
	// Delay: --delay, the age of the data delayed replicas see (0: none).
	Delay time.Duration
	// AfterReset runs after the backlog restarts for a new history (the
	// fan-out hands its parked replicas back); nil: nothing.
	AfterReset  func()
	DataDir     string
	SegmentSize int64
	Fsync       backlog.FsyncPolicy
	SyncFile    func(*os.File) error // test hook for the backlog's fsyncs
	TailSize    int64                // in-memory tail of the backlog; 0: none
	WriteBehind int64                // intake buffer: how far the backlog's files may trail its end; 0: none
}

// Open locks the data dir, opens the backlog and recovers the state
// that goes with it.
func Open(opts Options, log *slog.Logger) (*Store, error) {
	s := &Store{log: log, dir: opts.DataDir, SnapDir: Layout{Dir: opts.DataDir}.snapshots(), Arrivals: newArrivalIndex(), delay: opts.Delay, afterReset: opts.AfterReset}
	if opts.Delay > 0 {
		s.retain = s.retainForDelay
	}
	if err := atomicfile.MkdirAll(s.dir, 0o755, opts.SyncFile); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	lf, err := os.OpenFile(Layout{s.dir}.lock(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("data dir %s is in use by another replproxy: %w", s.dir, err)
	}
	s.lock = lf
	bl, rep, err := backlog.Open(Layout{s.dir}.backlog(), backlog.Options{
		SegmentSize: opts.SegmentSize, Fsync: opts.Fsync, ValidPrefix: ValidStreamPrefix, SyncFile: opts.SyncFile, TailSize: opts.TailSize, WriteBehind: opts.WriteBehind,
		OnSyncError: func(err error) {
			log.Error("backlog fsync failed; bytes since the last fsync may not survive a power loss", "err", err)
		},
	})
	if err != nil {
		lf.Close()
		return nil, err
	}
	s.Backlog = bl
	if rep.TruncatedBytes > 0 || rep.DroppedBytes > 0 {
		log.Warn("backlog repaired", "truncated_bytes", rep.TruncatedBytes, "dropped_bytes", rep.DroppedBytes)
	}
	if err := s.recover(); err != nil {
		bl.Close()
		lf.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) statePath() string { return Layout{s.dir}.state() }

// inconsistency is the data-dir rule, in one place: the state, the
// backlog it is tagged with and the snapshot must describe one history,
// with every byte after the snapshot held. It returns why not, "" if so.
func inconsistency(st persisted, tag string, first, end int64, snapDir string) string {
	switch {
	case st.History.Empty():
		return "no history"
	case st.Snapshot == nil:
		return "no snapshot"
	case st.BacklogTag == "" || st.BacklogTag != tag:
		return "backlog belongs to another history"
	case first == 0 || end < st.Snapshot.Offset:
		return fmt.Sprintf("backlog [%d, %d] does not reach snapshot offset %d", first, end, st.Snapshot.Offset)
	}
	// A backlog starting after the snapshot is a lapsed snapshot (lazy
	// refresh): the history stands; a full sync refreshes it first.
	f, err := snapshot.Open(snapDir, st.Snapshot)
	if err != nil {
		return err.Error()
	}
	f.Close()
	return ""
}

// recover publishes the stored history if it is consistent; anything else
// is discarded, which leads to a full resync rather than serving bytes of
// the wrong history.
func (s *Store) recover() error {
	st, err := loadState(s.statePath())
	if err != nil {
		return err
	}
	v := s.Backlog.View()
	keep := ""
	if reason := inconsistency(st, v.Tag, v.Start, v.End, s.SnapDir); reason == "" {
		keep = st.Snapshot.Name
		s.publishLocked(st.History, st.Snapshot)
		s.Arrivals.Record(v.End, time.Now()) // recovered bytes arrived before now; when is not kept
		s.log.Info("recovered state", "replid", st.History.ReplID, "replid2", st.History.ReplID2,
			"backlog_first", v.Start, "offset", v.End, "snapshot_offset", st.Snapshot.Offset)
	} else {
		s.publishLocked(psync.History{}, nil)
		if !st.History.Empty() || v.Start != 0 {
			s.log.Warn("discarding stored history; a full resync follows", "reason", reason)
		}
	}
	removed, err := snapshot.Cleanup(s.SnapDir, keep)
	for _, name := range removed {
		s.log.Info("removed stale snapshot file", "file", name)
	}
	return err
}

// publishLocked replaces the published version; called with wmu held (or
// before the store is shared).
func (s *Store) publishLocked(hist psync.History, snap *snapshot.Info) {
	s.publishRetainedLocked(hist, snap, nil)
}

func (s *Store) publishRetainedLocked(hist psync.History, snap, retained *snapshot.Info) {
	p := &Published{Hist: hist, Snap: snap, Retained: retained, Gen: s.Backlog.View().Gen, Next: make(chan struct{})}
	if snap != nil {
		s.SnapOffset.Store(snap.Offset)
	} else {
		s.SnapOffset.Store(0)
	}
	if old := s.cur.Swap(p); old != nil {
		close(old.Next)
	}
}

// Published returns the current version: a waiter for a newer one selects
// on its next channel.
func (s *Store) Published() *Published { return s.cur.Load() }

// Position is what a reader may act on. While a reset is under way (the
// backlog of a new history exists, its history is not yet published) it
// offers no history at all, so no replica continues into the wrong one.
func (s *Store) Position() Position {
	p := s.cur.Load()
	v := s.Backlog.View()
	if v.Gen != p.Gen {
		return Position{First: v.Start, End: v.End, Gen: v.Gen}
	}
	return Position{Hist: p.Hist, First: v.Start, End: v.End, Snap: p.Snap, Gen: v.Gen, Retained: p.Retained}
}

// persistLocked writes the state file; called with wmu held.
func (s *Store) persistLocked() error {
	p := s.cur.Load()
	return saveState(s.statePath(), persisted{History: p.Hist, Snapshot: p.Snap, BacklogTag: s.Backlog.Tag()})
}

// InstallFullSync makes info the snapshot of a new history: the backlog
// restarts after its offset. Replicas of the old history end on their own
// (the reset fails their cursors); those waiting for a snapshot get this.
// installed reports that the new history is in force, even when persisting
// it then failed (err).
func (s *Store) InstallFullSync(info *snapshot.Info) (installed bool, err error) {
	s.wmu.Lock()
	old, oldRetained := s.cur.Load().Snap, s.cur.Load().Retained
	if err := s.Backlog.Reset(info.Offset+1, snapshot.FileName(info.ReplID, info.Offset)); err != nil {
		s.wmu.Unlock()
		_ = snapshot.Remove(s.SnapDir, info)
		return false, err
	}
	s.Arrivals.reset()
	if s.afterReset != nil {
		s.afterReset()
	}
	s.publishLocked(psync.Fresh(info.ReplID), info)
	err = s.persistLocked()
	s.wmu.Unlock()
	s.removeOld(old, info)
	if oldRetained != nil {
		s.removeOld(oldRetained, info) // of the old history
	}
	return true, err
}

// flushWait bounds how long a refresh waits for the backlog's files to
// reach its snapshot (a burst in the intake buffer; a failing disk).
const flushWait = time.Minute

// ErrRefreshRejected: the refreshed snapshot does not fit the history.
var ErrRefreshRejected = errors.New("refreshed snapshot does not fit the current history")

// InstallRefresh makes info the served snapshot of the current history,
// if it still fits it.
func (s *Store) InstallRefresh(info *snapshot.Info) error {
	// The state is about to say the files hold every byte after the
	// snapshot: with an intake buffer they may trail its offset, and a
	// restart would then find the data dir inconsistent.
	ctx, cancel := context.WithTimeout(context.Background(), flushWait)
	err := s.Backlog.WaitFlushed(ctx, info.Offset)
	cancel()
	if err != nil {
		_ = snapshot.Remove(s.SnapDir, info)
		return fmt.Errorf("%w: the backlog's files do not reach its offset %d: %w", ErrRefreshRejected, info.Offset, err)
	}
	s.wmu.Lock()
	cur := s.cur.Load()
	first, end := s.Backlog.Range()
	if cur.Hist.ReplID != info.ReplID || info.Offset+1 < first || info.Offset > end || cur.Gen != s.Backlog.View().Gen {
		s.wmu.Unlock()
		_ = snapshot.Remove(s.SnapDir, info)
		return ErrRefreshRejected
	}
	retained := cur.Retained
	var drop []*snapshot.Info
	if s.retain != nil {
		var keep *snapshot.Info
		keep, drop = s.retain(cur.Snap, cur.Retained, info)
		retained = keep
	} else if cur.Snap != nil {
		drop = []*snapshot.Info{cur.Snap}
	}
	s.publishRetainedLocked(cur.Hist, info, retained)
	err = s.persistLocked()
	s.wmu.Unlock()
	for _, d := range drop {
		s.removeOld(d, info)
	}
	return err
}

func (s *Store) removeOld(old, now *snapshot.Info) {
	if old != nil && old.Name != now.Name {
		if err := snapshot.Remove(s.SnapDir, old); err != nil {
			s.log.Warn("remove old snapshot", "err", err)
		}
	}
}

// ShiftHistory takes the upstream's new ID after +CONTINUE <newid>: the
// old one becomes replid2, valid up to the current end. It reports the
// old ID and whether anything changed.
func (s *Store) ShiftHistory(newID string) (string, bool) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur := s.cur.Load()
	if newID == "" || newID == cur.Hist.ReplID {
		return "", false
	}
	s.publishRetainedLocked(cur.Hist.Shift(newID, s.Backlog.End()), cur.Snap, cur.Retained)
	if err := s.persistLocked(); err != nil {
		// In force in memory; a restart before the next persist resumes with the old ID, which the upstream still continues.
		s.log.Error("persist state after the replication ID change failed", "err", err)
	}
	return cur.Hist.ReplID, true
}

// Discard forgets the history (after stream corruption): the next
// connection takes a full resync.
func (s *Store) Discard() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.publishLocked(psync.History{}, nil)
	if err := saveState(s.statePath(), persisted{}); err != nil {
		s.log.Error("persist state failed", "err", err)
	}
}

// Close persists the state, closes the backlog and releases the lock.
func (s *Store) Close() error {
	s.wmu.Lock()
	var err error
	if !s.cur.Load().Hist.Empty() {
		err = s.persistLocked()
	}
	s.wmu.Unlock()
	if cerr := s.Backlog.Close(); err == nil {
		err = cerr
	}
	s.lock.Close()
	return err
}
