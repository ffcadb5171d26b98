package downstream

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync/backlog"
)

// Fanout writes each appended chunk straight from the follower's memory
// to the caught-up plaintext replicas, with one non-blocking write each,
// as a chained Redis writes to its replicas from one event loop. A replica
// goroutine with nothing left to copy parks here instead of waiting for
// the next append; a write that does not take the whole chunk (a full
// socket, an error), a gap or a history reset hands the replica back to
// its goroutine, which goes on from its cursor (sendfile from the files,
// blocking with a deadline). So caught-up replicas cost one write(2) per
// upstream read and no goroutine wake-up; slow ones cost the follower one
// refused write.
type Fanout struct {
	mu      sync.Mutex // serialises park and leave; deliver never takes it
	members atomic.Pointer[[]*fanMember]
	stats   *vocab.ReplicaCounters
}

// Member states: the follower may write only to a parked member, and
// claims it first, so its goroutine never writes at the same time.
const (
	memberParked int32 = iota
	memberWriting
	memberReleased
)

type fanMember struct {
	cur   *backlog.Cursor // its position is the next byte the replica needs
	rc    syscall.RawConn
	state atomic.Int32
	back  chan struct{} // closed when released
	pause bool          // released for a full socket or a busy follower: stay out handbackPause; read after back closes
}

func NewFanout(stats *vocab.ReplicaCounters) *Fanout {
	f := &Fanout{stats: stats}
	f.members.Store(&[]*fanMember{})
	return f
}

// release hands m back to its goroutine; the caller holds the claim (or
// m is parked and the caller is the follower).
func (f *Fanout) release(m *fanMember) {
	m.state.Store(memberReleased)
	close(m.back)
	f.stats.FanoutHandbacks.Add(1)
}

// claim takes m back from the fan-out for its own goroutine: true when it
// was still parked (nothing more will be written), false when the
// follower released it. It waits out a write in progress.
func (m *fanMember) claim() bool {
	for {
		if m.state.CompareAndSwap(memberParked, memberReleased) {
			return true
		}
		if m.state.Load() == memberReleased {
			return false
		}
		runtime.Gosched() // the follower is writing one chunk; it never blocks
	}
}

// handbackPause: a replica handed back for a full socket or a busy
// follower stays in its own copy loop this long before it parks again. A
// replica that cannot keep up (a saturated link, a full-speed relay) would
// otherwise bounce between the two on every read, costing a refused write
// and a wake-up each time.
const handbackPause = 100 * time.Millisecond

// parker is a replica session's side of the fan-out: it remembers when
// the replica may park again.
type parker struct {
	notBefore time.Time
	rc        syscall.RawConn // the socket's, fetched at the first park
}

// park waits while the fan-out feeds the replica. It returns false at
// once, without waiting, when the cursor is not at the log's end (more to
// copy), the connection is not a plain TCP socket, or its socket was full
// moments ago; otherwise it returns when the replica is handed back (its
// cursor moved past what was written), or ctx ends.
func (f *Fanout) park(ctx context.Context, pk *parker, conn net.Conn, cur *backlog.Cursor, log *backlog.Log) (bool, error) {
	if pk.rc == nil {
		tc, ok := conn.(*net.TCPConn)
		if !ok {
			return false, nil
		}
		var err error
		if pk.rc, err = tc.SyscallConn(); err != nil {
			return false, nil
		}
	}
	if time.Now().Before(pk.notBefore) {
		return false, nil
	}
	rc := pk.rc
	if v := log.View(); cur.Pos() != v.End+1 || v.Gen != cur.Gen() || v.Closed {
		return false, nil
	}
	m := &fanMember{cur: cur, rc: rc, back: make(chan struct{})}
	f.add(m)
	// The follower appends, then loads the members; this adds, then looks
	// at the end again. One of the two sees the other (atomics are
	// sequentially consistent), so no append falls between them.
	if v := log.View(); cur.Pos() != v.End+1 || v.Gen != cur.Gen() || v.Closed {
		m.claim()
		f.remove(m)
		return true, nil // not parked for long: copy what arrived
	}
	select {
	case <-m.back:
		f.remove(m)
		if m.pause {
			pk.notBefore = time.Now().Add(handbackPause)
		}
		return true, nil
	case <-ctx.Done():
		m.claim()
		f.remove(m)
		return false, ctx.Err()
	}
}

func (f *Fanout) add(m *fanMember) {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := *f.members.Load()
	next := make([]*fanMember, len(old), len(old)+1)
	copy(next, old)
	next = append(next, m)
	f.members.Store(&next)
}

func (f *Fanout) remove(m *fanMember) {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := *f.members.Load()
	next := make([]*fanMember, 0, len(old))
	for _, o := range old {
		if o != m {
			next = append(next, o)
		}
	}
	f.members.Store(&next)
}

// Deliver writes chunk, which holds offsets [start, start+len(chunk)), to
// every parked replica; called by the follower right after appending it.
// busy says the follower's read filled its buffer, so more is waiting
// upstream: the follower is the bottleneck, and the writes are handed to
// the replicas' own goroutines, which copy in parallel on every core
// (after handbackPause they may park again).
func (f *Fanout) Deliver(start int64, chunk []byte, busy bool) {
	members := *f.members.Load()
	end := start + int64(len(chunk)) // one past the last byte
	for _, m := range members {
		if !m.state.CompareAndSwap(memberParked, memberWriting) {
			continue // handed back or being taken back
		}
		if busy {
			m.pause = true
			f.release(m)
			continue
		}
		next := m.cur.Pos()
		switch {
		case next >= end: // joined after this chunk's bytes were copied
			m.state.Store(memberParked)
			continue
		case next < start: // an append it did not get: its goroutine copies from the files
			f.release(m)
			continue
		}
		b := chunk[next-start:]
		n := writeNonBlocking(m.rc, b)
		if n > 0 {
			m.cur.Skip(int64(n))
			f.stats.SentStreamBytes.Add(int64(n))
			f.stats.FanoutBytes.Add(int64(n))
		}
		if n < len(b) {
			m.pause = true
			f.release(m) // socket full or broken: its goroutine takes over, with its deadline
			continue
		}
		m.state.Store(memberParked)
	}
}

// ReleaseAll hands every parked replica back (a history reset: their
// cursors fail and they end).
func (f *Fanout) ReleaseAll() {
	for _, m := range *f.members.Load() {
		if m.state.CompareAndSwap(memberParked, memberWriting) {
			f.release(m)
		}
	}
}

// writeNonBlocking writes what the socket takes now, never waiting.
func writeNonBlocking(rc syscall.RawConn, b []byte) int {
	n := 0
	err := rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			w, err := syscall.Write(int(fd), b[n:])
			if w > 0 {
				n += w
			}
			if err != nil || w <= 0 {
				if errors.Is(err, syscall.EINTR) {
					continue
				}
				break
			}
		}
		return true // done, whatever happened: the socket is O_NONBLOCK
	})
	_ = err // a closed connection: n stays as written; its goroutine sees the error
	return n
}

// Parked is the number of replicas the fan-out feeds now.
func (f *Fanout) Parked() int { return len(*f.members.Load()) }
