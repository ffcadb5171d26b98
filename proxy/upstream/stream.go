package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/backlog"
)

// The follower's streaming phase: reading the upstream's stream, scanning
// it for command boundaries, GETACK and PUBLISH, appending it to the
// backlog, and telling a hang-up while behind from any other.

// stream appends upstream bytes to the backlog until the link fails, ACKing
// once a second and at once on REPLCONF GETACK.
func (f *Follower) stream(ctx context.Context, u *upstreamConn) error {
	if f.guard.acceptBeforeStreaming() {
		return errAccepting
	}
	var acks sync.WaitGroup
	defer acks.Wait()
	done := make(chan struct{})
	defer close(done) // before the Wait: defers run last-in first-out
	acks.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		sent := int64(-1)
		for {
			select {
			case <-done:
				return
			case <-f.ackKick: // a replica ACKed (--ack-policy replicas:N): only an advance is news
				if off := f.ackOffset(); off > sent {
					if err := u.ack(off); err != nil {
						u.conn.Close()
						return
					}
					sent = off
				}
			case <-t.C:
				off := f.ackOffset()
				if err := u.ack(off); err != nil {
					u.conn.Close()
					return
				}
				sent = max(sent, off)
			}
		}
	})
	if err := u.ack(f.ackOffset()); err != nil {
		return err
	}
	buf := make([]byte, readBuf)
	// queued: the bytes of the latest run of full reads and the partial
	// read that ended it, all of which were waiting when read.
	var queued int64
	runEnded := false
	var meter intakeMeter
	for {
		start := time.Now()
		n, rerr := u.br.Read(buf)
		if n > 0 {
			// A read that fills the buffer leaves more waiting upstream.
			busy := n == len(buf)
			meter.add(start, n, busy, f.store.Backlog.End())
			if err := f.appendStream(buf[:n], busy, u); err != nil {
				return err
			}
			if runEnded {
				queued = 0
			}
			queued += int64(n)
			runEnded = !busy
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !cutByUpstream(rerr) {
				return rerr
			}
			// The upstream hung up: the next full sync, if one is needed,
			// first checks that the origin is not in a burst it would cut
			// the same way (awaitCalm).
			f.lastCut = meter.cut(time.Now(), f.store.Backlog.End())
			if queued >= behindAtClose && time.Since(start) < BehindEOFWait {
				return &closedBehindError{err: rerr, unread: queued}
			}
			return rerr
		}
	}
}

// A hang-up read at once after at least behindAtClose of stream read in
// full reads came while replproxy was reading behind the origin; one that
// came after a wait, once replproxy had caught up, did not.
const (
	behindAtClose = 2 << 20
	BehindEOFWait = time.Second
)

// cutByUpstream: the upstream closed the connection. A server closing a
// socket with input it has not read (the proxy's ACKs) sends a reset
// instead of a FIN.
func cutByUpstream(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// closedBehindError: the upstream hung up while replproxy was behind it.
// A stock origin does that when its replica output buffer for replproxy
// passes client-output-buffer-limit: replproxy's appends (its disk) were
// slower than the origin's writes.
type closedBehindError struct {
	err    error
	unread int64 // stream still queued for replproxy when the link ended, at least
}

func (e *closedBehindError) Error() string {
	return fmt.Sprintf("%v after reading %d queued bytes: replproxy was behind the upstream", e.err, e.unread)
}

func (e *closedBehindError) Unwrap() error { return e.err }

// appendStream scans a chunk for command boundaries and GETACK, appends it
// to the backlog, hands it to the fan-out and answers GETACK with the
// offset just written. busy says more is waiting upstream (the fan-out
// then leaves the copying to the replicas' own loops).
func (f *Follower) appendStream(chunk []byte, busy bool, u *upstreamConn) error {
	if h := f.guard.held; h != nil { // the follow goroutine's own: no lock to read it
		return f.guard.appendHeld(h, chunk, u)
	}
	getack := false
	watch := f.pubsub.Active()
	var published [][2]int
	if err := scanAppend(&f.scanner, f.store.Backlog, chunk, func(end int, c *psync.Command) {
		getack = getack || c.IsGetAck()
		if watch && c.Argc == 3 && c.Name() == "publish" {
			published = append(published, [2]int{end, int(c.Size)})
		}
	}); err != nil {
		if errors.Is(err, errStreamInvalid) {
			// A stock master never sends this. The bytes already relayed may
			// be part of a corrupt command, so the history cannot be trusted.
			f.discardHistory(err)
		} else {
			f.publishes = streamPublishes{} // a PUBLISH cut here is not delivered
		}
		return err
	}
	end := f.store.Backlog.End()
	if f.cfg.Deliver != nil {
		f.cfg.Deliver(end-int64(len(chunk))+1, chunk, busy)
	}
	if watch {
		f.publishes.scan(chunk, published, &f.scanner, func(channel, msg []byte) { f.pubsub.Publish(channel, msg) })
	} else {
		f.publishes = streamPublishes{}
	}
	f.stats.UpstreamStreamBytes.Add(int64(len(chunk)))
	f.store.Arrivals.Record(end, time.Now())
	f.maint.maybeKick(end)
	if getack {
		return u.ack(f.ackFor(nil))
	}
	return nil
}

// discardHistory forgets the current history after stream corruption; the
// next connection takes a full resync.
func (f *Follower) discardHistory(cause error) {
	f.log.Error("invalid replication stream from upstream; discarding history", "err", cause)
	f.scanner.Reset()
	f.publishes = streamPublishes{}
	f.maint.cancelRefresh("history discarded")
	f.store.Discard()
	f.down.CloseReplicas(vocab.DownHistoryReset)
}

// errBacklogWrite: the backlog could not store received bytes (disk full,
// I/O error). The link is dropped and resumes after what was stored.
var errBacklogWrite = errors.New("append to backlog")

// errStreamInvalid: the upstream sent bytes that are not a replication
// stream (a stock master never does).
var errStreamInvalid = errors.New("invalid replication stream")

// scanAppend appends chunk to bl, marking the last command boundary in it,
// and advances *sc over exactly what reached the backlog (on a partial
// write, a full disk, the next PSYNC resumes after it); seen sees each
// command that ends in chunk. A chunk that does not parse is not written
// (errStreamInvalid); a failed append is errBacklogWrite.
func scanAppend(sc *psync.Scanner, bl *backlog.Log, chunk []byte, seen func(end int, c *psync.Command)) error {
	next := *sc // scan a copy: it is committed only with the bytes
	boundary := -1
	if err := next.Scan(chunk, func(end int, c *psync.Command) {
		boundary = end
		if seen != nil {
			seen(end, c)
		}
	}); err != nil {
		return fmt.Errorf("%w: %w", errStreamInvalid, err)
	}
	if n, err := bl.Append(chunk, boundary); err != nil {
		_ = sc.Scan(chunk[:n], nil)
		return fmt.Errorf("%w: %w", errBacklogWrite, err)
	}
	*sc = next
	return nil
}
