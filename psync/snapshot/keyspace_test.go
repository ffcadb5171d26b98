package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hdt3213/rdb/model"
	"github.com/hdt3213/rdb/parser"
	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/psync"
)

// referenceStats counts keys with hdt3213/rdb, which materialises every
// value: the reference the skipping scanner is checked against.
func referenceStats(t *testing.T, b []byte) map[int]*KeyStats {
	t.Helper()
	out := map[int]*KeyStats{}
	err := parser.NewDecoder(bytes.NewReader(b)).Parse(func(o model.RedisObject) bool {
		ks := out[o.GetDBIndex()]
		if ks == nil {
			ks = &KeyStats{DB: o.GetDBIndex(), ByType: map[string]int64{}}
			out[o.GetDBIndex()] = ks
		}
		ks.Keys++
		if o.GetExpiration() != nil {
			ks.Expires++
		}
		typ := o.GetType()
		if typ != "string" && typ != "list" && typ != "set" && typ != "zset" && typ != "hash" && typ != "stream" {
			typ = "module"
		}
		ks.ByType[typ]++
		return true
	})
	if err != nil {
		t.Fatalf("reference parser: %v", err)
	}
	return out
}

func scanBoth(t *testing.T, b []byte) []KeyStats {
	t.Helper()
	streamed, err := ScanKeyspace(bytes.NewReader(b), ScanOptions{Types: true})
	if err != nil {
		t.Fatalf("stream scan: %v", err)
	}
	// Random access skips values without reading them; it must agree.
	s := &rdbScanner{at: bytes.NewReader(b), size: int64(len(b)), buf: make([]byte, 64), opts: ScanOptions{Types: true}, dbs: map[uint64]*KeyStats{}}
	seeked, err := s.run()
	if err != nil {
		t.Fatalf("random-access scan: %v", err)
	}
	if fmt.Sprint(streamed) != fmt.Sprint(seeked) {
		t.Fatalf("stream scan %v != random-access scan %v", streamed, seeked)
	}
	return streamed
}

func compareWithReference(t *testing.T, b []byte) []KeyStats {
	t.Helper()
	got := scanBoth(t, b)
	want := referenceStats(t, b)
	n := 0
	for _, ks := range got {
		if ks.Keys == 0 {
			continue
		}
		n++
		w := want[ks.DB]
		if w == nil || w.Keys != ks.Keys || w.Expires != ks.Expires || fmt.Sprint(w.ByType) != fmt.Sprint(ks.ByType) {
			t.Fatalf("db%d: scanner %+v, reference %+v", ks.DB, ks, w)
		}
	}
	if n != len(want) {
		t.Fatalf("scanner found %d databases with keys, reference %d", n, len(want))
	}
	return got
}

// hdtCases is the fixture directory that ships with hdt3213/rdb: RDBs of
// every encoding from Redis 2.x to 7.4 and Valkey 9.
func hdtCases(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/hdt3213/rdb").Output()
	if err != nil {
		t.Fatalf("locate hdt3213/rdb: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "cases")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("hdt3213/rdb fixtures: %v", err)
	}
	return dir
}

func TestScanMatchesReferenceOnFixtures(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(hdtCases(t), "*.rdb"))
	if len(files) < 30 {
		t.Fatalf("only %d fixtures found", len(files))
	}
	types := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(filepath.Base(f), func(t *testing.T) {
			for _, ks := range compareWithReference(t, b) {
				for typ := range ks.ByType {
					types[typ] = true
				}
			}
		})
	}
	for _, typ := range []string{"string", "list", "set", "zset", "hash", "stream"} {
		if !types[typ] {
			t.Errorf("no fixture had a %s", typ)
		}
	}
}

// TestScanRealServerDump checks the scanner against a dump written by the
// redis-server on this machine, with every type in both encodings,
// expiries, functions, several databases and 100 KB+ values.
func TestScanRealServerDump(t *testing.T) {
	srv := redistest.StartT(t, "dump", "--enable-debug-command", "yes")
	cli := srv.Client()
	ctx := context.Background()
	big := strings.Repeat("x", 200<<10)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cli.Do(ctx, "FUNCTION", "LOAD", "#!lua name=lib\nredis.register_function('f', function() return 1 end)").Err())
	for db := range 3 {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), DB: db})
		p := c.Pipeline()
		p.Set(ctx, "int", 12345, 0)
		p.Set(ctx, "neg", -7, 0)
		p.Set(ctx, "raw", "hello", 0)
		p.Set(ctx, "big", big, 0)                      // LZF-compressed
		p.Set(ctx, "ttl", "v", 1000_000_000_000)       // an expiry
		p.Set(ctx, "random", fmt.Sprintf("%x", db), 0) // keeps DBs distinct
		for i := range 200 {
			p.RPush(ctx, "biglist", strings.Repeat("e", i))
			p.SAdd(ctx, "bigset", fmt.Sprintf("m%d", i))
			p.SAdd(ctx, "intset", i)
			p.ZAdd(ctx, "bigzset", redis.Z{Score: float64(i) / 3, Member: fmt.Sprintf("m%d", i)})
			p.HSet(ctx, "bighash", fmt.Sprintf("f%d", i), strings.Repeat("v", i))
			p.XAdd(ctx, &redis.XAddArgs{Stream: "stream", Values: []any{"f", i}})
		}
		p.RPush(ctx, "smalllist", "a", "b")
		p.SAdd(ctx, "smallset", "a", "b")
		p.ZAdd(ctx, "smallzset", redis.Z{Score: 1, Member: "a"})
		p.HSet(ctx, "smallhash", "a", "b")
		p.RPush(ctx, "hugeelem", big) // a plain quicklist node
		p.PExpire(ctx, "bighash", 1000_000_000)
		_, err := p.Exec(ctx)
		must(err)
		must(c.XGroupCreate(ctx, "stream", "g1", "0").Err())
		must(c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g1", Consumer: "c1", Streams: []string{"stream", ">"}, Count: 10}).Err())
		must(c.XGroupCreate(ctx, "stream", "g2", "$").Err())
		c.Close()
	}
	must(cli.Save(ctx).Err())
	b, err := os.ReadFile(filepath.Join(srv.Dir, "dump.rdb"))
	if err != nil {
		t.Fatal(err)
	}
	got := compareWithReference(t, b)
	if len(got) != 3 {
		t.Fatalf("want 3 databases, got %+v", got)
	}
	for _, ks := range got {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), DB: ks.DB})
		n, err := c.DBSize(ctx).Result()
		c.Close()
		must(err)
		if ks.Keys != n || ks.HintKeys != n || ks.Expires != 2 || ks.HintExpires != 2 {
			t.Errorf("db%d: scanned %+v, DBSIZE %d, 2 keys with expiry", ks.DB, ks, n)
		}
	}
}

// rdbBuilder writes RDB encodings the server here (7.0) cannot produce.
type rdbBuilder struct{ b []byte }

func (w *rdbBuilder) raw(p ...byte) *rdbBuilder { w.b = append(w.b, p...); return w }
func (w *rdbBuilder) length(n uint64) *rdbBuilder {
	switch {
	case n < 64:
		return w.raw(byte(n))
	case n < 1<<14:
		return w.raw(0x40|byte(n>>8), byte(n))
	case n <= 0xFFFFFFFF:
		return w.raw(0x80).raw(binary.BigEndian.AppendUint32(nil, uint32(n))...)
	}
	return w.raw(0x81).raw(binary.BigEndian.AppendUint64(nil, n)...)
}
func (w *rdbBuilder) str(s string) *rdbBuilder { return w.length(uint64(len(s))).raw([]byte(s)...) }
func (w *rdbBuilder) u64(n uint64) *rdbBuilder {
	return w.raw(binary.LittleEndian.AppendUint64(nil, n)...)
}
func (w *rdbBuilder) end() []byte {
	w.raw(opEOF)
	return binary.LittleEndian.AppendUint64(w.b, psync.CRC64(0, w.b))
}

func TestScanNewerEncodings(t *testing.T) {
	redis74 := func() *rdbBuilder { return (&rdbBuilder{}).raw([]byte("REDIS0012")...).raw(opSelectDB).length(0) }
	cases := []struct {
		name string
		rdb  []byte
		want map[string]int64
	}{
		{"redis 7.4 hash with field expiry", redis74().
			raw(typeHashMeta).str("h").u64(1700000000000).length(2).
			length(0).str("f1").str("v1").length(5).str("f2").str("v2").end(),
			map[string]int64{"hash": 1}},
		{"redis 7.4 listpack hash with field expiry", redis74().
			raw(typeHashLPEx).str("h").u64(1700000000000).str("listpack-bytes").end(),
			map[string]int64{"hash": 1}},
		{"redis 7.4 RC hash", redis74().
			raw(typeHashMetaPreGA).str("h").length(1).length(1700000000000).str("f").str("v").
			raw(typeHashLPExPreGA).str("h2").str("lp").end(),
			map[string]int64{"hash": 2}},
		{"valkey 9 hash_2", (&rdbBuilder{}).raw([]byte("VALKEY080")...).raw(opSelectDB).length(0).
			raw(typeHashMetaPreGA).str("h").length(2).str("f1").str("v1").u64(1<<63 | 1).str("f2").str("v2").u64(17).end(),
			map[string]int64{"hash": 1}},
		{"module value and module aux", redis74().
			raw(opModuleAux).length(12345<<10).length(modUInt).length(2).length(modString).str("aux").length(modEOF).
			raw(typeModule2).str("m").length(999<<10|3).
			length(modSInt).length(7).length(modFloat).raw(1, 2, 3, 4).length(modDouble).u64(1).
			length(modString).str("payload").length(modEOF).end(),
			map[string]int64{"module": 1}},
		{"stream v3 with groups, PEL and consumers", redis74().
			raw(typeStreamListpacks3).str("s").length(1).str(strings.Repeat("\x00", 16)).str("lp").
			length(3).length(1).length(2).                     // length, last id
			length(0).length(1).length(0).length(0).length(3). // first id, max deleted, entries added
			length(1).str("g").length(1).length(2).length(3).  // group, last id, entries read
			length(1).raw(make([]byte, 24)...).length(1).      // PEL entry
			length(1).str("c").raw(make([]byte, 16)...).length(1).raw(make([]byte, 16)...).end(),
			map[string]int64{"stream": 1}},
		{"slot info and 64-bit lengths", redis74().
			raw(opSlotInfo).length(1).length(2).length(3).
			raw(typeString).str("k").length(1 << 33).raw().b, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.want == nil { // a length past the end: an error, not an allocation
				if _, err := ScanKeyspace(bytes.NewReader(c.rdb), ScanOptions{}); err == nil {
					t.Fatal("want an error")
				}
				return
			}
			got := scanBoth(t, c.rdb)
			if len(got) != 1 || fmt.Sprint(got[0].ByType) != fmt.Sprint(c.want) {
				t.Fatalf("got %+v, want types %v", got, c.want)
			}
		})
	}
}

func TestScanRejectsDamage(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(hdtCases(t), "memory.rdb"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 5, 9, 20, len(b) / 2, len(b) - 9, len(b) - 1} {
		if _, err := ScanKeyspace(bytes.NewReader(b[:n]), ScanOptions{}); err == nil {
			t.Errorf("truncated to %d bytes: no error", n)
		}
	}
	extra := append(append([]byte{}, b...), 0)
	if _, err := ScanKeyspace(bytes.NewReader(extra), ScanOptions{}); err == nil {
		t.Error("trailing garbage: no error")
	}
	bad := append([]byte{}, b...)
	bad[len(bad)-9] = 200 // the EOF opcode becomes an unknown type
	var se *ScanError
	if _, err := ScanKeyspace(bytes.NewReader(bad), ScanOptions{}); !errors.As(err, &se) {
		t.Errorf("unknown type: %v", err)
	}
}

func TestScanFileOfInstalledSnapshot(t *testing.T) {
	dir := t.TempDir()
	info, err := receive(t, dir, makeRDB("0010"), 3)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := ScanFile(context.Background(), dir, info, ScanOptions{})
	if err != nil || len(ks) != 1 || ks[0].Keys != 1 || ks[0].HintKeys != 1 || fmt.Sprint(ks) != fmt.Sprint(info.Keyspace) {
		t.Fatalf("%+v %v", ks, err)
	}
}

// FuzzScanKeyspace: any input gives counts or an error, never a panic, a
// hang or an allocation sized by a length it read; both access modes agree.
func FuzzScanKeyspace(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(hdtCases(f), "*.rdb"))
	for _, name := range files {
		if b, err := os.ReadFile(name); err == nil && len(b) < 64<<10 {
			f.Add(b)
		}
	}
	f.Add(makeRDB("0010"))
	f.Fuzz(func(t *testing.T, b []byte) {
		streamed, err1 := ScanKeyspace(bufio.NewReaderSize(bytes.NewReader(b), 16), ScanOptions{Types: true})
		s := &rdbScanner{at: bytes.NewReader(b), size: int64(len(b)), buf: make([]byte, 4096), opts: ScanOptions{Types: true}, dbs: map[uint64]*KeyStats{}}
		seeked, err2 := s.run()
		if (err1 == nil) != (err2 == nil) || fmt.Sprint(streamed) != fmt.Sprint(seeked) {
			t.Fatalf("modes disagree: %v %v / %v %v", streamed, err1, seeked, err2)
		}
		var keys int64
		for _, ks := range streamed {
			keys += ks.Keys
		}
		if keys > int64(len(b)) {
			t.Fatalf("%d keys in %d bytes", keys, len(b))
		}
	})
}

// writeBenchRDB writes an RDB of about size bytes: values of valueLen
// bytes under short keys, in one database.
func writeBenchRDB(b *testing.B, size, valueLen int) (string, *Info) {
	b.Helper()
	dir := b.TempDir()
	f, err := os.Create(filepath.Join(dir, "bench.rdb"))
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	keys := size / (valueLen + 16)
	head := (&rdbBuilder{}).raw([]byte("REDIS0010")...).raw(opSelectDB).length(0).raw(opResizeDB).length(uint64(keys)).length(0).b
	_, _ = w.Write(head)
	val := (&rdbBuilder{}).str(strings.Repeat("v", valueLen)).b
	var rec []byte
	for i := range keys {
		rec = (&rdbBuilder{b: rec[:0]}).raw(typeString).str(fmt.Sprintf("key:%010d", i)).b
		_, _ = w.Write(rec)
		_, _ = w.Write(val)
	}
	_, _ = w.Write([]byte{opEOF, 0, 0, 0, 0, 0, 0, 0, 0}) // checksum 0: not checked
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	st, _ := f.Stat()
	f.Close()
	return dir, &Info{Name: "bench.rdb", Size: st.Size()}
}

// BenchmarkScanKeyspace1GB counts the keys of a 1 GB RDB: from the file
// (values skipped unread, as the daemon does for a recovered snapshot and
// inspect does) and as a stream (as the receiver does while a payload
// arrives). Big values cost nothing; small keys cost a parse each.
func BenchmarkScanKeyspace1GB(b *testing.B) {
	for _, shape := range []struct {
		name  string
		value int
	}{{"1MB-values", 1 << 20}, {"100B-values", 100}} {
		dir, info := writeBenchRDB(b, 1<<30, shape.value)
		b.Run(shape.name+"/file", func(b *testing.B) {
			b.SetBytes(info.Size)
			for b.Loop() {
				if _, err := ScanFile(context.Background(), dir, info, ScanOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(shape.name+"/stream", func(b *testing.B) {
			b.SetBytes(info.Size)
			for b.Loop() {
				f, err := os.Open(filepath.Join(dir, info.Name))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := ScanKeyspace(f, ScanOptions{}); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
}
