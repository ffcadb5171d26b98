package backlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"sync/atomic"
)

// Cursor reads the log from a position onwards. It holds at most one open
// segment file; copies to a *net.TCPConn go through sendfile(2).
type Cursor struct {
	l       *Log
	gen     uint64
	pos     atomic.Int64 // next byte to read; read by other goroutines for lag
	f       *os.File
	segBase int64
	useTail bool // owner only: read from the in-memory tail when it holds pos
	// reseek: Skip moved pos past what f has read; the next open seeks.
	reseek atomic.Bool
	// Bytes copied from each source, owner only (tests look at them).
	tailBytes, fileBytes int64
}

// UseTail makes CopyTo read from the log's in-memory tail (Options.TailSize)
// while it holds the cursor's position. Worth it where the writer cannot
// use sendfile (TLS): to a plain socket, the files' sendfile measured
// faster than writev from memory.
func (c *Cursor) UseTail(on bool) { c.useTail = on }

// NewCursor returns a cursor whose next byte is pos; pos may be End()+1. It
// opens the segment holding pos at once, so a later trim cannot take it.
func (l *Log) NewCursor(pos int64) (*Cursor, error) { return l.newCursor(pos, 0, false) }

// NewCursorGen is NewCursor for a caller that decided on pos from a View
// of generation gen: after a Reset since, it fails with ErrReset.
func (l *Log) NewCursorGen(pos int64, gen uint64) (*Cursor, error) {
	return l.newCursor(pos, gen, true)
}

func (l *Log) newCursor(pos int64, want uint64, checkGen bool) (*Cursor, error) {
	l.mu.RLock()
	gen, start, end, closed, empty := l.gen, l.start, l.end, l.closed, len(l.segs) == 0
	l.mu.RUnlock()
	switch {
	case checkGen && gen != want:
		return nil, ErrReset
	case closed:
		return nil, ErrClosed
	case empty:
		return nil, ErrEmpty
	case pos < start:
		return nil, ErrTrimmed
	case pos > end+1:
		return nil, ErrAhead
	}
	c := &Cursor{l: l, gen: gen}
	c.pos.Store(pos)
	if _, err := c.open(); err != nil {
		return nil, err
	}
	return c, nil
}

// Skip moves the cursor n bytes on, past bytes sent by other means (the
// proxy's fan-out writer, while the owner waits); the next read seeks.
func (c *Cursor) Skip(n int64) {
	c.pos.Add(n)
	c.reseek.Store(true)
}

// Gen is the log generation the cursor reads.
func (c *Cursor) Gen() uint64 { return c.gen }

// Pos is the offset of the next byte the cursor will read.
func (c *Cursor) Pos() int64 { return c.pos.Load() }

// Close releases the open segment.
func (c *Cursor) Close() {
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
}

// open makes sure c.f is the segment holding c.pos and returns how many
// bytes can be read from it now.
func (c *Cursor) open() (int64, error) {
	l := c.l
	l.mu.RLock()
	if err := c.check(); err != nil {
		l.mu.RUnlock()
		return 0, err
	}
	pos := c.pos.Load()
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > pos }) - 1
	if i < 0 {
		l.mu.RUnlock()
		return 0, ErrTrimmed
	}
	s := l.segs[i]
	avail := s.base + s.size - pos
	l.mu.RUnlock()

	if c.f != nil && c.segBase == s.base && !c.reseek.Load() {
		return avail, nil
	}
	c.reseek.Store(false)
	c.Close()
	f, err := os.Open(s.path(l.dir)) // dir never changes: no lock needed
	if err != nil {
		l.mu.RLock()
		cerr := c.check()
		l.mu.RUnlock()
		if cerr != nil {
			return 0, cerr
		}
		return 0, fmt.Errorf("backlog: open segment: %w", err)
	}
	if _, err := f.Seek(pos-s.base, io.SeekStart); err != nil {
		f.Close()
		return 0, fmt.Errorf("backlog: seek: %w", err)
	}
	c.f, c.segBase = f, s.base
	return avail, nil
}

// checkView is check against a published view, without the lock.
func (c *Cursor) checkView(v *View) error {
	switch {
	case v.Closed:
		return ErrClosed
	case v.Gen != c.gen:
		return ErrReset
	case c.pos.Load() < v.Start:
		return ErrTrimmed
	}
	return nil
}

// check reports why the cursor can no longer read; called with mu held.
func (c *Cursor) check() error {
	l := c.l
	switch {
	case l.closed:
		return ErrClosed
	case l.gen != c.gen:
		return ErrReset
	case c.pos.Load() < l.start:
		return ErrTrimmed
	}
	return nil
}

// CopyUpTo is CopyTo for the bytes up to offset last only (delayed
// replicas); it reads the files, never the tail.
func (c *Cursor) CopyUpTo(w io.Writer, last int64) (int64, error) {
	var total int64
	for {
		n, more, err := c.copySegment(w, last)
		total += n
		if err != nil || !more {
			return total, err
		}
	}
}

// copySegment copies what the current segment holds up to offset last;
// more reports that it copied everything it could, so the next segment
// may hold more.
func (c *Cursor) copySegment(w io.Writer, last int64) (n int64, more bool, err error) {
	avail, err := c.open()
	if err != nil {
		return 0, false, err
	}
	if lim := last - c.pos.Load(); lim < avail-1 { // no overflow for last = MaxInt64
		avail = lim + 1
	}
	if avail <= 0 {
		return 0, false, nil
	}
	n, err = io.Copy(w, io.LimitReader(c.f, avail))
	c.pos.Add(n)
	c.fileBytes += n
	if err != nil {
		// The file may have been read past what went out: reopen at the
		// position on the next call, so a retry resumes exactly.
		c.Close()
		return n, false, err
	}
	if n < avail {
		return n, false, fmt.Errorf("backlog: segment shorter than recorded: %w", io.ErrUnexpectedEOF)
	}
	return n, true, nil
}

// CopyTo writes every byte available now to w and returns how many it
// wrote: with UseTail, from the in-memory tail while it holds the cursor's
// position (one writev per call), from the segment files otherwise.
func (c *Cursor) CopyTo(w io.Writer) (int64, error) {
	var total int64
	for {
		n, fromTail, err := c.copyFromTail(w)
		total += n
		if fromTail {
			if err != nil || n == 0 {
				return total, err
			}
			continue
		}
		if err != nil {
			return total, err
		}
		n, more, err := c.copySegment(w, math.MaxInt64)
		total += n
		if err != nil || !more {
			return total, err
		}
	}
}

// copyFromTail is one write from the in-memory tail, when the cursor reads
// there (UseTail) or must (bytes past the files' end, with write-behind)
// and the tail holds its position; fromTail is false otherwise.
func (c *Cursor) copyFromTail(w io.Writer) (n int64, fromTail bool, err error) {
	t := c.l.tail
	if t == nil {
		return 0, false, nil
	}
	v := c.l.view.Load()
	if err := c.checkView(v); err != nil {
		return 0, false, err
	}
	if !c.useTail && c.pos.Load() <= v.Flushed {
		return 0, false, nil
	}
	n, ok, err := t.copyFrom(c.gen, c.pos.Load(), maxTailWrite, w)
	if !ok {
		return 0, false, nil
	}
	if n > 0 && c.f != nil {
		c.Close() // its read position is behind now; reopened (and sought) when needed
	}
	c.pos.Add(n)
	c.tailBytes += n
	c.l.tailServed.Add(n)
	return n, true, err
}

// Read implements io.Reader over the bytes available now; it returns 0, nil
// at the tail rather than blocking (use Wait).
func (c *Cursor) Read(p []byte) (int, error) {
	avail, err := c.open()
	if err != nil {
		return 0, err
	}
	if avail <= 0 {
		if t := c.l.tail; t != nil && c.l.wb != nil { // not in the files yet
			sw := sliceWriter{p: p}
			n, _, _ := t.copyFrom(c.gen, c.pos.Load(), int64(len(p)), &sw)
			c.pos.Add(n)
			return int(n), nil
		}
		return 0, nil
	}
	if int64(len(p)) > avail {
		p = p[:avail]
	}
	n, err := c.f.Read(p)
	c.pos.Add(int64(n))
	if errors.Is(err, io.EOF) {
		err = nil
	}
	return n, err
}

// Wait blocks until a byte at Pos() exists, ctx ends, or the log is reset,
// trimmed past the cursor, or closed. It takes no lock: a writer holding
// the log's mutex (or fsyncing) never delays it.
func (c *Cursor) Wait(ctx context.Context) error {
	l := c.l
	for {
		ch := l.notify.Load() // before the view: a change after it closes ch
		v := l.view.Load()
		if err := c.checkView(v); err != nil {
			return err
		}
		if c.pos.Load() <= v.End {
			return nil
		}
		select {
		case <-*ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// sliceWriter fills a slice; the tail copies into it for Read.
type sliceWriter struct {
	p []byte
	n int
}

func (s *sliceWriter) Write(b []byte) (int, error) {
	n := copy(s.p[s.n:], b)
	s.n += n
	return n, nil
}
