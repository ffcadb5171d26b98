package backlog

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Write-behind (Options.WriteBehind): Append takes the bytes into the
// in-memory tail, publishes them to readers and returns; a flusher
// goroutine writes them to the segment files in order. The files then
// trail the log's end by at most the intake limit, and readers take what
// the files do not hold yet from the tail, which keeps every block with
// an unwritten byte. A burst is taken at memory speed while the disk
// catches up; what the files cost per byte (new page-cache pages) is paid
// off the intake's path, on another core.
//
// Rolls are decided by Append, which sees the command boundaries, and
// carried out by the flusher when it reaches them: every segment still
// starts at a command.
//
// A failed write (a full disk) is retried by the flusher once a second;
// meanwhile Append refuses bytes with the error, so the upstream link
// drops and resumes after what the log holds. A SIGKILL loses what the
// files did not get: the log's end after a restart can be behind what
// readers were sent (Flushed says how far the files reach).

// writeBehind is the flusher's state. Fields marked "mu" are the log's,
// guarded by its mutex.
type writeBehind struct {
	limit int64
	// fmu is held by the flusher for one batch; Reset and Close take it
	// to wait out a write in flight.
	fmu      sync.Mutex
	kick     chan struct{} // buffered, 1
	stop     chan struct{}
	done     chan struct{}
	progress atomic.Pointer[chan struct{}] // closed and replaced at every flush (or failure)

	drop     dropBehind // flusher only (under fmu)
	rollAt   []int64    // mu: offsets where the next segments start, ascending
	segStart int64      // mu: first offset of the newest segment as Append sees it
	err      error      // mu: the last write error, until a write succeeds
}

// flushBatch bounds one write to the files, so Reset and Close wait out
// little and readers see the files advance smoothly.
const flushBatch = 4 << 20

// flushRetry is how long the flusher waits before retrying a failed write.
const flushRetry = time.Second

func newWriteBehind(limit int64) *writeBehind {
	wb := &writeBehind{limit: limit, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	ch := make(chan struct{})
	wb.progress.Store(&ch)
	return wb
}

// advanced wakes Appends waiting for room.
func (wb *writeBehind) advanced() {
	ch := make(chan struct{})
	close(*wb.progress.Swap(&ch))
}

// appendBehind is Append with write-behind: the bytes go to the tail and
// are visible at once; it waits only while the files trail by the limit.
func (l *Log) appendBehind(p []byte, boundary int) (int, error) {
	wb := l.wb
	for {
		ch := wb.progress.Load() // before the check: a flush after it closes ch
		l.mu.Lock()
		switch {
		case l.closed || l.closing:
			l.mu.Unlock()
			return 0, ErrClosed
		case l.active == nil:
			l.mu.Unlock()
			return 0, ErrEmpty
		case wb.err != nil:
			err := wb.err
			l.mu.Unlock()
			return 0, err
		}
		if waiting := l.end - l.flushed; waiting == 0 || waiting+int64(len(p)) <= wb.limit {
			break
		}
		l.mu.Unlock()
		<-*ch
	}
	defer l.mu.Unlock()
	start := l.end
	if n, err, ok := l.appendInline(p, boundary); ok {
		return n, err
	}
	if boundary > 0 {
		// As appendLocked rolls: after a boundary that fills the segment.
		if next := start + int64(boundary) + 1; next-wb.segStart >= l.opts.SegmentSize {
			wb.rollAt = append(wb.rollAt, next)
			wb.segStart = next
		}
	}
	l.end += int64(len(p))
	l.written += int64(len(p))
	l.tail.append(l.gen, start+1, p, l.flushed+1)
	l.publishLocked()
	l.wakeLocked()
	select {
	case wb.kick <- struct{}{}:
	default:
	}
	return len(p), nil
}

// inlineMax: a read this small is steady-state traffic, not a burst; with
// nothing waiting it is written at once, as without write-behind, which
// costs one write(2) instead of a hand-over to the flusher and back.
const inlineMax = 64 << 10

// appendInline writes p through when nothing waits for the flusher and p
// is small; ok is false when it did not. Called with mu held.
func (l *Log) appendInline(p []byte, boundary int) (n int, err error, ok bool) {
	wb := l.wb
	if len(p) > inlineMax || l.flushed != l.end || len(wb.rollAt) > 0 || !wb.fmu.TryLock() {
		return 0, nil, false
	}
	defer wb.fmu.Unlock()
	n, err = l.appendThroughLocked(p, boundary)
	wb.segStart = l.segs[len(l.segs)-1].base // it may have rolled
	return n, err, true
}

// flushLoop is the flusher: it writes the tail's unwritten bytes to the
// files whenever Append kicks it, and drains them all when stopped.
func (l *Log) flushLoop() {
	wb := l.wb
	defer close(wb.done)
	var retry <-chan time.Time
	for {
		select {
		case <-wb.kick:
		case <-retry:
		case <-wb.stop:
			for {
				more, err := l.flushOnce()
				if err != nil || !more {
					wb.advanced()
					return
				}
			}
		}
		retry = nil
		for {
			more, err := l.flushOnce()
			if err != nil {
				if l.opts.OnSyncError != nil {
					l.opts.OnSyncError(err)
				}
				retry = time.After(flushRetry)
				break
			}
			if !more {
				break
			}
		}
	}
}

// flushOnce writes one batch of unwritten bytes, and rolls at a roll
// point it reaches. more says bytes remain.
func (l *Log) flushOnce() (more bool, err error) {
	wb := l.wb
	wb.fmu.Lock()
	defer wb.fmu.Unlock()
	l.mu.Lock()
	gen, from, end, f := l.gen, l.flushed+1, l.end, l.active
	var segBase int64
	if len(l.segs) > 0 {
		segBase = l.segs[len(l.segs)-1].base
	}
	to := min(end, from+flushBatch-1)
	roll := len(wb.rollAt) > 0 && wb.rollAt[0] <= to+1
	if roll {
		to = wb.rollAt[0] - 1 // Append only adds later roll points
	}
	l.mu.Unlock()
	if f == nil || (from > end && !roll) {
		return false, nil
	}
	var n int64
	if to >= from {
		var ok bool
		n, ok, err = l.tail.copyFrom(gen, from, to-from+1, f)
		if !ok && err == nil {
			err = fmt.Errorf("backlog: write-behind: bytes from %d are not in memory", from)
		}
		if err != nil {
			err = fmt.Errorf("backlog: append: %w", err)
		}
	}
	if n > 0 {
		wb.drop.wrote(f, from+n-segBase)
	}
	if err == nil && roll && from+n == to+1 {
		wb.drop.finish(f) // the segment is complete: none of its pages stay
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gen != gen || l.active != f { // cannot happen while fmu is held; never write on
		return false, nil
	}
	l.segs[len(l.segs)-1].size += n
	l.flushed += n
	if n > 0 {
		l.dirty = true
	}
	if err == nil && roll && l.flushed == to {
		wb.rollAt = wb.rollAt[1:]
		err = l.roll()
	}
	wb.err = err
	l.publishLocked()
	l.wakeLocked() // file-only readers wait for the files
	wb.advanced()
	return err == nil && l.flushed < l.end, err
}

// stopFlusher makes Append refuse bytes, then lets the flusher write what
// it holds and waits for it. It reports bytes the files did not get.
func (l *Log) stopFlusher() error {
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	l.wb.advanced() // an Append waiting for room sees closing
	close(l.wb.stop)
	<-l.wb.done
	l.mu.Lock()
	defer l.mu.Unlock()
	if lost := l.end - l.flushed; lost > 0 {
		return fmt.Errorf("backlog: %d bytes not written at close: %w", lost, cmp.Or(l.wb.err, io.ErrShortWrite))
	}
	return nil
}

// resetLocked forgets unwritten bytes for a new history starting at
// start; called with fmu and mu held.
func (wb *writeBehind) resetLocked(start int64) {
	wb.rollAt = nil
	wb.segStart = start
	wb.err = nil
}

// Flushed is the offset of the last byte the segment files hold: End
// without write-behind, up to the intake limit behind it with.
func (l *Log) Flushed() int64 { return l.view.Load().Flushed }

// WriteBehindLimit is the intake limit, 0 without write-behind.
func (l *Log) WriteBehindLimit() int64 {
	if l.wb == nil {
		return 0
	}
	return l.wb.limit
}

// dropBehind hands the page-cache pages of written stream back to the
// kernel once they are on disk, keeping the newest dropKeep bytes cached
// for readers a little behind: the next writes then reuse pages just
// freed instead of new ones. Where a new page costs a fault in the
// hypervisor (a VM whose host takes freed memory back), that is what
// bounds the rate at which the files take a burst; measured, writes
// with it ran about three times as fast. A reader further behind reads
// the disk. Errors are ignored: both calls are advice, and a write that
// did not reach the disk fails the next fsync.
type dropBehind struct {
	f                *os.File
	started, dropped int64 // file offsets: writeback started, pages dropped
}

const (
	dropKeep      = 32 << 20 // newest bytes kept cached
	dropStep      = 16 << 20 // dropped at a time, past dropKeep
	writebackStep = 4 << 20  // writeback started at a time
	pageSize      = 4096
)

// wrote notes that f now holds size bytes: it starts their writeback and
// drops what is older than dropKeep once it is written.
func (d *dropBehind) wrote(f *os.File, size int64) {
	if d.f != f {
		*d = dropBehind{f: f}
	}
	fd := int(f.Fd())
	// Whole pages only, and in steps: a page still being filled would be
	// written again at every call.
	if to := size &^ (pageSize - 1); to-d.started >= writebackStep {
		_ = unix.SyncFileRange(fd, d.started, to-d.started, unix.SYNC_FILE_RANGE_WRITE)
		d.started = to
	}
	if size-d.dropped >= dropKeep+dropStep {
		d.dropTo(size - dropKeep)
	}
}

// finish drops every page of f, a complete segment.
func (d *dropBehind) finish(f *os.File) {
	if d.f == f {
		if st, err := f.Stat(); err == nil {
			d.started = st.Size() // the rest: the segment is complete
		}
		d.dropTo(d.started)
	}
	*d = dropBehind{}
}

func (d *dropBehind) dropTo(to int64) {
	to = min(to, d.started) // only what was written back in full pages
	if to <= d.dropped {
		return
	}
	fd := int(d.f.Fd())
	_ = unix.SyncFileRange(fd, d.dropped, to-d.dropped, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
	_ = unix.Fadvise(fd, d.dropped, to-d.dropped, unix.FADV_DONTNEED)
	d.dropped = to
}

// WaitFlushed blocks until the files hold offset off (or the log ends
// before it), ctx ends, or the log is reset or closed: for a caller about
// to record off as durable state (a snapshot's offset) that a restart
// must find in the files.
func (l *Log) WaitFlushed(ctx context.Context, off int64) error {
	gen := l.view.Load().Gen
	for {
		ch := l.notify.Load() // before the view: a change after it closes ch
		v := l.view.Load()
		switch {
		case v.Closed:
			return ErrClosed
		case v.Gen != gen:
			return ErrReset
		case v.Flushed >= off || v.End < off:
			return nil
		}
		select {
		case <-*ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
