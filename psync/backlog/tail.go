package backlog

import (
	"io"
	"sort"
	"sync/atomic"
)

// The tail keeps the newest bytes of the log in memory, so caught-up
// readers are fed from there with one write (writev) per wake-up instead
// of going through the segment files. The log's writer appends every
// stored byte once; readers never copy the stream for themselves.
//
// Memory is a ring of fixed blocks. A reader pins the blocks it writes
// from (refs); the writer recycles an evicted block only when no reader
// holds it, and otherwise leaves it to the collector, so a stalled reader
// keeps at most the blocks of one write alive. Each block carries an epoch,
// bumped when it is recycled, so a reader holding a stale index entry
// notices and falls back to the files.

// tailBlock is one block of the ring.
type tailBlock struct {
	data   []byte
	filled atomic.Int64 // bytes of data that are valid
	refs   atomic.Int32 // readers writing from it; < 0 once recycled
	epoch  atomic.Uint64
}

// tailEntry is a block as one index generation saw it.
type tailEntry struct {
	b     *tailBlock
	base  int64
	epoch uint64
}

// tailIndex is an immutable list of contiguous blocks, oldest first.
type tailIndex struct {
	gen     uint64 // the log's generation
	entries []tailEntry
}

const deadRefs = -1 << 30

// tail is owned by the log's writer (append, reset under the log's
// mutex); readers use only idx and the blocks' atomics.
type tail struct {
	capacity  int64
	blockSize int
	idx       atomic.Pointer[tailIndex]
	free      []*tailBlock // writer only
}

// tailBlockSize: large enough that a full ring is a few hundred blocks,
// small enough that a pinned block costs little.
var tailBlockSize = 256 << 10

func newTail(capacity int64) *tail {
	if capacity <= 0 {
		return nil
	}
	bs := int(min(int64(tailBlockSize), capacity))
	return &tail{capacity: capacity, blockSize: bs}
}

// reset empties the ring for generation gen.
func (t *tail) reset(gen uint64) {
	if old := t.idx.Load(); old != nil {
		for _, e := range old.entries {
			t.recycle(e.b)
		}
	}
	t.idx.Store(&tailIndex{gen: gen})
}

// append adds p, which the log stored at offset off of generation gen. A
// gap (the ring was reset or has not seen the bytes before off) starts
// the ring afresh at off. Blocks holding any byte at or after keepFrom
// stay (write-behind: bytes not yet in the files), whatever the capacity.
func (t *tail) append(gen uint64, off int64, p []byte, keepFrom int64) {
	idx := t.idx.Load()
	if idx == nil || idx.gen != gen || len(idx.entries) == 0 || tailEnd(idx) != off {
		t.reset(gen)
		idx = t.idx.Load()
	}
	entries := idx.entries
	changed := false
	for len(p) > 0 {
		var b *tailBlock
		if len(entries) > 0 {
			b = entries[len(entries)-1].b
		}
		if b == nil || int(b.filled.Load()) == len(b.data) {
			b = t.block()
			entries = append(entries[:len(entries):len(entries)], tailEntry{b: b, base: off, epoch: b.epoch.Load()})
			changed = true
		}
		n := int(b.filled.Load())
		c := copy(b.data[n:], p)
		b.filled.Store(int64(n + c)) // publishes the bytes to readers
		p, off = p[c:], off+int64(c)
	}
	// Evict from the front beyond capacity, keeping the newest block.
	for len(entries) > 1 && off-entries[1].base >= t.capacity && entries[1].base <= keepFrom {
		t.recycle(entries[0].b)
		entries, changed = entries[1:], true
	}
	if changed {
		t.idx.Store(&tailIndex{gen: gen, entries: entries})
	}
}

// block returns a block: a recycled one, or a new one.
func (t *tail) block() *tailBlock {
	var b *tailBlock
	if n := len(t.free); n > 0 {
		b, t.free = t.free[n-1], t.free[:n-1]
		b.filled.Store(0)
		b.refs.Store(0)
	} else {
		b = &tailBlock{data: make([]byte, t.blockSize)}
	}
	return b
}

// recycle takes a block out of service: reused if no reader holds it,
// otherwise left to the collector once its readers let go.
func (t *tail) recycle(b *tailBlock) {
	if b.refs.CompareAndSwap(0, deadRefs) {
		b.epoch.Add(1)
		t.free = append(t.free, b)
	}
}

func tailEnd(idx *tailIndex) int64 {
	last := idx.entries[len(idx.entries)-1]
	return last.base + last.b.filled.Load()
}

// maxTailWrite bounds one write from the ring, so a slow reader pins few
// blocks and its write deadline covers a bounded amount.
const maxTailWrite = 4 << 20

// copyFrom writes what the ring holds from pos on, at most limit bytes, to
// w. ok is false when the ring does not hold pos (the caller reads the
// files); n is how many bytes went out.
func (t *tail) copyFrom(gen uint64, pos, limit int64, w io.Writer) (n int64, ok bool, err error) {
	idx := t.idx.Load()
	if idx == nil || idx.gen != gen || len(idx.entries) == 0 || pos < idx.entries[0].base {
		return 0, false, nil
	}
	es := idx.entries
	i := sort.Search(len(es), func(i int) bool { return es[i].base > pos }) - 1
	var held []*tailBlock
	defer func() {
		for _, b := range held {
			b.refs.Add(-1)
		}
	}()
	var bufs [][]byte
	at, total := pos, int64(0)
	for ; i < len(es) && total < limit; i++ {
		e := es[i]
		if r := e.b.refs.Add(1); r <= 0 { // recycled: leave the count dead
			return 0, false, nil
		}
		held = append(held, e.b)
		if e.b.epoch.Load() != e.epoch {
			return 0, false, nil
		}
		filled := e.b.filled.Load()
		if at < e.base || at > e.base+filled {
			return 0, false, nil // a gap: cannot happen in one index, but never guess
		}
		chunk := e.b.data[at-e.base : filled]
		if int64(len(chunk)) > limit-total {
			chunk = chunk[:limit-total]
		}
		if len(chunk) > 0 {
			bufs = append(bufs, chunk)
			at += int64(len(chunk))
			total += int64(len(chunk))
		}
		if filled < int64(len(e.b.data)) {
			break // the newest bytes end here
		}
	}
	if total == 0 {
		return 0, true, nil
	}
	// One write per block (the tail serves TLS replicas, whose writer
	// encrypts record by record: a vectored write would gain nothing).
	for _, b := range bufs {
		m, werr := w.Write(b)
		n += int64(m)
		if werr != nil {
			return n, true, werr
		}
	}
	return n, true, nil
}
