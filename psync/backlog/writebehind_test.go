package backlog

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

func openBehind(t *testing.T, dir string, seg, limit int64) *Log {
	t.Helper()
	l, _, err := Open(dir, Options{SegmentSize: seg, Fsync: FsyncEverySec, ValidPrefix: validLines, WriteBehind: limit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// waitFlushed polls until the files hold everything appended.
func waitFlushed(t *testing.T, l *Log) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for l.Flushed() != l.End() {
		if time.Now().After(deadline) {
			t.Fatalf("files hold up to %d, the log up to %d", l.Flushed(), l.End())
		}
		time.Sleep(time.Millisecond)
	}
}

// chunked appends commands in chunks of one and a half commands, as the
// follower's reads cut them, and returns the bytes.
func chunked(t *testing.T, l *Log, from, n int) []byte {
	t.Helper()
	var all []byte
	for i := from; i < from+n; i += 2 {
		a, b := cmd(i), cmd(i+1)
		chunk := append(append([]byte{}, a...), b[:5]...)
		if _, err := l.Append(chunk, len(a)); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Append(b[5:], len(b)-5); err != nil {
			t.Fatal(err)
		}
		all = append(append(all, a...), b...)
	}
	return all
}

// The files a write-behind log leaves are the files a write-through log
// writes: the same segments, rolled at the same command boundaries, with
// the same bytes; readers see every byte at once, from memory while the
// files trail.
func TestWriteBehindWritesWhatWriteThroughWrites(t *testing.T) {
	dirBehind, dirThrough := t.TempDir(), t.TempDir()
	behind := openBehind(t, dirBehind, 50, 1<<20)
	through := open(t, dirThrough, 50, FsyncEverySec)
	for _, l := range []*Log{behind, through} {
		if err := l.Reset(1, "t"); err != nil {
			t.Fatal(err)
		}
	}
	behind.wb.fmu.Lock() // the flusher cannot write: everything stays in memory
	want := chunked(t, behind, 0, 40)
	chunked(t, through, 0, 40)
	if behind.End() != int64(len(want)) || behind.Flushed() != 0 {
		t.Fatalf("end %d flushed %d, want %d and 0", behind.End(), behind.Flushed(), len(want))
	}
	for _, useTail := range []bool{false, true} {
		c, err := behind.NewCursor(1)
		if err != nil {
			t.Fatal(err)
		}
		c.UseTail(useTail)
		var buf bytes.Buffer
		if _, err := c.CopyTo(&buf); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if !bytes.Equal(buf.Bytes(), want) {
			t.Fatalf("reader (tail %v) got %d bytes before the files, want %d", useTail, buf.Len(), len(want))
		}
	}
	behind.wb.fmu.Unlock()
	behind.Append([]byte{}, 0) // no kick: a later append kicks
	more := chunked(t, behind, 40, 2)
	chunked(t, through, 40, 2)
	want = append(want, more...)
	waitFlushed(t, behind)
	a, _ := listSegments(dirBehind)
	b, _ := listSegments(dirThrough)
	if len(a) < 5 || len(a) != len(b) {
		t.Fatalf("segments: write-behind %v, write-through %v", a, b)
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("segment %d: write-behind %+v, write-through %+v", i, a[i], b[i])
		}
		x, _ := os.ReadFile(a[i].path(dirBehind))
		y, _ := os.ReadFile(b[i].path(dirThrough))
		if !bytes.Equal(x, y) {
			t.Fatalf("segment %d differs", i)
		}
	}
	if err := behind.Close(); err != nil {
		t.Fatal(err)
	}
	re := openBehind(t, dirBehind, 50, 1<<20)
	if !bytes.Equal(readAll(t, re, 1), want) {
		t.Fatal("reopened log differs")
	}
}

// Append waits while the files trail by the limit, and goes on as soon as
// the flusher writes.
func TestWriteBehindLimitHoldsAppends(t *testing.T) {
	l := openBehind(t, t.TempDir(), 1<<20, 100)
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	l.wb.fmu.Lock()
	for i := range 9 { // 99 bytes waiting
		c := cmd(i)
		if _, err := l.Append(c, len(c)); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		c := cmd(9)
		_, err := l.Append(c, len(c))
		done <- err
	}()
	select {
	case err := <-done:
		l.wb.fmu.Unlock()
		t.Fatalf("append past the limit returned (%v) while the files could not take bytes", err)
	case <-time.After(100 * time.Millisecond):
	}
	l.wb.fmu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitFlushed(t, l)
}

// Close writes what memory holds; Reset discards it.
func TestWriteBehindCloseWritesResetDiscards(t *testing.T) {
	dir := t.TempDir()
	l := openBehind(t, dir, 60, 1<<20)
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	l.wb.fmu.Lock()
	old := chunked(t, l, 0, 10)
	closed := make(chan error, 1)
	go func() { closed <- l.Reset(1000, "u") }() // waits for the flusher's batch
	l.wb.fmu.Unlock()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if f, e := l.Range(); f != 1000 || e != 999 || l.Flushed() != 999 {
		t.Fatalf("after reset: range [%d, %d], flushed %d", f, e, l.Flushed())
	}
	_ = old
	l.wb.fmu.Lock()
	want := chunked(t, l, 100, 20)
	go func() { closed <- l.Close() }()
	l.wb.fmu.Unlock()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(cmd(0), 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	re := openBehind(t, dir, 60, 1<<20)
	if f, _ := re.Range(); f != 1000 || re.Tag() != "u" || !bytes.Equal(readAll(t, re, 1000), want) {
		t.Fatalf("reopened: first %d tag %q", f, re.Tag())
	}
}

// A write the files refuse stops intake with the error, and Close says
// what was not written: nothing is dropped silently.
func TestWriteBehindWriteErrorRefusesIntake(t *testing.T) {
	l := openBehind(t, t.TempDir(), 1<<20, 1<<20)
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	l.wb.fmu.Lock()
	l.mu.Lock()
	l.active.Close() // every write now fails
	l.mu.Unlock()
	c := cmd(0)
	if _, err := l.Append(c, len(c)); err != nil {
		t.Fatal(err)
	}
	l.wb.fmu.Unlock()
	l.Append(cmd(1), len(c)) // kicks the flusher, whatever it returns
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := l.Append(cmd(2), len(c))
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("appends still accepted after the files failed")
		}
		time.Sleep(time.Millisecond)
	}
	if l.Flushed() != 0 {
		t.Fatalf("flushed %d after failed writes", l.Flushed())
	}
	if err := l.Close(); err == nil {
		t.Fatal("close reported nothing lost")
	}
}

// Read (the held history's reader) gets bytes the files do not hold yet.
func TestWriteBehindReadFromMemory(t *testing.T) {
	l := openBehind(t, t.TempDir(), 1<<20, 1<<20)
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	l.wb.fmu.Lock()
	defer l.wb.fmu.Unlock()
	want := chunked(t, l, 0, 10)
	c, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var got []byte
	buf := make([]byte, 7)
	for len(got) < len(want) {
		n, err := c.Read(buf)
		if err != nil || n == 0 {
			t.Fatalf("read after %d bytes: %d, %v", len(got), n, err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("read differs")
	}
}

// WaitFlushed returns once the files hold the offset, not before.
func TestWriteBehindWaitFlushed(t *testing.T) {
	l := openBehind(t, t.TempDir(), 1<<20, 1<<20)
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	l.wb.fmu.Lock()
	chunked(t, l, 0, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err := l.WaitFlushed(ctx, 50)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		l.wb.fmu.Unlock()
		t.Fatalf("wait while the files hold nothing: %v", err)
	}
	l.wb.fmu.Unlock()
	l.Append(cmd(10), len(cmd(10))) // kicks the flusher
	if err := l.WaitFlushed(context.Background(), 50); err != nil || l.Flushed() < 50 {
		t.Fatalf("wait: %v, flushed %d", err, l.Flushed())
	}
	if err := l.WaitFlushed(context.Background(), l.End()+100); err != nil {
		t.Fatalf("wait past the end: %v", err)
	}
}
