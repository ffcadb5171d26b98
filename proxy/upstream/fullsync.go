package upstream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/replproxy/replproxy/proxy/store"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// fullSyncer is the follower's part that receives full syncs (the main
// link's and refreshes') and installs them, behind the fork gate and the
// data dir's room.
type fullSyncer struct {
	f *Follower
}

// receiveFullSync reads the payload into a new snapshot, verifies and
// installs it, and starts a new backlog after its offset. Until then the old
// history keeps being served.
// It returns the snapshot and how many payload bytes arrived (also on error).
func (s *fullSyncer) receiveFullSync(u *upstreamConn, reply psync.PsyncReply) (*snapshot.Info, int64, error) {
	f := s.f
	f.setLink(vocab.LinkSync)
	start := time.Now()
	defer func() { f.cfg.Observer.ObserveUpstreamFullSync(time.Since(start).Seconds()) }()
	rcv, n, err := s.receivePayload(u, reply, func(n int64) {
		f.mu.Lock()
		f.link.SyncRead = n
		f.mu.Unlock()
	}, func(h psync.PayloadHeader) {
		f.mu.Lock()
		f.link.SyncTotal, f.link.SyncRead = max(h.Length, 0), 0
		f.mu.Unlock()
	})
	if err != nil {
		return nil, n, err
	}
	defer rcv.Abort()
	if u.eofForm {
		// The origin sends no stream byte until this ACK (replication.c:
		// updateSlavesWaitingBgsave() sets repl_start_cmd_stream_on_ack).
		if err := u.ack(reply.Offset); err != nil {
			return nil, n, fmt.Errorf("ack after payload: %w", err)
		}
	}
	info, err := s.finishSnapshot(rcv, reply)
	if err != nil {
		return nil, n, err // logged with its class by fullSyncFailed
	}
	info.Source = vocab.SnapFromUpstream
	if hold, cur, nw := f.guard.shouldHold(info); hold {
		if err := f.guard.hold(info, cur, nw); err != nil {
			_ = snapshot.Remove(f.store.SnapDir, info)
			return nil, n, localError(err)
		}
		return info, n, nil
	}
	if err := s.installFullSync(info); err != nil {
		return nil, n, localError(err)
	}
	f.guard.drop() // a history with enough keys replaces a held one
	f.log.Info("snapshot installed", "replid", info.ReplID, "offset", info.Offset, "bytes", info.Size,
		"rdb_version", info.RDBVersion, "seconds", time.Since(start).Seconds())
	return info, n, nil
}

// receivePayload reads a payload header and the payload into a new
// receiver, for the main link and refreshes alike. A payload whose
// announced length cannot fit the data dir is refused at its header,
// before the origin sends the rest. Data-dir failures come back as local
// errors; the caller owns the receiver (Abort) on success.
func (s *fullSyncer) receivePayload(u *upstreamConn, reply psync.PsyncReply, progress func(int64),
	onHeader func(psync.PayloadHeader)) (*snapshot.Receiver, int64, error) {
	f := s.f
	hdr, err := psync.ReadPayloadHeader(u.br, nil)
	if err != nil {
		return nil, 0, err
	}
	u.eofForm = hdr.EOFForm()
	if onHeader != nil {
		onHeader(hdr)
	}
	if hdr.Length >= 0 {
		if reason := s.diskCheck(hdr.Length, false); reason != "" {
			return nil, hdr.Length, localError(errors.New(reason))
		}
	}
	rcv, err := snapshot.NewReceiver(f.store.SnapDir)
	if err != nil {
		return nil, 0, localError(err)
	}
	n, err := psync.CopyPayload(localWriter{rcv}, u.br, hdr, progress)
	f.stats.UpstreamRDBBytes.Add(n)
	if err != nil {
		rcv.Abort()
		return nil, max(n, hdr.Length), fmt.Errorf("receive payload after %d bytes: %w", n, err)
	}
	return rcv, n, nil
}

// fullSyncFailed records a failed fork-costing sync and says when the next
// may be asked for.
func (s *fullSyncer) fullSyncFailed(purpose vocab.SyncPurpose, err error, got int64) {
	f := s.f
	class := f.gate.failed(purpose, err, got)
	countFullSync(f.stats, purpose, class)
	gs := f.gate.status()
	attrs := []any{"purpose", purpose, "class", class, "failures_in_a_row", gs.InARow, "err", err}
	if !gs.NextAt.IsZero() {
		attrs = append(attrs, "next_attempt_in", time.Until(gs.NextAt).Round(time.Second).String())
	}
	if class == vocab.FailPayload && gs.InARow >= 2 {
		f.log.Error("the upstream keeps sending RDBs that fail verification; each attempt costs it a fork", attrs...)
	} else {
		f.log.Warn("full sync from the upstream failed; the origin forked for nothing", attrs...)
	}
	if perr := f.gate.persistError(); perr != nil {
		f.log.Warn("full-sync backoff state not persisted; a restart forgets it", "err", perr)
	}
}

func (s *fullSyncer) fullSyncSucceeded(purpose vocab.SyncPurpose, info *snapshot.Info) {
	f := s.f
	f.gate.succeeded(purpose, info.Size)
	countFullSync(f.stats, purpose, "")
}

// awaitFullSyncTurn holds the main link back while a full sync, which the
// next connection will most likely need, must wait: the cost backoff, or a
// local cause (a full data dir) that retrying cannot fix. It reports false
// when ctx ends.
func (s *fullSyncer) awaitFullSyncTurn(ctx context.Context) bool {
	f := s.f
	for {
		noHistory := f.store.Position().Hist.Empty()
		d := f.gate.wait(true, noHistory)
		if d == 0 {
			gs := f.gate.status()
			if !noHistory && !gs.Pending { // a partial resync is expected: no fork
				return true
			}
			if s.roomForSnapshot(f.gate.expected()) {
				return true
			}
			d = diskRecheck
		}
		select {
		case <-ctx.Done():
			return false
		case <-f.movedCh:
			select { // leave the move for syncOnce to take
			case f.movedCh <- struct{}{}:
			default:
			}
			return true
		case req := <-f.guard.accepts:
			req.done <- f.guard.acceptHeld(req.replid)
		case <-time.After(d):
		}
	}
}

// diskRecheck is how often a held-back full sync looks at the data dir again.
const diskRecheck = 2 * time.Second

// roomForSnapshot reports whether a snapshot of about size bytes fits the
// data dir now; a change of verdict is logged once.
func (s *fullSyncer) roomForSnapshot(size int64) bool {
	f := s.f
	reason := s.diskCheck(size, f.gate.status().LastClass == string(vocab.FailLocal))
	if f.gate.setBlocked(reason) {
		if reason != "" {
			f.log.Error("full sync from the upstream held back until the data dir has room; not asking the origin to fork",
				"reason", reason, "data_dir", f.cfg.DataDir)
		} else {
			f.log.Info("data dir has room again; full syncs from the upstream may proceed", "data_dir", f.cfg.DataDir)
		}
	}
	return reason == ""
}

// installFullSync makes info the snapshot of a new history.
func (s *fullSyncer) installFullSync(info *snapshot.Info) error {
	f := s.f
	f.maint.cancelRefresh("new history")
	installed, err := f.store.InstallFullSync(info)
	if installed {
		f.scanner.Reset() // the new backlog starts at a command boundary
		f.publishes = streamPublishes{}
		f.stats.UpstreamFullSyncs.Add(1)
	}
	return err
}

// refreshSourceReady reports whether some configured source may be asked
// now: replicas always may; the upstream only outside the cost backoff.
func (s *fullSyncer) refreshSourceReady() bool {
	f := s.f
	for _, src := range f.cfg.RefreshFrom {
		if src == SourceReplicas || f.gate.wait(false, false) == 0 {
			return true
		}
	}
	return false
}

// receiveRefresh receives and installs a refreshed snapshot of the current
// history from source; it returns how many payload bytes arrived (also on
// error).
func (s *fullSyncer) receiveRefresh(ctx context.Context, u *upstreamConn, reply psync.PsyncReply, source string) (*snapshot.Info, int64, error) {
	f := s.f
	rcv, got, err := s.receivePayload(u, reply, nil, nil)
	if err != nil {
		return nil, got, fmt.Errorf("refresh payload: %w", err)
	}
	defer rcv.Abort()
	u.conn.Close()
	// The main link may not have reached the snapshot's offset yet.
	deadline := time.Now().Add(f.cfg.ReplTimeout)
	for f.store.Backlog.End() < reply.Offset && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	pos := f.store.Position()
	if reply.ReplID != pos.Hist.ReplID || reply.Offset+1 < pos.First || reply.Offset > pos.End {
		return nil, got, fmt.Errorf("%w: snapshot %s at %d, history %s holding [%d, %d]",
			store.ErrRefreshRejected, reply.ReplID, reply.Offset, pos.Hist.ReplID, pos.First, pos.End)
	}
	info, err := s.finishSnapshot(rcv, reply)
	if err != nil {
		return nil, got, err
	}
	info.Source = source // not shared until installed
	if err := f.store.InstallRefresh(info); err != nil {
		if errors.Is(err, store.ErrRefreshRejected) {
			return nil, got, err
		}
		return nil, got, localError(err)
	}
	return info, got, nil
}

// finishSnapshot verifies and installs a received payload as the snapshot
// file of reply's (replid, offset).
func (s *fullSyncer) finishSnapshot(rcv *snapshot.Receiver, reply psync.PsyncReply) (*snapshot.Info, error) {
	f := s.f
	info, err := rcv.Finish(reply.ReplID, reply.Offset)
	var ve *snapshot.VerifyError
	if err != nil && !errors.As(err, &ve) {
		return nil, localError(err) // fsync, rename: the data dir's
	}
	if err == nil && rcv.KeyspaceError() != nil {
		f.log.Warn("snapshot keys not counted; INFO shows no keyspace for it", "snapshot", info.Name, "err", rcv.KeyspaceError())
	}
	return info, err
}
