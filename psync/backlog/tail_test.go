package backlog

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"
)

// streamByte is the byte at offset off of generation gen's stream: any
// gap, duplicate or misplaced byte shows.
func streamByte(gen int, off int64) byte { return byte(off*7 + off>>9 + int64(gen)*31) }

// slowWriter collects bytes; now and then it stalls, so its reader falls
// behind the tail onto the files, and then catches up onto the tail.
type slowWriter struct {
	buf   bytes.Buffer
	rnd   *rand.Rand
	stall time.Duration
}

func (w *slowWriter) Write(p []byte) (int, error) {
	if w.rnd.IntN(4) == 0 {
		time.Sleep(w.stall)
	}
	// Short writes too: the cursor must resume exactly after them.
	if len(p) > 1 && w.rnd.IntN(5) == 0 {
		n := 1 + w.rnd.IntN(len(p)-1)
		w.buf.Write(p[:n])
		return n, errShort
	}
	return w.buf.Write(p)
}

var errShort = errors.New("short write")

// TestTailAndFilesUnderChurn: cursors reading with UseTail while a writer
// appends in uneven chunks, trims and resets, and while they stall now and
// then (so they move from the tail to the files and back), receive
// exactly the stream from their start: no gap, no duplicate, no stale
// block. Run with -race: the tail is shared without locks.
func TestTailAndFilesUnderChurn(t *testing.T) {
	for _, bs := range []int{256 << 10, 4 << 10} { // real blocks; tiny ones that recycle under stalled readers
		t.Run(strconv.Itoa(bs), func(t *testing.T) { tailChurn(t, bs) })
	}
}

func tailChurn(t *testing.T, blockSize int) {
	defer func(old int) { tailBlockSize = old }(tailBlockSize)
	tailBlockSize = blockSize
	l, _, err := Open(t.TempDir(), Options{SegmentSize: 64 << 10, Fsync: FsyncNo, TailSize: int64(blockSize) * 5 / 4})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	perGen := int64(6 << 20)
	if blockSize < 64<<10 {
		perGen = 1 << 20 // small appends: fewer bytes, as many wake-ups
	}
	for gen := 0; gen < 3; gen++ {
		start := int64(1 + gen*1000)
		if err := l.Reset(start, "gen"); err != nil {
			t.Fatal(err)
		}
		g := l.View().Gen
		ctx, cancel := context.WithCancel(context.Background())
		var readers sync.WaitGroup
		type result struct {
			from int64
			got  []byte
			err  error
		}
		results := make(chan result, 64)
		var mu sync.Mutex
		var curs []*Cursor
		startReader := func(seed uint64, from int64) {
			c, err := l.NewCursorGen(from, g)
			if err != nil {
				t.Errorf("cursor at %d: %v", from, err)
				return
			}
			c.UseTail(true)
			mu.Lock()
			curs = append(curs, c)
			mu.Unlock()
			readers.Go(func() {
				defer c.Close()
				w := &slowWriter{rnd: rand.New(rand.NewPCG(seed, 1)), stall: time.Duration(seed%4) * time.Millisecond}
				var err error
				for {
					if _, err = c.CopyTo(w); err != nil && !errors.Is(err, errShort) {
						break
					}
					if err == nil {
						if err = c.Wait(ctx); err != nil {
							break
						}
					}
				}
				results <- result{from: from, got: w.buf.Bytes(), err: err}
			})
		}
		rnd := rand.New(rand.NewPCG(uint64(gen), 2))
		chunk := make([]byte, 0, 200<<10)
		for off := start; off < start+perGen; {
			n := 1 + rnd.IntN(min(150<<10, blockSize/2))
			chunk = chunk[:0]
			for i := range n {
				chunk = append(chunk, streamByte(gen, off+int64(i)))
			}
			if _, err := l.Append(chunk, -1); err != nil {
				t.Fatal(err)
			}
			off += int64(n)
			switch rnd.IntN(40) {
			case 0: // a new reader somewhere in what the files hold
				v := l.View()
				startReader(uint64(off), v.Start+rnd.Int64N(v.End-v.Start+1))
			case 2: // one at the end: it reads the tail while blocks recycle
				startReader(uint64(off)|1, l.View().End+1)
			case 1:
				if _, err := l.Trim(l.View().End-(2<<20), 2<<20); err != nil {
					t.Fatal(err)
				}
			}
		}
		end := l.View().End
		// Every reader still going catches up (the trimmed ones have ended).
		caughtUp := func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, c := range curs {
				if p := c.Pos(); p != end+1 && p >= l.View().Start {
					return false
				}
			}
			return true
		}
		for deadline := time.Now().Add(30 * time.Second); !caughtUp(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("readers did not catch up")
			}
		}
		cancel()
		readers.Wait()
		close(results)
		n := 0
		var fromTail, fromFiles int64
		for _, c := range curs {
			fromTail, fromFiles = fromTail+c.tailBytes, fromFiles+c.fileBytes
		}
		if fromTail == 0 || fromFiles == 0 {
			t.Fatalf("gen %d: %d bytes from the tail, %d from the files: both paths must be exercised", gen, fromTail, fromFiles)
		}
		for r := range results {
			n++
			if !errors.Is(r.err, context.Canceled) && !errors.Is(r.err, ErrTrimmed) {
				t.Errorf("gen %d reader from %d ended with %v", gen, r.from, r.err)
			}
			for i, b := range r.got {
				if want := streamByte(gen, r.from+int64(i)); b != want {
					t.Fatalf("gen %d reader from %d: byte %d (offset %d) is %#x, want %#x", gen, r.from, i, r.from+int64(i), b, want)
				}
			}
			if errors.Is(r.err, context.Canceled) && r.from+int64(len(r.got)) != end+1 {
				t.Errorf("gen %d reader from %d stopped at %d, end %d", gen, r.from, r.from+int64(len(r.got)), end)
			}
		}
		if n == 0 {
			t.Fatalf("gen %d: no reader ran", gen)
		}
	}
}

// TestTailResetFailsReaders: a Reset while a reader streams from the tail
// ends it with ErrReset, and it never receives bytes of the new history.
func TestTailResetFailsReaders(t *testing.T) {
	l, _, err := Open(t.TempDir(), Options{SegmentSize: 1 << 20, Fsync: FsyncNo, TailSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Reset(1, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(bytes.Repeat([]byte{'a'}, 1000), -1); err != nil {
		t.Fatal(err)
	}
	c, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.UseTail(true)
	var got bytes.Buffer
	if n, err := c.CopyTo(&got); n != 1000 || err != nil {
		t.Fatalf("CopyTo %d %v", n, err)
	}
	if err := l.Reset(1, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(bytes.Repeat([]byte{'b'}, 1000), -1); err != nil {
		t.Fatal(err)
	}
	if n, err := c.CopyTo(&got); n != 0 || !errors.Is(err, ErrReset) {
		t.Fatalf("after a reset: CopyTo %d %v", n, err)
	}
	if err := c.Wait(context.Background()); !errors.Is(err, ErrReset) {
		t.Fatalf("Wait after a reset: %v", err)
	}
	if bytes.Contains(got.Bytes(), []byte{'b'}) {
		t.Fatal("a reader of the old history got bytes of the new one")
	}
}

// TestInspectCovered: with more than one segment, Inspect says since when
// the backlog surely holds the stream: the first segment's last write.
func TestInspectCovered(t *testing.T) {
	dir := t.TempDir()
	l, _, err := Open(dir, Options{SegmentSize: 100, Fsync: FsyncNo})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Reset(1, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(bytes.Repeat([]byte{'x'}, 50), 50); err != nil {
		t.Fatal(err)
	}
	if s, err := Inspect(dir); err != nil || s.Segments != 1 || !s.Covered.IsZero() {
		t.Fatalf("one segment: %+v %v", s, err)
	}
	before := time.Now().Add(-time.Second)
	if _, err := l.Append(bytes.Repeat([]byte{'y'}, 150), 150); err != nil {
		t.Fatal(err)
	}
	s, err := Inspect(dir)
	if err != nil || s.Segments < 2 || s.Covered.Before(before) || s.Covered.After(time.Now()) {
		t.Fatalf("two segments: %+v %v", s, err)
	}
}
