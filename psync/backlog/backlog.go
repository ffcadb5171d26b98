// Package backlog is the replication backlog on disk: a log of raw stream
// bytes addressed by replication offset, kept as segment files named by the
// offset of their first byte. Cursors read from any held offset and block at
// the tail. Memory use does not depend on how much is held.
package backlog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/internal/atomicfile"
)

// FsyncPolicy says when appended bytes are forced to disk.
type FsyncPolicy int

const (
	FsyncEverySec FsyncPolicy = iota // default: at most a second of data at risk on power loss
	FsyncAlways                      // before bytes are visible to readers and ACKed
	FsyncNo                          // leave it to the OS
)

// ParseFsyncPolicy parses "always", "everysec" or "no".
func ParseFsyncPolicy(s string) (FsyncPolicy, error) {
	switch strings.ToLower(s) {
	case "everysec":
		return FsyncEverySec, nil
	case "always":
		return FsyncAlways, nil
	case "no":
		return FsyncNo, nil
	}
	return 0, fmt.Errorf("fsync policy %q: want always, everysec or no", s)
}

func (p FsyncPolicy) String() string {
	return [...]string{"everysec", "always", "no"}[p]
}

// Options configure a Log.
type Options struct {
	// SegmentSize is the size past which the active segment is closed at the
	// next command boundary. Default 64 MiB.
	SegmentSize int64
	Fsync       FsyncPolicy
	// ValidPrefix returns how many leading bytes of the last segment form
	// complete, well-formed stream data; recovery truncates the rest. Nil
	// keeps the whole segment.
	ValidPrefix func(r io.Reader) (int64, error)
	// OnSyncError hears of failed background fsyncs (--fsync everysec),
	// which no caller would otherwise see. Nil ignores them; SyncErrors
	// counts them either way.
	OnSyncError func(error)
	// SyncFile replaces f.Sync() for every fsync of a segment, the tag or
	// the directory: a test hook to hold or fail fsyncs. Nil uses f.Sync.
	SyncFile func(f *os.File) error
	// TailSize keeps the newest TailSize bytes in memory as well, and feeds
	// cursors there from it (0: files only).
	TailSize int64
	// WriteBehind, when > 0, lets the segment files trail the log by up to
	// this many bytes, held in the tail (writebehind.go). Ignored with
	// FsyncAlways, whose bytes are on disk before anyone sees them.
	WriteBehind int64
}

var (
	ErrEmpty   = errors.New("backlog: no history; Reset first")
	ErrTrimmed = errors.New("backlog: position was trimmed from the front")
	ErrReset   = errors.New("backlog: history was reset")
	ErrClosed  = errors.New("backlog: closed")
	ErrAhead   = errors.New("backlog: position is past the end")
)

const (
	segSuffix = ".seg"
	tagFile   = "TAG"
)

type segment struct {
	base int64
	size int64
}

func (s segment) path(dir string) string {
	return filepath.Join(dir, fmt.Sprintf("%020d%s", s.base, segSuffix))
}

// RecoveryReport says what Open found and repaired.
type RecoveryReport struct {
	Segments       int
	TruncatedBytes int64 // torn tail removed from the last segment
	DroppedBytes   int64 // segments dropped before a gap
}

// Log is the on-disk backlog. All methods are safe for concurrent use.
type Log struct {
	dir  string
	opts Options

	mu     sync.RWMutex
	segs   []segment // ascending; the last one is active
	active *os.File
	start  int64 // first byte held
	end    int64 // last byte held; start-1 when empty
	gen    uint64
	tag    string
	notify atomic.Pointer[chan struct{}] // closed and replaced at every change readers wait for
	tail   *tail                         // nil without Options.TailSize
	closed bool
	dirty  bool
	// flushed is the last byte the segment files hold: end, or behind it
	// with write-behind (wb), whose flusher advances it.
	flushed int64
	wb      *writeBehind
	closing bool // Close has begun: Append refuses bytes
	// rolled holds segments rolled since the last background sync, still
	// open: with FsyncEverySec they are fsynced (with the directory) by the
	// sync loop, off the appender's path, not at the roll under mu.
	rolled   []*os.File
	rollKick chan struct{} // wakes the sync loop at a roll (buffered, 1)
	stopSync chan struct{}
	syncDone chan struct{}
	stopOnce sync.Once // a second Close must not close stopSync again
	written  int64
	trimmed  int64

	syncErrors atomic.Int64
	tailServed atomic.Int64 // bytes cursors sent from the in-memory tail
	// view is what readers see, published after every change under mu, so
	// that they never wait on a writer (or on its fsync).
	view atomic.Pointer[View]
}

// View is the log's state at one moment: readers get it without a lock.
type View struct {
	Start, End int64  // first and last byte held; End == Start-1 when empty
	Gen        uint64 // incremented by every Reset
	Closed     bool
	Tag        string
	Written    int64 // bytes appended since Open
	Trimmed    int64 // bytes trimmed since Open
	Flushed    int64 // last byte the segment files hold (End without write-behind)
}

// publishLocked publishes the current state; called with mu held.
func (l *Log) publishLocked() {
	l.view.Store(&View{Start: l.start, End: l.end, Gen: l.gen, Closed: l.closed, Tag: l.tag, Written: l.written, Trimmed: l.trimmed, Flushed: l.flushed})
}

// wakeLocked wakes every waiting reader at once, after publishLocked;
// called with mu held. Readers load the channel before the view, so none
// misses a change.
func (l *Log) wakeLocked() {
	old := l.notify.Load()
	if !l.closed {
		ch := make(chan struct{})
		l.notify.Store(&ch)
	}
	close(*old)
}

// View returns the log's state now, without waiting for a writer.
func (l *Log) View() View { return *l.view.Load() }

func (l *Log) fsync(f *os.File) error {
	if l.opts.SyncFile != nil {
		return l.opts.SyncFile(f)
	}
	return f.Sync()
}

// Open opens or creates the backlog in dir and recovers it after a crash.
func Open(dir string, opts Options) (*Log, RecoveryReport, error) {
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = 64 << 20
	}
	var rep RecoveryReport
	if err := atomicfile.MkdirAll(dir, 0o755, opts.SyncFile); err != nil {
		return nil, rep, fmt.Errorf("backlog: %w", err)
	}
	l := &Log{dir: dir, opts: opts, start: 0, end: -1, flushed: -1, tail: newTail(opts.TailSize)}
	if opts.WriteBehind > 0 && opts.Fsync != FsyncAlways {
		l.wb = newWriteBehind(opts.WriteBehind)
		if l.tail == nil { // holds the unwritten bytes; keeps nothing written
			l.tail = &tail{blockSize: tailBlockSize}
		}
	}
	ch := make(chan struct{})
	l.notify.Store(&ch)
	if b, err := os.ReadFile(filepath.Join(dir, tagFile)); err == nil {
		l.tag = strings.TrimSpace(string(b))
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, rep, fmt.Errorf("backlog: read tag: %w", err)
	}
	segs, err := listSegments(dir)
	if err != nil {
		return nil, rep, err
	}
	// Keep the newest contiguous run: the end of the log is what resumes.
	first := 0
	for i := 1; i < len(segs); i++ {
		if segs[i-1].base+segs[i-1].size != segs[i].base {
			first = i
		}
	}
	for _, s := range segs[:first] {
		rep.DroppedBytes += s.size
		if err := os.Remove(s.path(dir)); err != nil {
			return nil, rep, fmt.Errorf("backlog: drop segment before gap: %w", err)
		}
	}
	segs = segs[first:]
	if len(segs) > 0 {
		last := &segs[len(segs)-1]
		if opts.ValidPrefix != nil {
			f, err := os.Open(last.path(dir))
			if err != nil {
				return nil, rep, fmt.Errorf("backlog: %w", err)
			}
			valid, err := opts.ValidPrefix(f)
			f.Close()
			if err != nil {
				return nil, rep, fmt.Errorf("backlog: validate %s: %w", last.path(dir), err)
			}
			if valid < last.size {
				if err := os.Truncate(last.path(dir), valid); err != nil {
					return nil, rep, fmt.Errorf("backlog: truncate torn tail: %w", err)
				}
				rep.TruncatedBytes = last.size - valid
				last.size = valid
			}
		}
		f, err := os.OpenFile(last.path(dir), os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, rep, fmt.Errorf("backlog: %w", err)
		}
		l.active = f
		l.segs = segs
		l.start = segs[0].base
		l.end = last.base + last.size - 1
		l.flushed = l.end
		if l.wb != nil {
			l.wb.segStart = last.base
		}
	}
	rep.Segments = len(segs)
	l.publishLocked()
	if l.wb != nil {
		go l.flushLoop()
	}
	if opts.Fsync == FsyncEverySec {
		l.stopSync, l.syncDone, l.rollKick = make(chan struct{}), make(chan struct{}), make(chan struct{}, 1)
		go l.syncLoop()
	}
	return l, rep, nil
}

func listSegments(dir string) ([]segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("backlog: %w", err)
	}
	var segs []segment
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, segSuffix) {
			continue
		}
		base, err := strconv.ParseInt(strings.TrimSuffix(name, segSuffix), 10, 64)
		if err != nil || base < 0 {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("backlog: %w", err)
		}
		segs = append(segs, segment{base: base, size: info.Size()})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].base < segs[j].base })
	return segs, nil
}

func (l *Log) syncLoop() {
	defer close(l.syncDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-l.stopSync:
			return
		case <-t.C:
		case <-l.rollKick: // a roll: fsync the old segment now, not in up to a second
		}
		if err := l.Sync(); err != nil {
			l.syncErrors.Add(1)
			if l.opts.OnSyncError != nil {
				l.opts.OnSyncError(err)
			}
		}
	}
}

// Sync forces appended bytes to disk.
func (l *Log) Sync() error {
	l.mu.Lock()
	f, dirty, rolled := l.active, l.dirty, l.rolled
	l.dirty, l.rolled = false, nil
	l.mu.Unlock()
	if len(rolled) > 0 {
		if unsynced, err := l.syncRolled(rolled); err != nil {
			l.mu.Lock()
			l.rolled = append(unsynced, l.rolled...) // tried again next time
			l.mu.Unlock()
			return err
		}
	}
	if f == nil || !dirty {
		return nil
	}
	if err := l.fsync(f); err != nil && !errors.Is(err, os.ErrClosed) {
		l.mu.Lock()
		l.dirty = l.dirty || f == l.active // try again next time
		l.mu.Unlock()
		return fmt.Errorf("backlog: fsync: %w", err)
	}
	return nil
}

// syncRolled fsyncs and closes segments rolled since the last sync, then
// the directory that names their successors. On an error it returns the
// files it did not sync, still open.
func (l *Log) syncRolled(rolled []*os.File) (unsynced []*os.File, err error) {
	for i, f := range rolled {
		if err := l.fsync(f); err != nil {
			return rolled[i:], fmt.Errorf("backlog: fsync rolled segment: %w", err)
		}
		f.Close()
	}
	if err := l.syncDir(l.dir); err != nil {
		return nil, fmt.Errorf("backlog: fsync directory after roll: %w", err)
	}
	return nil, nil
}

// Range returns the first and last byte held; last == first-1 when empty,
// and first == 0 when there is no history at all.
func (l *Log) Range() (first, last int64) {
	v := l.view.Load()
	return v.Start, v.End
}

// End is the offset of the last byte held (master_repl_offset).
func (l *Log) End() int64 { return l.view.Load().End }

// Size is the number of bytes held.
func (l *Log) Size() int64 {
	v := l.view.Load()
	return v.End - v.Start + 1
}

// Tag is the label given at the last Reset; it ties the log to a history.
func (l *Log) Tag() string { return l.view.Load().Tag }

// Counters returns bytes appended and trimmed since Open.
func (l *Log) Counters() (written, trimmed int64) {
	v := l.view.Load()
	return v.Written, v.Trimmed
}

// TailCapacity is the in-memory tail's size, 0 without one.
func (l *Log) TailCapacity() int64 {
	if l.tail == nil {
		return 0
	}
	return l.tail.capacity
}

// TailServed is how many bytes cursors have sent from the in-memory tail.
func (l *Log) TailServed() int64 { return l.tailServed.Load() }

// SyncErrors counts background fsyncs that failed since Open.
func (l *Log) SyncErrors() int64 { return l.syncErrors.Load() }

// Reset discards everything and starts an empty log whose first byte will be
// at offset start, labelled tag. Open cursors fail with ErrReset.
func (l *Log) Reset(start int64, tag string) error {
	if start < 1 {
		return fmt.Errorf("backlog: reset to offset %d: offsets start at 1", start)
	}
	if l.wb != nil {
		l.wb.fmu.Lock() // no write in flight to a segment being removed
		defer l.wb.fmu.Unlock()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.active != nil {
		l.active.Close()
		l.active = nil
	}
	for _, f := range l.rolled { // the history they hold is discarded
		f.Close()
	}
	l.rolled = nil
	for _, s := range l.segs {
		if err := os.Remove(s.path(l.dir)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("backlog: reset: %w", err)
		}
	}
	l.segs = nil
	l.gen++
	l.start, l.end, l.flushed = start, start-1, start-1
	if l.wb != nil {
		l.wb.resetLocked(start)
	}
	l.tag = ""
	if l.tail != nil {
		l.tail.reset(l.gen)
	}
	l.publishLocked()
	l.wakeLocked()
	if err := l.writeFileAtomic(filepath.Join(l.dir, tagFile), []byte(tag+"\n")); err != nil {
		return fmt.Errorf("backlog: reset: %w", err)
	}
	l.tag = tag
	if err := l.openSegment(start); err != nil {
		return err
	}
	if err := l.syncDir(l.dir); err != nil {
		return err
	}
	l.publishLocked()
	return nil
}

// openSegment creates the segment starting at base and makes it active.
// Called with mu held.
func (l *Log) openSegment(base int64) error {
	s := segment{base: base}
	f, err := os.OpenFile(s.path(l.dir), os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("backlog: new segment: %w", err)
	}
	l.segs = append(l.segs, s)
	l.active = f
	return nil
}

// Append adds stream bytes and returns how many it stored, which is less
// than len(p) only with an error (a full disk): those bytes are held, the
// rest are not. boundary is the length of the longest prefix of p that ends
// on a command boundary (-1 if p ends no command); segments are only rolled
// there, so every segment starts at a command.
func (l *Log) Append(p []byte, boundary int) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if l.wb != nil {
		return l.appendBehind(p, boundary)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, ErrClosed
	}
	if l.active == nil {
		return 0, ErrEmpty
	}
	return l.appendThroughLocked(p, boundary)
}

// appendThroughLocked writes p to the files now, then to the tail, and
// wakes readers for whatever was stored. Called with mu held.
func (l *Log) appendThroughLocked(p []byte, boundary int) (int, error) {
	start := l.end
	err := l.appendLocked(p, boundary)
	if l.end > start {
		if l.tail != nil {
			l.tail.append(l.gen, start+1, p[:l.end-start], l.end+1) // all written: capacity alone evicts
		}
		l.publishLocked()
		l.wakeLocked()
	}
	return int(l.end - start), err
}

func (l *Log) appendLocked(p []byte, boundary int) error {
	if boundary > 0 {
		if err := l.write(p[:boundary]); err != nil {
			return err
		}
		p = p[boundary:]
		if cur := l.segs[len(l.segs)-1]; cur.size >= l.opts.SegmentSize {
			if err := l.roll(); err != nil {
				return err
			}
		}
	}
	if err := l.write(p); err != nil {
		return err
	}
	if l.opts.Fsync == FsyncAlways {
		if err := l.fsync(l.active); err != nil {
			return fmt.Errorf("backlog: fsync: %w", err)
		}
	} else {
		l.dirty = true
	}
	return nil
}

func (l *Log) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := l.active.Write(p)
	cur := &l.segs[len(l.segs)-1]
	cur.size += int64(n)
	l.end += int64(n)
	l.flushed = l.end
	l.written += int64(n)
	if err != nil {
		return fmt.Errorf("backlog: append: %w", err)
	}
	return nil
}

// roll closes the active segment and opens the next. With FsyncEverySec the
// old segment's fsync is left to the sync loop, kicked at once: an fsync
// here would hold mu (readers opening segments, and the appender) for as
// long as the disk takes to write up to a second of stream. The price: a
// power loss in the moment before that fsync completes, if the kernel wrote
// the new segment's first bytes before the old one's last, leaves a gap,
// and Open keeps the newest contiguous run, dropping the history before it
// (never serving across it).
func (l *Log) roll() error {
	if l.opts.Fsync == FsyncAlways {
		if err := l.fsync(l.active); err != nil {
			return fmt.Errorf("backlog: fsync on roll: %w", err) // still active: the roll is retried at the next boundary
		}
	}
	background := l.opts.Fsync == FsyncEverySec
	if background {
		l.rolled = append(l.rolled, l.active)
		select {
		case l.rollKick <- struct{}{}:
		default: // already kicked
		}
	} else {
		l.active.Close()
	}
	l.active = nil
	if err := l.openSegment(l.flushed + 1); err != nil {
		return err
	}
	if background {
		return nil // the sync loop fsyncs the directory after the rolled segments
	}
	return l.syncDir(l.dir)
}

// Trim deletes whole segments from the front while more than budget bytes
// are held, but never a segment holding any byte at or after keepFrom, and
// never the active segment. It returns the bytes removed.
func (l *Log) Trim(keepFrom, budget int64) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var removed int64
	for len(l.segs) > 1 && l.end-l.start+1 > budget {
		s := l.segs[0]
		if s.base+s.size > keepFrom {
			break
		}
		if err := os.Remove(s.path(l.dir)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, fmt.Errorf("backlog: trim: %w", err)
		}
		l.segs = l.segs[1:]
		l.start = l.segs[0].base
		removed += s.size
	}
	l.trimmed += removed
	if removed > 0 {
		l.publishLocked()
	}
	return removed, nil
}

// Close writes what write-behind holds, syncs and closes the log; cursors
// fail with ErrClosed. Closing again does nothing.
func (l *Log) Close() error {
	var flushErr error
	l.stopOnce.Do(func() {
		if l.wb != nil {
			flushErr = l.stopFlusher()
		}
		if l.stopSync != nil {
			close(l.stopSync)
			<-l.syncDone
		}
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	l.publishLocked()
	l.wakeLocked()
	var err error
	if len(l.rolled) > 0 { // the sync loop has stopped: nobody else syncs them
		var unsynced []*os.File
		unsynced, err = l.syncRolled(l.rolled)
		for _, f := range unsynced {
			f.Close()
		}
		l.rolled = nil
	}
	if l.active != nil {
		if l.opts.Fsync != FsyncNo {
			if serr := l.fsync(l.active); serr != nil && err == nil {
				err = serr
			}
		}
		if cerr := l.active.Close(); err == nil {
			err = cerr
		}
		l.active = nil
	}
	return errors.Join(flushErr, err)
}

func (l *Log) writeFileAtomic(path string, data []byte) error {
	return atomicfile.Write(path, data, l.fsync)
}

func (l *Log) syncDir(dir string) error { return atomicfile.SyncDir(dir, l.fsync) }

// Summary describes a backlog directory without opening it for writing.
type Summary struct {
	Tag      string
	Segments int
	First    int64 // 0 when there are no segments
	End      int64
	Bytes    int64
	Gaps     int // discontinuities between segments; recovery would drop the older side
	// Covered is when the first segment was last written: every byte after
	// it arrived since, so the backlog holds at least the stream since then
	// (zero when there is a single segment, whose start time is not kept).
	Covered time.Time `json:",omitempty"`
}

// Inspect reads a backlog directory without changing it.
func Inspect(dir string) (Summary, error) {
	var s Summary
	if b, err := os.ReadFile(filepath.Join(dir, tagFile)); err == nil {
		s.Tag = strings.TrimSpace(string(b))
	} else if !errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("backlog: %w", err)
	}
	segs, err := listSegments(dir)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	s.Segments = len(segs)
	for i, seg := range segs {
		if i > 0 && segs[i-1].base+segs[i-1].size != seg.base {
			s.Gaps++
		}
		s.Bytes += seg.size
	}
	if len(segs) > 0 {
		s.First = segs[0].base
		last := segs[len(segs)-1]
		s.End = last.base + last.size - 1
	}
	if len(segs) > 1 {
		if st, err := os.Stat(segs[0].path(dir)); err == nil {
			s.Covered = st.ModTime()
		}
	}
	return s, nil
}
