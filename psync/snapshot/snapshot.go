// Package snapshot is storage for the RDB snapshot a relay serves for full
// syncs: it receives a payload into a temp file, verifies it (magic,
// version, the EOF opcode and the CRC-64 trailer), counts its keys as it
// streams by, installs it atomically and opens it for serving. It never
// holds a value in memory: the key count comes from a scan that skips
// values by their encoded lengths (ScanKeyspace).
package snapshot

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/atomicfile"
	"github.com/replproxy/replproxy/psync"
)

const (
	tmpPrefix = ".tmp-"
	suffix    = ".rdb"
	// headKeep is how much of the file start is kept for AUX parsing.
	headKeep = 64 << 10
	// minRDBVersionWithCRC: RDB 5 (Redis 2.6) introduced the checksum.
	minRDBVersionWithCRC = 5
)

// Info describes an installed snapshot.
type Info struct {
	Name       string    `json:"name"` // file name inside the snapshot dir
	ReplID     string    `json:"replid"`
	Offset     int64     `json:"offset"` // the +FULLRESYNC offset: stream bytes up to here are in it
	Size       int64     `json:"size"`
	Magic      string    `json:"magic"`
	RDBVersion int       `json:"rdb_version"`
	CRC        uint64    `json:"crc"`
	Created    time.Time `json:"created"`
	StreamDB   int       `json:"repl_stream_db"` // -1 when the RDB does not say
	// Keyspace is the per-database key count, taken while the payload was
	// received; nil when the scan could not walk it.
	Keyspace []KeyStats `json:"keyspace,omitempty"`
	// Source is where the snapshot came from: "upstream" or "replica".
	Source string `json:"source,omitempty"`
}

// FileName is where a snapshot of (replid, offset) lives.
func FileName(replid string, offset int64) string {
	return fmt.Sprintf("%s-%d%s", replid, offset, suffix)
}

// VerifyError is a payload that is not a valid RDB.
type VerifyError struct{ Reason string }

func (e *VerifyError) Error() string { return "snapshot rejected: " + e.Reason }

// Receiver writes an incoming payload to a temp file, checksumming on the fly.
type Receiver struct {
	dir     string
	f       *os.File
	size    int64
	crc     uint64
	tail    [8]byte // last bytes seen: the CRC trailer once complete
	tailLen int
	head    []byte
	done    bool
	count   *keyCounter
	// keyspaceErr: why the counts are missing.
	keyspaceErr error
}

// keyCounter scans a payload for its key counts while it is received: the
// receiver feeds it through a pipe, one goroutine that Finish and Abort
// join. A payload it cannot walk costs the counts, never the sync.
type keyCounter struct {
	pw     *io.PipeWriter
	failed bool // the scan ended early; stop feeding it
	done   chan struct{}
	stats  []KeyStats
	err    error
}

func startKeyCounter() *keyCounter {
	pr, pw := io.Pipe()
	k := &keyCounter{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(k.done)
		k.stats, k.err = ScanKeyspace(pr, ScanOptions{})
		pr.CloseWithError(errScanEnded) // unblocks a writer after an early end
	}()
	return k
}

var errScanEnded = errors.New("snapshot: key scan ended")

func (k *keyCounter) write(p []byte) {
	if k.failed {
		return
	}
	if _, err := k.pw.Write(p); err != nil {
		k.failed = true
	}
}

// finish ends the input and waits for the scan's result.
func (k *keyCounter) finish(cause error) ([]KeyStats, error) {
	if cause != nil {
		k.pw.CloseWithError(cause)
	} else {
		k.pw.Close()
	}
	<-k.done
	return k.stats, k.err
}

// NewReceiver starts receiving a payload into dir.
func NewReceiver(dir string) (*Receiver, error) {
	if err := atomicfile.MkdirAll(dir, 0o755, nil); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	f, err := os.OpenFile(filepath.Join(dir, tmpPrefix+hex.EncodeToString(rnd[:])+suffix), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("snapshot: create temp file: %w", err)
	}
	return &Receiver{dir: dir, f: f, head: make([]byte, 0, 4096), count: startKeyCounter()}, nil
}

// Write appends payload bytes. The CRC covers everything but the final 8
// bytes, which are held back until more data proves they are not the end.
func (r *Receiver) Write(p []byte) (int, error) {
	n, err := r.f.Write(p)
	if err != nil {
		return n, fmt.Errorf("snapshot: write temp file: %w", err)
	}
	r.size += int64(n)
	r.count.write(p)
	if len(r.head) < headKeep {
		k := min(headKeep-len(r.head), len(p))
		r.head = append(r.head, p[:k]...)
	}
	if len(p) >= 8 {
		r.crc = psync.CRC64(r.crc, r.tail[:r.tailLen])
		r.crc = psync.CRC64(r.crc, p[:len(p)-8])
		r.tailLen = copy(r.tail[:], p[len(p)-8:])
		return n, nil
	}
	// Short write: shift the tail, checksumming what falls out of it.
	all := append(r.tail[:r.tailLen:r.tailLen], p...)
	if over := len(all) - 8; over > 0 {
		r.crc = psync.CRC64(r.crc, all[:over])
		all = all[over:]
	}
	r.tailLen = copy(r.tail[:], all)
	return n, nil
}

// Size is the number of bytes received so far.
func (r *Receiver) Size() int64 { return r.size }

// Abort removes the temp file. It is safe to call after Finish.
func (r *Receiver) Abort() {
	if r.done {
		return
	}
	r.done = true
	_, _ = r.count.finish(errAborted)
	name := r.f.Name()
	r.f.Close()
	os.Remove(name)
}

var errAborted = errors.New("snapshot: receive aborted")

// KeyspaceError is why a finished snapshot has no key counts (nil when it
// has them).
func (r *Receiver) KeyspaceError() error { return r.keyspaceErr }

// Finish verifies the payload and installs it as the snapshot of (replid,
// offset). On any error the temp file is removed.
func (r *Receiver) Finish(replid string, offset int64) (*Info, error) {
	if r.done {
		return nil, errors.New("snapshot: receiver already finished")
	}
	info, err := r.verify(replid, offset)
	if err != nil {
		r.Abort()
		return nil, err
	}
	info.Keyspace, r.keyspaceErr = r.count.finish(nil)
	if err := r.f.Sync(); err != nil {
		r.Abort()
		return nil, fmt.Errorf("snapshot: fsync: %w", err)
	}
	tmp := r.f.Name()
	if err := r.f.Close(); err != nil {
		r.done = true
		os.Remove(tmp)
		return nil, fmt.Errorf("snapshot: close: %w", err)
	}
	r.done = true
	if err := os.Rename(tmp, filepath.Join(r.dir, info.Name)); err != nil {
		os.Remove(tmp)
		return nil, fmt.Errorf("snapshot: install: %w", err)
	}
	if err := syncDir(r.dir); err != nil {
		return nil, err
	}
	return info, nil
}

func (r *Receiver) verify(replid string, offset int64) (*Info, error) {
	h, err := ParseHeader(r.head)
	if err != nil {
		return nil, &VerifyError{Reason: err.Error()}
	}
	if h.Version < minRDBVersionWithCRC {
		return nil, &VerifyError{Reason: fmt.Sprintf("RDB version %d has no checksum; unsupported", h.Version)}
	}
	if r.size < 9+1+8 || r.tailLen != 8 {
		return nil, &VerifyError{Reason: fmt.Sprintf("truncated: %d bytes", r.size)}
	}
	// The byte before the trailer must be the EOF opcode. It was checksummed
	// already; read it back from the file.
	var op [1]byte
	if _, err := r.readAt(op[:], r.size-9); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if op[0] != opEOF {
		return nil, &VerifyError{Reason: fmt.Sprintf("no EOF opcode before the checksum (0x%02x)", op[0])}
	}
	stored := binary.LittleEndian.Uint64(r.tail[:])
	if stored != 0 && stored != r.crc {
		return nil, &VerifyError{Reason: fmt.Sprintf("CRC mismatch: stored %016x, computed %016x", stored, r.crc)}
	}
	info := &Info{
		Name: FileName(replid, offset), ReplID: replid, Offset: offset, Size: r.size,
		Magic: h.Magic, RDBVersion: h.Version, CRC: stored, Created: time.Now().UTC(), StreamDB: -1,
	}
	if db, ok := h.Aux["repl-stream-db"]; ok {
		if n, err := strconv.Atoi(db); err == nil {
			info.StreamDB = n
		}
	}
	// The RDB must describe the same point in history as the +FULLRESYNC
	// line, or a replica restarting from it would PSYNC at a wrong offset.
	if id, ok := h.Aux["repl-id"]; ok && id != replid {
		return nil, &VerifyError{Reason: fmt.Sprintf("aux repl-id %s differs from FULLRESYNC id %s", id, replid)}
	}
	if off, ok := h.Aux["repl-offset"]; ok && off != strconv.FormatInt(offset, 10) {
		return nil, &VerifyError{Reason: fmt.Sprintf("aux repl-offset %s differs from FULLRESYNC offset %d", off, offset)}
	}
	return info, nil
}

func (r *Receiver) readAt(p []byte, off int64) (int, error) {
	f, err := os.Open(r.f.Name())
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.ReadAt(p, off)
}

// Open opens an installed snapshot for serving and checks its size.
func Open(dir string, info *Info) (*os.File, error) {
	f, err := os.Open(filepath.Join(dir, info.Name))
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if st.Size() != info.Size {
		f.Close()
		return nil, fmt.Errorf("snapshot: %s is %d bytes, expected %d", info.Name, st.Size(), info.Size)
	}
	return f, nil
}

// Remove deletes an installed snapshot file.
func Remove(dir string, info *Info) error {
	err := os.Remove(filepath.Join(dir, info.Name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// Cleanup removes temp files and every snapshot other than keep ("" keeps
// none). It returns the names removed.
func Cleanup(dir, keep string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	var removed []string
	for _, e := range ents {
		name := e.Name()
		if name == keep || !strings.HasSuffix(name, suffix) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			return removed, fmt.Errorf("snapshot: cleanup: %w", err)
		}
		removed = append(removed, name)
	}
	return removed, nil
}

func syncDir(dir string) error {
	if err := atomicfile.SyncDir(dir, nil); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}
