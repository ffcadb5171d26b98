package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/psync"
)

const replid = "0123456789abcdef0123456789abcdef01234567"

func auxField(k, v string) []byte {
	b := []byte{opAux, byte(len(k))}
	b = append(b, k...)
	b = append(b, byte(len(v)))
	return append(b, v...)
}

// makeRDB builds a minimal valid RDB: header, aux fields, one string key in
// DB 0, EOF and a correct CRC.
func makeRDB(version string, aux ...[2]string) []byte {
	b := []byte("REDIS" + version)
	for _, kv := range aux {
		b = append(b, auxField(kv[0], kv[1])...)
	}
	b = append(b, 0xFE, 0x00, 0xFB, 0x01, 0x00) // SELECTDB 0, RESIZEDB 1 0
	b = append(b, 0x00, 0x03, 'k', 'e', 'y', 0x05, 'v', 'a', 'l', 'u', 'e')
	b = append(b, opEOF)
	return binary.LittleEndian.AppendUint64(b, psync.CRC64(0, b))
}

func receive(t *testing.T, dir string, payload []byte, chunk int) (*Info, error) {
	t.Helper()
	r, err := NewReceiver(dir)
	if err != nil {
		t.Fatal(err)
	}
	for len(payload) > 0 {
		n := min(chunk, len(payload))
		if _, err := r.Write(payload[:n]); err != nil {
			t.Fatal(err)
		}
		payload = payload[n:]
	}
	return r.Finish(replid, 42)
}

func onlySnapshot(t *testing.T, dir string) []string {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestReceiveValid(t *testing.T) {
	rdb := makeRDB("0010", [2]string{"repl-id", replid}, [2]string{"repl-offset", "42"}, [2]string{"repl-stream-db", "3"})
	for _, chunk := range []int{1, 3, 7, 8, 9, 4096} {
		dir := t.TempDir()
		info, err := receive(t, dir, rdb, chunk)
		if err != nil {
			t.Fatalf("chunk %d: %v", chunk, err)
		}
		if info.RDBVersion != 10 || info.Size != int64(len(rdb)) || info.StreamDB != 3 || info.Name != FileName(replid, 42) {
			t.Fatalf("info %+v", info)
		}
		if names := onlySnapshot(t, dir); len(names) != 1 || names[0] != info.Name {
			t.Fatalf("files %v", names)
		}
		f, err := Open(dir, info)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

func TestReceiveRejects(t *testing.T) {
	good := makeRDB("0010")
	flipped := bytes.Clone(good)
	flipped[20] ^= 0x01
	noEOF := makeRDB("0010")
	noEOF[len(noEOF)-9] = 0x00
	zeroCRC := bytes.Clone(good)
	copy(zeroCRC[len(zeroCRC)-8:], make([]byte, 8))
	cases := map[string]struct {
		payload []byte
		ok      bool
	}{
		"flipped byte":        {flipped, false},
		"truncated":           {good[:len(good)-3], false},
		"empty":               {nil, false},
		"no magic":            {append([]byte("RODIS"), good[5:]...), false},
		"no EOF opcode":       {noEOF, false},
		"checksum disabled":   {zeroCRC, true},
		"aux id mismatch":     {makeRDB("0010", [2]string{"repl-id", strings.Repeat("f", 40)}), false},
		"aux offset mismatch": {makeRDB("0010", [2]string{"repl-offset", "41"}), false},
		"valkey 9 magic":      {func() []byte { b := makeRDB("0011"); b = append([]byte("VALKEY080"), b[9:]...); return fixCRC(b) }(), true},
		"rdb 12 (Redis 7.4)":  {makeRDB("0012"), true},
		"rdb 4 has no CRC":    {makeRDB("0004"), false},
	}
	for name, c := range cases {
		dir := t.TempDir()
		_, err := receive(t, dir, c.payload, 5)
		if c.ok != (err == nil) {
			t.Errorf("%s: err %v", name, err)
		}
		var ve *VerifyError
		if err != nil && !errors.As(err, &ve) {
			t.Errorf("%s: not a VerifyError: %v", name, err)
		}
		if names := onlySnapshot(t, dir); !c.ok && len(names) != 0 {
			t.Errorf("%s: left files %v", name, names)
		}
	}
}

func fixCRC(b []byte) []byte {
	body := b[:len(b)-8]
	return binary.LittleEndian.AppendUint64(bytes.Clone(body), psync.CRC64(0, body))
}

func TestAbortRemovesTemp(t *testing.T) {
	dir := t.TempDir()
	r, err := NewReceiver(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = r.Write([]byte("REDIS0010partial"))
	r.Abort()
	if names := onlySnapshot(t, dir); len(names) != 0 {
		t.Fatalf("left %v", names)
	}
}

func TestCleanup(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"a.rdb", "b.rdb", ".tmp-x.rdb", "keep.txt"} {
		_ = os.WriteFile(filepath.Join(dir, n), nil, 0o644)
	}
	removed, err := Cleanup(dir, "b.rdb")
	if err != nil || len(removed) != 2 {
		t.Fatalf("removed %v err %v", removed, err)
	}
	if names := onlySnapshot(t, dir); strings.Join(names, ",") != "b.rdb,keep.txt" {
		t.Fatalf("left %v", names)
	}
}

func TestParseHeaderEncodings(t *testing.T) {
	b := []byte("REDIS0010")
	b = append(b, opAux, 0x03, 'i', '8', 'x', 0xC0, 0xFE)                   // int8 -2
	b = append(b, opAux, 0x03, 'i', '1', '6', 0xC1, 0x39, 0x30)             // int16 12345
	b = append(b, opAux, 0x03, 'i', '3', '2', 0xC2, 0x15, 0xCD, 0x5B, 0x07) // int32 123456789
	long := strings.Repeat("L", 100)
	b = append(b, opAux, 0x04, 'l', 'o', 'n', 'g', 0x40, 100)
	b = append(b, long...)
	h, err := ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if h.Aux["i8x"] != "-2" || h.Aux["i16"] != "12345" || h.Aux["i32"] != "123456789" || h.Aux["long"] != long {
		t.Fatalf("aux %v", h.Aux)
	}
}

// FuzzParseHeader: never panics, and a header it accepts has a sane version.
func FuzzParseHeader(f *testing.F) {
	f.Add(makeRDB("0010", [2]string{"repl-id", replid}))
	f.Add([]byte("VALKEY080\xfa\x01a\xc3\x05\x03xyz"))
	f.Add([]byte("REDIS0010\xfa\x81\xff\xff\xff\xff\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err == nil && h.Version < 1 {
			t.Fatalf("version %d accepted", h.Version)
		}
	})
}
