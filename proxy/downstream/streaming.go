package downstream

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/replproxy/replproxy/proxy/request"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync/backlog"
)

// stream feeds the replica from its cursor and reads its ACKs until the link
// ends. Nothing but stream bytes at the right offsets is ever written here.
func (s *Replica) stream(ctx context.Context, cur *backlog.Cursor) error {
	cur.UseTail(s.tls) // TLS cannot use sendfile; plain sockets measured faster with it
	s.cur.Store(cur)
	defer s.cur.Store(nil)
	// The ACK reader ends when the connection closes, which every way out
	// of the loop below does first.
	var acks sync.WaitGroup
	defer acks.Wait()
	acks.Go(s.readAcks)
	var pk parker
	for {
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.d.cfg.ReplicaTimeout))
		var n int64
		var err error
		if s.delayed {
			n, err = s.copyDelayed(ctx, cur)
		} else {
			n, err = cur.CopyTo(s.out)
		}
		s.d.stats.SentStreamBytes.Add(n)
		if err == nil && !s.delayed {
			parked := false
			if fan := s.d.fanout; fan != nil && !s.tls {
				parked, err = fan.park(ctx, &pk, s.conn, cur, s.d.store.Backlog)
			}
			if parked && err == nil {
				continue // handed back: copy what the fan-out did not write
			}
			if err == nil {
				err = cur.Wait(ctx)
			}
		}
		if err != nil {
			switch {
			case errors.Is(err, backlog.ErrTrimmed):
				s.log.Warn("replica fell behind the backlog front; disconnecting", "offset", cur.Pos())
				s.Close(vocab.DownOffsetTrimmed)
			case errors.Is(err, backlog.ErrReset):
				s.Close(vocab.DownHistoryReset)
			case errors.Is(err, backlog.ErrClosed), ctx.Err() != nil:
				s.Close(vocab.DownShutdown)
			case isTimeout(err):
				s.Close(vocab.DownTimeout)
			default:
				s.Close(vocab.DownError)
			}
			return err
		}
	}
}

// delayedPoll: how often a caught-up delayed replica looks at the
// horizon again (it moves with time, not with appends).
const delayedPoll = 100 * time.Millisecond

// copyDelayed sends what the horizon allows, then waits for it to move.
func (s *Replica) copyDelayed(ctx context.Context, cur *backlog.Cursor) (int64, error) {
	n, err := cur.CopyUpTo(s.out, s.d.store.Horizon())
	if err != nil || n > 0 {
		return n, err
	}
	t := time.NewTimer(delayedPoll)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-t.C:
		return 0, nil
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// readAcks reads what a replica may send after PSYNC: REPLCONF ACK and bare
// newlines. A replica silent for ReplicaTimeout is dropped (not SYNC clients,
// which never ACK).
func (s *Replica) readAcks() {
	rd := request.NewReader(s.br)
	for {
		if !s.legacy {
			_ = s.conn.SetReadDeadline(time.Now().Add(s.d.cfg.ReplicaTimeout))
		}
		args, err := rd.Next()
		if err != nil {
			switch {
			case isTimeout(err):
				s.log.Warn("replica timed out: no ACK", "timeout", s.d.cfg.ReplicaTimeout.String())
				s.Close(vocab.DownTimeout)
			case s.sentRDB.Load() != 0 && !s.acked.Load() && !s.legacy && errors.Is(err, io.EOF):
				s.log.Warn("replica hung up after a full sync without acknowledging it; "+
					"its log says why (e.g. \"Can't handle RDB format version\": it is older than the upstream)",
					"rdb_version", s.sentRDB.Load())
				if s.ListeningPort > 0 {
					s.d.noteRefusal(s.replicaAddr(), int(s.sentRDB.Load()))
				}
				s.Close(vocab.DownClosedBeforeAck)
			case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
				s.Close(vocab.DownClosed)
			default:
				s.Close(vocab.DownError)
			}
			return
		}
		now := time.Now().UnixNano()
		if len(args) == 0 {
			s.ackTime.Store(now)
			continue
		}
		if !strings.EqualFold(string(args[0]), "replconf") || len(args) < 3 {
			s.log.Warn("unexpected command on a replica link; disconnecting", "command", vocab.Truncate(string(args[0]), 32))
			s.Close(vocab.DownProtocolError)
			return
		}
		if strings.EqualFold(string(args[1]), "ack") {
			off, err := strconv.ParseInt(string(args[2]), 10, 64)
			if err != nil {
				continue
			}
			for {
				old := s.ackOff.Load()
				if off <= old || s.ackOff.CompareAndSwap(old, off) {
					break
				}
			}
			s.ackTime.Store(now)
			s.acked.Store(true)
			s.d.up.ReplicaAcked()
			acked := s.ackOff.Load()
			end := s.d.store.Backlog.End()
			s.d.cfg.Observer.ObserveAck(max(end-acked, 0), s.d.store.Arrivals.LagSeconds(acked, time.Unix(0, now)))
		}
	}
}

// bufferedWriter feeds a TLS connection from files with one reused buffer
// per session: sendfile cannot encrypt, and io.Copy would allocate 32 KB
// per call. Writes pass straight through; nothing is held back.
type bufferedWriter struct {
	w   io.Writer
	buf []byte
}

// tlsCopyBuf: four full TLS records per write.
const tlsCopyBuf = 64 << 10

func (b *bufferedWriter) Write(p []byte) (int, error) { return b.w.Write(p) }

func (b *bufferedWriter) ReadFrom(r io.Reader) (int64, error) {
	if b.buf == nil {
		b.buf = make([]byte, tlsCopyBuf)
	}
	return io.CopyBuffer(struct{ io.Writer }{b.w}, r, b.buf)
}

// newBufferedWriter wraps a TLS connection for copies from files.
func newBufferedWriter(w io.Writer) io.Writer { return &bufferedWriter{w: w} }
