package psync

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// refBoundaries is a deliberately simple reference parser: the end offset
// of every complete command in b, and whether b is valid up to its end.
func refBoundaries(b []byte) (ends []int, valid bool) {
	i := 0
	for i < len(b) {
		if b[i] == '\n' {
			i++
			ends = append(ends, i)
			continue
		}
		if b[i] != '*' {
			return ends, false
		}
		nl := bytes.Index(b[i:], []byte("\r\n"))
		if nl < 0 {
			return ends, validPrefix(b[i+1:])
		}
		argc, err := strconv.ParseInt(string(b[i+1:i+nl]), 10, 64)
		if err != nil || argc < 1 || !allDigits(b[i+1:i+nl]) {
			return ends, false
		}
		j := i + nl + 2
		for range argc {
			if j >= len(b) {
				return ends, true
			}
			if b[j] != '$' {
				return ends, false
			}
			nl := bytes.Index(b[j:], []byte("\r\n"))
			if nl < 0 {
				return ends, validPrefix(b[j+1:])
			}
			n, err := strconv.ParseInt(string(b[j+1:j+nl]), 10, 64)
			if err != nil || n < 0 || !allDigits(b[j+1:j+nl]) {
				return ends, false
			}
			j += nl + 2
			if int64(len(b)-j) < n+2 {
				rest := b[j:]
				if int64(len(rest)) > n {
					if rest[n] != '\r' {
						return ends, false
					}
				}
				return ends, true
			}
			if b[j+int(n)] != '\r' || b[j+int(n)+1] != '\n' {
				return ends, false
			}
			j += int(n) + 2
		}
		i = j
		ends = append(ends, i)
	}
	return ends, true
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(b) > 0
}

// validPrefix: an unterminated header is fine while it is digits, with at
// most a trailing '\r'.
func validPrefix(b []byte) bool {
	if t := bytes.TrimSuffix(b, []byte("\r")); len(t) < len(b) {
		if len(t) == 0 {
			return false // "\r" right after '*' or '$': no digits
		}
		b = t
	}
	if bytes.IndexByte(b, '\r') >= 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	if len(b) == 0 {
		return true
	}
	_, err := strconv.ParseInt(string(b), 10, 64)
	return err == nil
}

func scanAll(s *Scanner, b []byte, chunks []int) (ends []int, err error) {
	pos := 0
	for _, n := range chunks {
		if pos+n > len(b) {
			n = len(b) - pos
		}
		base := pos
		if err := s.Scan(b[pos:pos+n], func(end int, _ *Command) { ends = append(ends, base+end) }); err != nil {
			return ends, err
		}
		pos += n
	}
	if pos < len(b) {
		base := pos
		err = s.Scan(b[pos:], func(end int, _ *Command) { ends = append(ends, base+end) })
	}
	return ends, err
}

func sampleStream() []byte {
	var b []byte
	b = append(b, EncodeCommand("SELECT", "3")...)
	b = append(b, EncodeCommand("set", "key", strings.Repeat("v", 300))...)
	b = append(b, '\n')
	b = append(b, "*1\r\n$4\r\nping\r\n"...)
	b = append(b, EncodeCommand("REPLCONF", "GETACK", "*")...)
	b = append(b, EncodeCommand("MULTI")...)
	b = append(b, EncodeCommand("hset", "h", "f", "")...)
	b = append(b, EncodeCommand("EXEC")...)
	return b
}

func TestScannerBoundariesAnyChunking(t *testing.T) {
	stream := sampleStream()
	want, ok := refBoundaries(stream)
	if !ok || want[len(want)-1] != len(stream) {
		t.Fatalf("reference parser rejects the sample: %v", want)
	}
	rnd := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		var chunks []int
		for range 50 {
			chunks = append(chunks, 1+rnd.IntN(40))
		}
		var s Scanner
		got, err := scanAll(&s, stream, chunks)
		if err != nil || !equalInts(got, want) || !s.AtBoundary() {
			t.Fatalf("chunks %v: got %v want %v err %v", chunks, got, want, err)
		}
	}
}

func TestScannerGetAck(t *testing.T) {
	var s Scanner
	var names []string
	getacks := 0
	err := s.Scan(sampleStream(), func(_ int, c *Command) {
		names = append(names, c.Name())
		if c.IsGetAck() {
			getacks++
		}
	})
	if err != nil || getacks != 1 {
		t.Fatalf("err %v getacks %d", err, getacks)
	}
	want := "select set  ping replconf multi hset exec"
	if strings.Join(names, " ") != want {
		t.Fatalf("names %q", strings.Join(names, " "))
	}
	// GETACK is exactly 37 bytes on the wire.
	var sz int64
	_ = (&Scanner{}).Scan([]byte("*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n"), func(_ int, c *Command) { sz = c.Size })
	if sz != 37 {
		t.Fatalf("GETACK size %d", sz)
	}
}

func TestScannerRejects(t *testing.T) {
	for _, bad := range []string{"SET a b\r\n", "*0\r\n", "*1\r\n+x\r\n", "*1\r\n$3\r\nabcXY", "*1x", "\x00", "*99999999999999999999\r\n"} {
		var s Scanner
		if err := s.Scan([]byte(bad), nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestScannerHugeArgumentIsNotBuffered(t *testing.T) {
	// A 3 GiB argument header is legal; the scanner just counts it down.
	var s Scanner
	if err := s.Scan([]byte("*2\r\n$3\r\nset\r\n$3221225472\r\nabc"), nil); err != nil {
		t.Fatal(err)
	}
	if s.AtBoundary() || s.left != 3221225472-3 {
		t.Fatalf("left %d", s.left)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FuzzScanner compares the scanner with the reference parser under random
// chunking: same boundaries, same verdict.
func FuzzScanner(f *testing.F) {
	f.Add(sampleStream(), uint64(1))
	f.Add([]byte("*1\r\n$4\r\nping\r\n\n\n"), uint64(2))
	f.Add([]byte("*2\r\n$3\r\nget\r\n$-1\r\n"), uint64(3))
	f.Add([]byte("*1\r\n$0\r\n\r\n"), uint64(4))
	f.Add([]byte("*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n*2\r\n$17\r\nABCDEFGHIJKLMNOPQ\r\n$003\r\nxYz\r\n"), uint64(5))
	f.Add([]byte("*1\r\n$1234567890123456789\r\nx*01\r\n"), uint64(6))
	f.Add([]byte("*2\r\n$1\r\na\r\n$1\r\nbX\n"), uint64(7))
	f.Fuzz(func(t *testing.T, b []byte, seed uint64) {
		want, ok := refBoundaries(b)
		rnd := rand.New(rand.NewPCG(seed, 1))
		var chunks []int
		for range 8 {
			chunks = append(chunks, 1+rnd.IntN(len(b)+1))
		}
		var s Scanner
		got, err := scanAll(&s, b, chunks)
		if (err == nil) != ok {
			t.Fatalf("scanner err %v, reference valid %v", err, ok)
		}
		if ok && !equalInts(got, want) {
			t.Fatalf("boundaries %v, reference %v", got, want)
		}
		// The whole-command fast path against the byte-at-a-time path
		// (one byte per Scan never fits a whole command): the same
		// commands, fields and all, and the same error.
		fast, fastErr := scanCommands(b, chunks)
		slow, slowErr := scanCommands(b, slices.Repeat([]int{1}, len(b)))
		if fmt.Sprint(fastErr) != fmt.Sprint(slowErr) {
			t.Fatalf("error %v, byte at a time %v", fastErr, slowErr)
		}
		if !slices.Equal(fast, slow) {
			t.Fatalf("commands %+v, byte at a time %+v", fast, slow)
		}
	})
}

// scannedCommand is a command as Scan reports it, at its absolute end.
type scannedCommand struct {
	end int
	cmd Command
}

// scanCommands scans b in the given chunks (the rest in one) and collects
// every command reported.
func scanCommands(b []byte, chunks []int) ([]scannedCommand, error) {
	var s Scanner
	var out []scannedCommand
	pos := 0
	for _, n := range append(chunks, len(b)) {
		n = min(n, len(b)-pos)
		base := pos
		if err := s.Scan(b[pos:pos+n], func(end int, c *Command) { out = append(out, scannedCommand{base + end, *c}) }); err != nil {
			return out, err
		}
		pos += n
	}
	return out, nil
}

func BenchmarkScanner(b *testing.B) {
	var stream []byte
	for i := 0; len(stream) < 4<<20; i++ {
		stream = append(stream, EncodeCommand("SET", "key:"+strconv.Itoa(i), strings.Repeat("x", 100))...)
	}
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		var s Scanner
		n := 0
		if err := s.Scan(stream, func(int, *Command) { n++ }); err != nil {
			b.Fatal(err)
		}
	}
}
