package backlog

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// cmd is a fake "command": the log itself does not parse, so a fixed-size
// record with a terminator stands in for stream commands.
func cmd(i int) []byte { return []byte("cmd" + strconv.Itoa(1000000+i) + "\n") }

// validLines keeps whole lines: the recovery rule in miniature.
func validLines(r io.Reader) (int64, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return 0, err
	}
	return int64(bytes.LastIndexByte(b, '\n') + 1), nil
}

func open(t *testing.T, dir string, seg int64, fsync FsyncPolicy) *Log {
	t.Helper()
	l, _, err := Open(dir, Options{SegmentSize: seg, Fsync: fsync, ValidPrefix: validLines})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func appendN(t *testing.T, l *Log, from, n int) []byte {
	t.Helper()
	var all []byte
	for i := from; i < from+n; i++ {
		c := cmd(i)
		if _, err := l.Append(c, len(c)); err != nil {
			t.Fatal(err)
		}
		all = append(all, c...)
	}
	return all
}

func readAll(t *testing.T, l *Log, from int64) []byte {
	t.Helper()
	c, err := l.NewCursor(from)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var buf bytes.Buffer
	if _, err := c.CopyTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestAppendReadAcrossSegments(t *testing.T) {
	for _, p := range []FsyncPolicy{FsyncNo, FsyncEverySec, FsyncAlways} {
		l := open(t, t.TempDir(), 100, p)
		if _, err := l.Append([]byte("x"), 1); !errors.Is(err, ErrEmpty) {
			t.Fatalf("append before reset: %v", err)
		}
		if err := l.Reset(1001, "tag"); err != nil {
			t.Fatal(err)
		}
		data := appendN(t, l, 0, 100)
		first, end := l.Range()
		if first != 1001 || end != 1000+int64(len(data)) {
			t.Fatalf("range [%d, %d]", first, end)
		}
		for _, from := range []int64{1001, 1002, 1100, end, end + 1} {
			if got := readAll(t, l, from); !bytes.Equal(got, data[from-1001:]) {
				t.Fatalf("%v: read from %d differs", p, from)
			}
		}
		if _, err := l.NewCursor(end + 2); !errors.Is(err, ErrAhead) {
			t.Fatalf("ahead: %v", err)
		}
		if _, err := l.NewCursor(1000); !errors.Is(err, ErrTrimmed) {
			t.Fatalf("behind: %v", err)
		}
	}
}

func TestSegmentsStartAtBoundaries(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 50, FsyncNo)
	_ = l.Reset(1, "t")
	// Each append carries one and a half commands: rolls happen only at the
	// boundary inside the chunk.
	all := chunked(t, l, 0, 40)
	segs, _ := listSegments(dir)
	if len(segs) < 5 {
		t.Fatalf("only %d segments", len(segs))
	}
	for _, s := range segs {
		if (s.base-1)%int64(len(cmd(0))) != 0 {
			t.Fatalf("segment at %d is not at a command boundary", s.base)
		}
	}
	if !bytes.Equal(readAll(t, l, 1), all) {
		t.Fatal("content differs")
	}
}

func TestTrimKeepsBudgetAndPin(t *testing.T) {
	l := open(t, t.TempDir(), 100, FsyncNo)
	_ = l.Reset(1, "t")
	data := appendN(t, l, 0, 200)
	c, _ := l.NewCursor(1)
	defer c.Close()
	// The pin at offset 500 stops trimming before the budget is reached.
	if _, err := l.Trim(500, 300); err != nil {
		t.Fatal(err)
	}
	first, end := l.Range()
	if first > 500 || first == 1 {
		t.Fatalf("first %d after pinned trim", first)
	}
	if _, err := l.Trim(end+1, 300); err != nil {
		t.Fatal(err)
	}
	if l.Size() > 300+100 {
		t.Fatalf("size %d over budget", l.Size())
	}
	first, _ = l.Range()
	if !bytes.Equal(readAll(t, l, first), data[first-1:]) {
		t.Fatal("content after trim differs")
	}
	// The old cursor's position is gone.
	if _, err := c.CopyTo(io.Discard); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("trimmed cursor: %v", err)
	}
	_, trimmed := l.Counters()
	if trimmed != first-1 {
		t.Fatalf("trimmed counter %d, first %d", trimmed, first)
	}
}

func TestWaitWakesAndReset(t *testing.T) {
	l := open(t, t.TempDir(), 1<<20, FsyncNo)
	_ = l.Reset(1, "t")
	c, _ := l.NewCursor(1)
	defer c.Close()
	got := make(chan error, 1)
	go func() { got <- c.Wait(context.Background()) }()
	select {
	case err := <-got:
		t.Fatalf("Wait returned before data: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	appendN(t, l, 0, 1)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	_, _ = c.CopyTo(io.Discard)
	go func() { got <- c.Wait(context.Background()) }()
	_ = l.Reset(500, "t2")
	if err := <-got; !errors.Is(err, ErrReset) {
		t.Fatalf("after reset: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c2, _ := l.NewCursor(500)
	defer c2.Close()
	cancel()
	if err := c2.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}

func TestRecoveryTruncatesTornTail(t *testing.T) {
	dir := t.TempDir()
	l, _, err := Open(dir, Options{SegmentSize: 60, ValidPrefix: validLines})
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Reset(1, "hist")
	data := appendN(t, l, 0, 20)
	l.Close()
	segs, _ := listSegments(dir)
	last := segs[len(segs)-1].path(dir)
	// A crash left half a command and zero-filled blocks at the end.
	f, _ := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	_, _ = f.Write(append([]byte("cmd12"), make([]byte, 10)...))
	f.Close()
	l2, rep, err := Open(dir, Options{SegmentSize: 60, ValidPrefix: validLines})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if rep.TruncatedBytes != 15 || l2.Tag() != "hist" {
		t.Fatalf("report %+v tag %q", rep, l2.Tag())
	}
	if _, end := l2.Range(); end != int64(len(data)) {
		t.Fatalf("end %d want %d", end, len(data))
	}
	if !bytes.Equal(readAll(t, l2, 1), data) {
		t.Fatal("content differs after recovery")
	}
	// Appending continues seamlessly.
	more := appendN(t, l2, 20, 5)
	if !bytes.Equal(readAll(t, l2, 1), append(data, more...)) {
		t.Fatal("content differs after more appends")
	}
}

func TestRecoveryDropsSegmentsBeforeGap(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 30, FsyncNo)
	_ = l.Reset(1, "t")
	appendN(t, l, 0, 20)
	l.Close()
	segs, _ := listSegments(dir)
	if err := os.Remove(segs[2].path(dir)); err != nil {
		t.Fatal(err)
	}
	l2, rep, err := Open(dir, Options{SegmentSize: 30})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	first, _ := l2.Range()
	if first != segs[3].base || rep.DroppedBytes != segs[0].size+segs[1].size {
		t.Fatalf("first %d report %+v", first, rep)
	}
	if sum, _ := Inspect(dir); sum.Gaps != 0 || sum.First != first {
		t.Fatalf("inspect %+v", sum)
	}
}

func TestInspectDoesNotModify(t *testing.T) {
	dir := t.TempDir()
	l := open(t, dir, 1<<20, FsyncNo)
	_ = l.Reset(7, "t")
	appendN(t, l, 0, 3)
	sum, err := Inspect(dir)
	if err != nil || sum.First != 7 || sum.Bytes != 3*int64(len(cmd(0))) || sum.Tag != "t" {
		t.Fatalf("%+v %v", sum, err)
	}
	if s, err := Inspect(filepath.Join(dir, "missing")); err != nil || s.Segments != 0 {
		t.Fatalf("missing dir: %+v %v", s, err)
	}
}

func BenchmarkAppend(b *testing.B) {
	l, _, err := Open(b.TempDir(), Options{SegmentSize: 64 << 20, Fsync: FsyncNo})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	_ = l.Reset(1, "bench")
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		if _, err := l.Append(chunk, len(chunk)); err != nil {
			b.Fatal(err)
		}
		if l.Size() > 512<<20 {
			_, end := l.Range()
			_, _ = l.Trim(end, 0)
		}
	}
}

func BenchmarkCursorRead(b *testing.B) {
	l, _, err := Open(b.TempDir(), Options{SegmentSize: 16 << 20, Fsync: FsyncNo})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	_ = l.Reset(1, "bench")
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	for range 128 {
		_, _ = l.Append(chunk, len(chunk))
	}
	b.SetBytes(l.Size())
	for b.Loop() {
		c, err := l.NewCursor(1)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.CopyTo(io.Discard); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// shortWriter takes limit bytes, then fails.
type shortWriter struct {
	buf   bytes.Buffer
	limit int
}

func (w *shortWriter) Write(p []byte) (int, error) {
	n := min(len(p), w.limit-w.buf.Len())
	w.buf.Write(p[:n])
	if n < len(p) {
		return n, errors.New("peer went away")
	}
	return n, nil
}

// TestCopyAfterShortWrite: a copy cut short leaves the cursor exactly after
// the bytes that went out, whether it ended inside one read or across
// several, so a retry neither skips nor repeats a byte.
func TestCopyAfterShortWrite(t *testing.T) {
	for _, size := range []int{100, 200 << 10} {
		l := open(t, t.TempDir(), 1<<20, FsyncNo)
		if err := l.Reset(1, "t"); err != nil {
			t.Fatal(err)
		}
		want := appendN(t, l, 0, size/len(cmd(0)))
		c, err := l.NewCursor(1)
		if err != nil {
			t.Fatal(err)
		}
		w := &shortWriter{limit: len(want) / 3}
		if n, err := c.CopyTo(w); err == nil || n != int64(w.limit) || c.Pos() != 1+n {
			t.Fatalf("size %d: short copy: n %d pos %d err %v", size, n, c.Pos(), err)
		}
		var rest bytes.Buffer
		if _, err := c.CopyTo(&rest); err != nil {
			t.Fatal(err)
		}
		if got := append(w.buf.Bytes(), rest.Bytes()...); !bytes.Equal(got, want) {
			t.Fatalf("size %d: bytes differ at %d after a retry", size, firstDiffBytes(got, want))
		}
		c.Close()
	}
}

func firstDiffBytes(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// BenchmarkCursorTail is a caught-up replica: each op appends one small
// chunk (a few commands) and copies it to a loopback TCP socket (sendfile).
func BenchmarkCursorTail(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		if c, err := ln.Accept(); err == nil {
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	l, _, err := Open(b.TempDir(), Options{SegmentSize: 64 << 20, Fsync: FsyncNo})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	_ = l.Reset(1, "bench")
	cur, err := l.NewCursor(1)
	if err != nil {
		b.Fatal(err)
	}
	defer cur.Close()
	chunk := bytes.Repeat([]byte("x"), 600)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		if _, err := l.Append(chunk, len(chunk)); err != nil {
			b.Fatal(err)
		}
		if n, err := cur.CopyTo(conn); err != nil || n != int64(len(chunk)) {
			b.Fatalf("copied %d: %v", n, err)
		}
	}
	conn.Close()
	<-drained
}

// TestBackgroundFsyncErrorsAreReported: a failing background fsync is
// counted, handed to OnSyncError, and retried on the next tick. The active
// segment's descriptor is swapped for a pipe, on which fsync fails (EINVAL).
func TestBackgroundFsyncErrorsAreReported(t *testing.T) {
	errs := make(chan error, 8)
	l, _, err := Open(t.TempDir(), Options{Fsync: FsyncEverySec, ValidPrefix: validLines,
		OnSyncError: func(err error) {
			select {
			case errs <- err:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 0, 10)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	l.mu.Lock()
	fd := int(l.active.Fd())
	saved, err := unix.Dup(fd)
	if err == nil {
		err = unix.Dup2(int(w.Fd()), fd)
	}
	l.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the failure leaves the log dirty: the next tick retries
		select {
		case err := <-errs:
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("fsync error %d: %v, want EINVAL", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no fsync error %d reported", i)
		}
	}
	if n := l.SyncErrors(); n < 2 {
		t.Fatalf("SyncErrors %d, want >= 2", n)
	}
	if err := unix.Dup2(saved, fd); err != nil {
		t.Fatal(err)
	}
	unix.Close(saved)
	if err := l.Sync(); err != nil {
		t.Fatalf("fsync after the segment is back: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// With FsyncEverySec a roll leaves the old segment's fsync to the sync
// loop: appends that roll complete while an fsync is held, and the loop
// then fsyncs the rolled segments and the directory.
func TestRollDoesNotWaitForFsync(t *testing.T) {
	hold := make(chan struct{})
	release := sync.OnceFunc(func() { close(hold) })
	var armed atomic.Bool // once set, every fsync waits for release and is recorded
	synced := make(chan string, 64)
	l, _, err := Open(t.TempDir(), Options{SegmentSize: 64, Fsync: FsyncEverySec, ValidPrefix: validLines,
		SyncFile: func(f *os.File) error {
			if armed.Load() {
				<-hold
				synced <- filepath.Base(f.Name())
			}
			return f.Sync()
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { release(); l.Close() })
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	var want []byte
	for i := range 20 { // 20 × 11 bytes: three rolls
		want = append(want, cmd(i)...)
	}
	done := make(chan error, 1)
	go func() {
		for i := range 20 {
			c := cmd(i)
			if _, err := l.Append(c, len(c)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("appends across a roll waited for an fsync")
	}
	if got := readAll(t, l, 1); !bytes.Equal(got, want) {
		t.Fatalf("read back %q, want %q", got, want)
	}
	release()
	seen := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for len(seen) < 5 { // three rolled segments, the directory, the active segment
		select {
		case name := <-synced:
			seen[name] = true
		case <-deadline:
			t.Fatalf("sync loop fsynced %v, want the three rolled segments, the directory and the active one", seen)
		}
	}
	l.mu.Lock()
	rolled := len(l.rolled)
	l.mu.Unlock()
	if rolled != 0 {
		t.Fatalf("%d rolled segments left after the sync loop ran", rolled)
	}
}

func TestCloseTwice(t *testing.T) {
	l, _, err := Open(t.TempDir(), Options{Fsync: FsyncEverySec, ValidPrefix: validLines})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 0, 3)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// With FsyncAlways a failed fsync at a roll fails the append and leaves the
// segment active: the next append goes on, and rolls at its boundary.
func TestAlwaysRollFsyncFailureKeepsLogUsable(t *testing.T) {
	var fail atomic.Bool
	l, _, err := Open(t.TempDir(), Options{SegmentSize: 40, Fsync: FsyncAlways, ValidPrefix: validLines,
		SyncFile: func(f *os.File) error {
			if fail.Load() {
				return errors.New("injected fsync failure")
			}
			return f.Sync()
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	want := appendN(t, l, 0, 3) // 33 bytes: the next append reaches 40 and rolls
	fail.Store(true)
	c := cmd(3)
	if _, err := l.Append(c, len(c)); err == nil {
		t.Fatal("an append whose roll could not fsync succeeded")
	}
	want = append(want, c...) // written before the roll, so held
	fail.Store(false)
	want = append(want, appendN(t, l, 4, 3)...)
	if got := readAll(t, l, 1); !bytes.Equal(got, want) {
		t.Fatalf("read back %q, want %q", got, want)
	}
}
