package snapshot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
)

// KeyStats counts the keys of one database.
type KeyStats struct {
	DB      int   `json:"db"`
	Keys    int64 `json:"keys"`
	Expires int64 `json:"expires"`
	// HintKeys and HintExpires are the RESIZEDB hint the server wrote for
	// this database (-1 when it wrote none).
	HintKeys    int64            `json:"hint_keys"`
	HintExpires int64            `json:"hint_expires"`
	ByType      map[string]int64 `json:"by_type,omitempty"`
}

// ScanOptions shape a keyspace scan.
type ScanOptions struct {
	// Types also counts keys by type (string, list, set, zset, hash,
	// stream, module).
	Types bool
}

// ScanError is an RDB the scanner cannot walk: corrupt, truncated or of a
// format it does not know. Offset is where the problem was found.
type ScanError struct {
	Offset int64
	Reason string
}

func (e *ScanError) Error() string {
	return fmt.Sprintf("rdb scan: %s at byte %d", e.Reason, e.Offset)
}

// maxDatabases bounds the distinct databases a scan tracks, so a corrupt
// file of SELECTDB opcodes cannot grow its memory.
const maxDatabases = 1 << 16

// scanBuf is the scanner's only buffer: memory is this, whatever the values.
const scanBuf = 256 << 10

// ScanKeyspace walks a whole RDB (header included), skipping every value
// by its encoded lengths, and counts keys per database. It never
// materialises a value: its memory is one fixed buffer, and a length field
// it reads is never an allocation, only a distance to skip.
func ScanKeyspace(r io.Reader, opts ScanOptions) ([]KeyStats, error) {
	s := &rdbScanner{src: r, buf: make([]byte, scanBuf), opts: opts, dbs: map[uint64]*KeyStats{}}
	return s.run()
}

// ScanFile is ScanKeyspace over an installed snapshot; long values are
// skipped without being read. It stops early when ctx ends.
func ScanFile(ctx context.Context, dir string, info *Info, opts ScanOptions) ([]KeyStats, error) {
	f, err := Open(dir, info)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := &rdbScanner{ctx: ctx, at: f, size: info.Size, buf: make([]byte, scanBuf), opts: opts, dbs: map[uint64]*KeyStats{}}
	ks, err := s.run()
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", filepath.Base(info.Name), err)
	}
	return ks, nil
}

// rdbScanner reads from src (a stream) or at (random access, size bytes).
type rdbScanner struct {
	ctx  context.Context // nil: never cancelled
	src  io.Reader
	at   io.ReaderAt
	size int64

	buf  []byte
	r, w int   // unread bytes are buf[r:w]
	pos  int64 // file offset of buf[r]
	eof  bool

	opts    ScanOptions
	version int
	valkey  bool
	dbs     map[uint64]*KeyStats
	db      *KeyStats
}

func (s *rdbScanner) fail(format string, a ...any) error {
	return &ScanError{Offset: s.pos, Reason: fmt.Sprintf(format, a...)}
}

var errTruncated = errors.New("truncated")

// fill makes at least n (<= len(buf)) bytes available.
func (s *rdbScanner) fill(n int) error {
	if s.w-s.r >= n {
		return nil
	}
	if s.r > 0 {
		copy(s.buf, s.buf[s.r:s.w])
		s.w -= s.r
		s.r = 0
	}
	for s.w < n {
		if s.eof {
			return &ScanError{Offset: s.pos + int64(s.w), Reason: errTruncated.Error()}
		}
		var m int
		var err error
		if s.at != nil {
			want := s.buf[s.w:]
			if left := s.size - (s.pos + int64(s.w)); left < int64(len(want)) {
				want = want[:max(left, 0)]
			}
			if len(want) == 0 {
				s.eof = true
				continue
			}
			m, err = s.at.ReadAt(want, s.pos+int64(s.w))
		} else {
			m, err = s.src.Read(s.buf[s.w:])
		}
		s.w += m
		if errors.Is(err, io.EOF) {
			s.eof = true
		} else if err != nil {
			return fmt.Errorf("rdb scan: read: %w", err)
		}
	}
	return nil
}

func (s *rdbScanner) byte() (byte, error) {
	if s.r == s.w {
		if err := s.fill(1); err != nil {
			return 0, err
		}
	}
	b := s.buf[s.r]
	s.r++
	s.pos++
	return b, nil
}

// skip passes over n bytes. With random access, bytes past the buffer are
// not read at all.
func (s *rdbScanner) skip(n uint64) error {
	if avail := uint64(s.w - s.r); n <= avail {
		s.r += int(n)
		s.pos += int64(n)
		return nil
	}
	if s.at != nil {
		if n > uint64(s.size-s.pos) {
			return &ScanError{Offset: s.pos, Reason: fmt.Sprintf("%s: a %d-byte value runs past the end", errTruncated, n)}
		}
		s.pos += int64(n)
		s.r, s.w = 0, 0
		return nil
	}
	for n > 0 {
		if s.r == s.w {
			if err := s.fill(1); err != nil {
				return err
			}
		}
		k := min(n, uint64(s.w-s.r))
		s.r += int(k)
		s.pos += int64(k)
		n -= k
	}
	return nil
}

// length reads an RDB length; enc reports the special-encoding form (the
// low 6 bits are then the encoding).
func (s *rdbScanner) length() (n uint64, enc bool, err error) {
	b, err := s.byte()
	if err != nil {
		return 0, false, err
	}
	switch b >> 6 {
	case 0:
		return uint64(b & 0x3F), false, nil
	case 1:
		b2, err := s.byte()
		if err != nil {
			return 0, false, err
		}
		return uint64(b&0x3F)<<8 | uint64(b2), false, nil
	case 3:
		return uint64(b & 0x3F), true, nil
	}
	var width int
	switch b {
	case 0x80:
		width = 4
	case 0x81:
		width = 8
	default:
		return 0, false, s.fail("bad length byte 0x%02x", b)
	}
	if err := s.fill(width); err != nil {
		return 0, false, err
	}
	p := s.buf[s.r : s.r+width]
	if width == 4 {
		n = uint64(binary.BigEndian.Uint32(p))
	} else {
		n = binary.BigEndian.Uint64(p)
	}
	s.r += width
	s.pos += int64(width)
	return n, false, nil
}

// plainLength is a length that must not be a special encoding.
func (s *rdbScanner) plainLength(what string) (uint64, error) {
	n, enc, err := s.length()
	if err == nil && enc {
		err = s.fail("%s: unexpected encoded length", what)
	}
	return n, err
}

// skipString passes over a string object: raw, integer or LZF.
func (s *rdbScanner) skipString() error {
	n, enc, err := s.length()
	if err != nil {
		return err
	}
	if !enc {
		return s.skip(n)
	}
	switch n {
	case 0:
		return s.skip(1)
	case 1:
		return s.skip(2)
	case 2:
		return s.skip(4)
	case 3: // LZF: compressed length, uncompressed length, data
		clen, err := s.plainLength("lzf")
		if err != nil {
			return err
		}
		if _, err := s.plainLength("lzf"); err != nil {
			return err
		}
		return s.skip(clen)
	}
	return s.fail("unknown string encoding %d", n)
}

func (s *rdbScanner) skipStrings(n uint64) error {
	for ; n > 0; n-- {
		if err := s.skipString(); err != nil {
			return err
		}
	}
	return nil
}

// skipDouble passes over a pre-RDB-8 zset score: a length byte (253-255
// are NaN and the infinities) and that many ASCII bytes.
func (s *rdbScanner) skipDouble() error {
	b, err := s.byte()
	if err != nil {
		return err
	}
	if b >= 253 {
		return nil
	}
	return s.skip(uint64(b))
}

func (s *rdbScanner) skipLengths(n int) error {
	for range n {
		if _, err := s.plainLength("field"); err != nil {
			return err
		}
	}
	return nil
}

// Module value opcodes (RDB_MODULE_OPCODE_*).
const (
	modEOF = iota
	modSInt
	modUInt
	modFloat
	modDouble
	modString
)

// skipModuleValue passes over a module value or module aux block: the
// module id, then typed fields up to the EOF opcode. A MODULE_AUX block's
// "when" field is itself a UINT opcode and value, so the same walk fits.
func (s *rdbScanner) skipModuleValue() error {
	if _, err := s.plainLength("module id"); err != nil {
		return err
	}
	for {
		op, err := s.plainLength("module opcode")
		if err != nil {
			return err
		}
		switch op {
		case modEOF:
			return nil
		case modSInt, modUInt:
			err = s.skipLengths(1)
		case modFloat:
			err = s.skip(4)
		case modDouble:
			err = s.skip(8)
		case modString:
			err = s.skipString()
		default:
			return s.fail("unknown module opcode %d", op)
		}
		if err != nil {
			return err
		}
	}
}

// skipStream passes over a stream of type 15, 19 or 21.
func (s *rdbScanner) skipStream(t byte) error {
	nodes, err := s.plainLength("stream nodes")
	if err != nil {
		return err
	}
	for ; nodes > 0; nodes-- {
		if err := s.skipStrings(2); err != nil { // master ID, listpack
			return err
		}
	}
	meta := 3 // length, last ID ms and seq
	if t >= typeStreamListpacks2 {
		meta += 5 // first ID, max deleted ID, entries added
	}
	if err := s.skipLengths(meta); err != nil {
		return err
	}
	groups, err := s.plainLength("stream groups")
	if err != nil {
		return err
	}
	for ; groups > 0; groups-- {
		if err := s.skipString(); err != nil { // group name
			return err
		}
		fields := 2 // last delivered ID
		if t >= typeStreamListpacks2 {
			fields++ // entries read
		}
		if err := s.skipLengths(fields); err != nil {
			return err
		}
		pel, err := s.plainLength("stream PEL")
		if err != nil {
			return err
		}
		for ; pel > 0; pel-- {
			if err := s.skip(16 + 8); err != nil { // raw ID, delivery time
				return err
			}
			if err := s.skipLengths(1); err != nil { // delivery count
				return err
			}
		}
		consumers, err := s.plainLength("stream consumers")
		if err != nil {
			return err
		}
		for ; consumers > 0; consumers-- {
			if err := s.skipString(); err != nil { // consumer name
				return err
			}
			times := uint64(8) // seen time
			if t >= typeStreamListpacks3 {
				times += 8 // active time
			}
			if err := s.skip(times); err != nil {
				return err
			}
			cpel, err := s.plainLength("consumer PEL")
			if err != nil {
				return err
			}
			if cpel > uint64(s.remaining())/16 {
				return s.fail("%s: consumer PEL of %d entries", errTruncated, cpel)
			}
			if err := s.skip(cpel * 16); err != nil {
				return err
			}
		}
	}
	return nil
}

// remaining is how many bytes may still follow (math.MaxInt64 for a
// stream of unknown length).
func (s *rdbScanner) remaining() int64 {
	if s.at != nil {
		return s.size - s.pos
	}
	return 1<<63 - 1
}

// RDB value types (rdb.h).
const (
	typeString           = 0
	typeList             = 1
	typeSet              = 2
	typeZset             = 3
	typeHash             = 4
	typeZset2            = 5
	typeModule           = 6
	typeModule2          = 7
	typeHashZipmap       = 9
	typeListZiplist      = 10
	typeSetIntset        = 11
	typeZsetZiplist      = 12
	typeHashZiplist      = 13
	typeListQuicklist    = 14
	typeStreamListpacks  = 15
	typeHashListpack     = 16
	typeZsetListpack     = 17
	typeListQuicklist2   = 18
	typeStreamListpacks2 = 19
	typeSetListpack      = 20
	typeStreamListpacks3 = 21
	typeHashMetaPreGA    = 22 // Redis 7.4 RC; under VALKEY magic, Valkey 9's HASH_2
	typeHashLPExPreGA    = 23
	typeHashMeta         = 24 // Redis 7.4 hash field expiry
	typeHashLPEx         = 25
)

// RDB opcodes (rdb.h).
const (
	opSlotInfo    = 244
	opFunction2   = 245
	opFunctionRC  = 246
	opModuleAux   = 247
	opIdle        = 248
	opFreq        = 249
	opResizeDB    = 251
	opExpireMs    = 252
	opExpireSec   = 253
	opSelectDB    = 254
	opcodeKeyMeta = 243 // Redis 8 KEY_META / Valkey SLOT_IMPORT
)

// skipValue passes over one value of type t and returns its type's name.
func (s *rdbScanner) skipValue(t byte) (string, error) {
	switch t {
	case typeString:
		return "string", s.skipString()
	case typeList, typeSet:
		n, err := s.plainLength("elements")
		if err == nil {
			err = s.skipStrings(n)
		}
		if t == typeList {
			return "list", err
		}
		return "set", err
	case typeZset:
		n, err := s.plainLength("elements")
		for ; err == nil && n > 0; n-- {
			if err = s.skipString(); err == nil {
				err = s.skipDouble()
			}
		}
		return "zset", err
	case typeZset2:
		n, err := s.plainLength("elements")
		for ; err == nil && n > 0; n-- {
			if err = s.skipString(); err == nil {
				err = s.skip(8)
			}
		}
		return "zset", err
	case typeHash:
		n, err := s.plainLength("fields")
		for ; err == nil && n > 0; n-- {
			err = s.skipStrings(2)
		}
		return "hash", err
	case typeListQuicklist:
		n, err := s.plainLength("quicklist nodes")
		if err == nil {
			err = s.skipStrings(n)
		}
		return "list", err
	case typeListQuicklist2:
		n, err := s.plainLength("quicklist nodes")
		for ; err == nil && n > 0; n-- {
			if err = s.skipLengths(1); err == nil { // container: plain or packed
				err = s.skipString()
			}
		}
		return "list", err
	case typeHashZipmap, typeHashZiplist, typeHashListpack, typeHashLPExPreGA:
		return "hash", s.skipString()
	case typeListZiplist:
		return "list", s.skipString()
	case typeSetIntset, typeSetListpack:
		return "set", s.skipString()
	case typeZsetZiplist, typeZsetListpack:
		return "zset", s.skipString()
	case typeStreamListpacks, typeStreamListpacks2, typeStreamListpacks3:
		return "stream", s.skipStream(t)
	case typeModule2:
		return "module", s.skipModuleValue()
	case typeHashMetaPreGA, typeHashMeta:
		if t == typeHashMeta && !s.valkey {
			if err := s.skip(8); err != nil { // minimum expiry
				return "hash", err
			}
		}
		n, err := s.plainLength("fields")
		for ; err == nil && n > 0; n-- {
			switch {
			case s.valkey && t == typeHashMetaPreGA: // Valkey 9 HASH_2: field, value, expiry
				if err = s.skipStrings(2); err == nil {
					err = s.skip(8)
				}
			default: // Redis 7.4: ttl, field, value
				if err = s.skipLengths(1); err == nil {
					err = s.skipStrings(2)
				}
			}
		}
		return "hash", err
	case typeHashLPEx:
		if err := s.skip(8); err != nil { // minimum expiry
			return "hash", err
		}
		return "hash", s.skipString()
	case typeModule:
		return "", s.fail("pre-release module value (type 6) is not supported")
	}
	return "", s.fail("unknown value type %d", t)
}

func (s *rdbScanner) selectDB(n uint64) error {
	if ks, ok := s.dbs[n]; ok {
		s.db = ks
		return nil
	}
	if n > 1<<31 || len(s.dbs) >= maxDatabases {
		return s.fail("database %d out of range", n)
	}
	ks := &KeyStats{DB: int(n), HintKeys: -1, HintExpires: -1}
	if s.opts.Types {
		ks.ByType = map[string]int64{}
	}
	s.dbs[n] = ks
	s.db = ks
	return nil
}

func (s *rdbScanner) header() error {
	if err := s.fill(9); err != nil {
		return err
	}
	h, err := ParseHeader(s.buf[s.r : s.r+9])
	if err != nil {
		return &ScanError{Offset: 0, Reason: err.Error()}
	}
	s.version, s.valkey = h.Version, h.Magic == "VALKEY"
	s.r += 9
	s.pos += 9
	return nil
}

func (s *rdbScanner) run() ([]KeyStats, error) {
	if err := s.header(); err != nil {
		return nil, err
	}
	expiry := false
	for {
		t, err := s.byte()
		if err != nil {
			return nil, err
		}
		switch t {
		case opEOF:
			return s.finish()
		case opSelectDB:
			n, err := s.plainLength("db number")
			if err == nil {
				err = s.selectDB(n)
			}
			if err != nil {
				return nil, err
			}
			continue
		case opResizeDB:
			keys, err := s.plainLength("resize hint")
			if err != nil {
				return nil, err
			}
			expires, err := s.plainLength("resize hint")
			if err != nil {
				return nil, err
			}
			if s.db == nil {
				if err := s.selectDB(0); err != nil {
					return nil, err
				}
			}
			s.db.HintKeys, s.db.HintExpires = int64(min(keys, 1<<62)), int64(min(expires, 1<<62))
			continue
		case opAux:
			if err := s.skipStrings(2); err != nil {
				return nil, err
			}
			continue
		case opExpireMs:
			if err := s.skip(8); err != nil {
				return nil, err
			}
			expiry = true
			continue
		case opExpireSec:
			if err := s.skip(4); err != nil {
				return nil, err
			}
			expiry = true
			continue
		case opIdle:
			if err := s.skipLengths(1); err != nil {
				return nil, err
			}
			continue
		case opFreq:
			if err := s.skip(1); err != nil {
				return nil, err
			}
			continue
		case opModuleAux:
			if err := s.skipModuleValue(); err != nil {
				return nil, err
			}
			continue
		case opFunction2:
			if err := s.skipString(); err != nil {
				return nil, err
			}
			continue
		case opSlotInfo: // slot id, slot size, expires slot size
			if err := s.skipLengths(3); err != nil {
				return nil, err
			}
			continue
		case opFunctionRC:
			return nil, s.fail("pre-release function record (opcode 246) is not supported")
		case opcodeKeyMeta:
			return nil, s.fail("opcode 243 (Redis 8 key metadata / Valkey slot import) is not supported")
		}
		// A key: its name, then its value.
		if s.db == nil {
			if err := s.selectDB(0); err != nil {
				return nil, err
			}
		}
		if err := s.skipString(); err != nil {
			return nil, err
		}
		typ, err := s.skipValue(t)
		if err != nil {
			return nil, err
		}
		s.db.Keys++
		if s.db.Keys&0xFFFF == 0 && s.ctx != nil && s.ctx.Err() != nil {
			return nil, s.ctx.Err()
		}
		if expiry {
			s.db.Expires++
			expiry = false
		}
		if s.opts.Types {
			s.db.ByType[typ]++
		}
	}
}

// finish checks that only the checksum follows the EOF opcode.
func (s *rdbScanner) finish() ([]KeyStats, error) {
	if s.version >= minRDBVersionWithCRC {
		if err := s.skip(8); err != nil {
			return nil, err
		}
	}
	if err := s.fill(1); err == nil {
		return nil, s.fail("bytes after the end of the RDB")
	}
	out := make([]KeyStats, 0, len(s.dbs))
	for _, ks := range s.dbs {
		if ks.Keys > 0 || ks.HintKeys > 0 {
			out = append(out, *ks)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].DB < out[j].DB })
	return out, nil
}

// Prelude is where an RDB's data begins: everything before it is the
// header, aux fields, module aux data and function libraries, the part
// Redis sends for REPLCONF rdb-filter-only functions.
type Prelude struct {
	End       int64 // offset of the first data opcode (SELECTDB, a key, EOF...)
	Functions int   // function libraries in it
}

// ReadPrelude walks the start of an RDB of size bytes up to its data.
func ReadPrelude(r io.ReaderAt, size int64) (Prelude, error) {
	s := &rdbScanner{at: r, size: size, buf: make([]byte, scanBuf), dbs: map[uint64]*KeyStats{}}
	return s.prelude()
}

func (s *rdbScanner) prelude() (Prelude, error) {
	if err := s.header(); err != nil {
		return Prelude{}, err
	}
	var p Prelude
	for {
		at := s.pos
		t, err := s.byte()
		if err != nil {
			return Prelude{}, err
		}
		switch t {
		case opAux:
			err = s.skipStrings(2)
		case opModuleAux:
			err = s.skipModuleValue()
		case opFunction2:
			err = s.skipString()
			p.Functions++
		case opFunctionRC:
			err = s.fail("pre-release function record (opcode 246) is not supported")
		default:
			p.End = at
			return p, nil
		}
		if err != nil {
			return Prelude{}, err
		}
	}
}
