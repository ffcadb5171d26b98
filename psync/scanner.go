package psync

import (
	"fmt"
	"math"
)

// capturedArgLen is how much of the first two arguments the scanner keeps:
// enough to recognise REPLCONF GETACK, SELECT, PING, MULTI and EXEC.
const capturedArgLen = 16

// Command describes one complete command found in the stream. Name and Arg1
// hold the first bytes of the first two arguments, lowercased; long arguments
// are truncated and flagged.
type Command struct {
	Argc     int64
	Size     int64 // bytes of the command on the wire, headers included
	Inline   bool  // a bare newline (the only inline form a master sends)
	name     [capturedArgLen]byte
	nameLen  int
	nameLong bool
	arg1     [capturedArgLen]byte
	arg1Len  int
	arg1Long bool
}

// Name is the lowercased command name (truncated past 16 bytes).
func (c *Command) Name() string { return string(c.name[:c.nameLen]) }

// Arg1 is the lowercased first argument (truncated past 16 bytes).
func (c *Command) Arg1() string { return string(c.arg1[:c.arg1Len]) }

// IsGetAck reports whether the command is REPLCONF GETACK.
func (c *Command) IsGetAck() bool {
	return !c.nameLong && !c.arg1Long && c.Name() == "replconf" && c.Arg1() == "getack"
}

// scanner states
const (
	stStart     = iota // expecting '*' or a bare '\n'
	stArrayLen         // digits of "*N"
	stArrayLF          // '\n' after "*N\r"
	stBulkHead         // expecting '$'
	stBulkLen          // digits of "$N"
	stBulkLF           // '\n' after "$N\r"
	stBulkBody         // N bytes of argument
	stBulkCR           // '\r' after the argument
	stBulkEndLF        // '\n' after the argument
)

// ScanError is a byte that cannot occur in a master's replication stream.
type ScanError struct {
	Offset int64 // stream bytes scanned before the bad one
	Byte   byte
	State  string
}

func (e *ScanError) Error() string {
	return fmt.Sprintf("psync: invalid replication stream at byte %d (0x%02x, %s)", e.Offset, e.Byte, e.State)
}

// Scanner finds command boundaries in a replication stream. It is resumable:
// feed it the stream in chunks of any size, and it never looks at a byte
// twice. Argument bodies are skipped by length, so large values cost nothing.
// It imposes no limit on argument count or size beyond int64.
type Scanner struct {
	state   int
	num     int64
	digits  int
	argLeft int64 // arguments still to read in the current command
	argIdx  int64
	left    int64 // bytes of the current argument body still to skip
	cmd     Command
	scanned int64 // total bytes consumed, for error offsets
}

// Reset puts the scanner at a command boundary.
func (s *Scanner) Reset() { *s = Scanner{scanned: s.scanned} }

// AtBoundary reports whether the bytes fed so far end on a command boundary.
func (s *Scanner) AtBoundary() bool { return s.state == stStart }

var stateNames = [...]string{"command start", "array length", "array length LF", "bulk header",
	"bulk length", "bulk length LF", "bulk body", "bulk CR", "bulk LF"}

// Scan consumes p. For each command that ends inside p it calls fn with the
// index just past the command's last byte and the command; c is only valid
// during the call. It returns the first protocol error, after which the
// scanner must be Reset before further use.
func (s *Scanner) Scan(p []byte, fn func(end int, c *Command)) error {
	i := 0
	for i < len(p) {
		switch s.state {
		case stStart:
			b := p[i]
			if b == '*' {
				if end, ok := s.scanWhole(p, i); ok {
					i = end
					if fn != nil {
						fn(i, &s.cmd)
					}
					continue
				}
			}
			s.cmd = Command{}
			switch b {
			case '*':
				s.state, s.num, s.digits = stArrayLen, 0, 0
				s.cmd.Size = 1
			case '\n':
				s.cmd.Inline, s.cmd.Size = true, 1
				i++
				if fn != nil {
					fn(i, &s.cmd)
				}
				continue
			default:
				return s.fail(p, i)
			}
			i++
		case stArrayLen, stBulkLen:
			b := p[i]
			if b >= '0' && b <= '9' {
				d := int64(b - '0')
				if s.num > (math.MaxInt64-d)/10 {
					return s.fail(p, i) // past int64: no legal length
				}
				s.num = s.num*10 + d
				s.digits++
			} else if b == '\r' && s.digits > 0 {
				s.state++ // to the LF state
			} else {
				return s.fail(p, i)
			}
			s.cmd.Size++
			i++
		case stArrayLF:
			if p[i] != '\n' || s.num < 1 {
				return s.fail(p, i)
			}
			s.cmd.Size++
			i++
			s.cmd.Argc, s.argLeft, s.argIdx = s.num, s.num, 0
			s.state = stBulkHead
		case stBulkHead:
			if p[i] != '$' {
				return s.fail(p, i)
			}
			s.cmd.Size++
			i++
			s.state, s.num, s.digits = stBulkLen, 0, 0
		case stBulkLF:
			if p[i] != '\n' {
				return s.fail(p, i)
			}
			s.cmd.Size++
			i++
			s.left = s.num
			s.state = stBulkBody
			if s.argIdx == 0 {
				s.cmd.nameLong = s.num > capturedArgLen
			} else if s.argIdx == 1 {
				s.cmd.arg1Long = s.num > capturedArgLen
			}
		case stBulkBody:
			n := int64(len(p) - i)
			if n > s.left {
				n = s.left
			}
			if s.argIdx < 2 {
				s.capture(p[i : i+int(n)])
			}
			i += int(n)
			s.left -= n
			s.cmd.Size += n
			if s.left == 0 {
				s.state = stBulkCR
			}
		case stBulkCR:
			if p[i] != '\r' {
				return s.fail(p, i)
			}
			s.cmd.Size++
			i++
			s.state = stBulkEndLF
		case stBulkEndLF:
			if p[i] != '\n' {
				return s.fail(p, i)
			}
			s.cmd.Size++
			i++
			s.argIdx++
			s.argLeft--
			if s.argLeft > 0 {
				s.state = stBulkHead
				continue
			}
			s.state = stStart
			if fn != nil {
				fn(i, &s.cmd)
			}
		}
	}
	s.scanned += int64(len(p))
	return nil
}

// scanWhole parses the command starting at p[i] ('*') with local state,
// when all of it is in p and its lengths are plain (the common case, 2×
// the byte-at-a-time path). Anything else (a command cut by the chunk's
// end, a byte out of place, a length of 19 digits or more) returns false
// with the scanner untouched, and the byte-at-a-time path takes the
// command from the same byte, errors included. Only the command that
// crosses the chunk's end is parsed twice, and only its headers in this
// chunk: bodies are skipped by length.
func (s *Scanner) scanWhole(p []byte, i int) (int, bool) {
	argc, j, ok := scanLen(p, i+1)
	if !ok || argc < 1 {
		return 0, false
	}
	var cmd Command
	for a := int64(0); a < argc; a++ {
		if j >= len(p) || p[j] != '$' {
			return 0, false
		}
		var n int64
		if n, j, ok = scanLen(p, j+1); !ok || int64(len(p)-j) < n+2 {
			return 0, false
		}
		body := p[j : j+int(n)]
		j += int(n)
		if p[j] != '\r' || p[j+1] != '\n' {
			return 0, false
		}
		j += 2
		switch a {
		case 0:
			cmd.nameLong = n > capturedArgLen
			cmd.nameLen = lowerInto(cmd.name[:], body)
		case 1:
			cmd.arg1Long = n > capturedArgLen
			cmd.arg1Len = lowerInto(cmd.arg1[:], body)
		}
	}
	cmd.Argc, cmd.Size = argc, int64(j-i)
	s.cmd = cmd
	return j, true
}

// scanLen reads "<digits>\r\n" at p[j:]: the length and the index past
// it. At most 18 digits, so it cannot overflow.
func scanLen(p []byte, j int) (int64, int, bool) {
	var n int64
	k := j
	for ; k < len(p) && k-j < 19; k++ {
		c := p[k]
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	if k == j || k-j > 18 || k+1 >= len(p) || p[k] != '\r' || p[k+1] != '\n' {
		return 0, 0, false
	}
	return n, k + 2, true
}

// lowerInto copies the first len(dst) bytes of b into dst, lowercased.
func lowerInto(dst, b []byte) int {
	n := copy(dst, b)
	for i, c := range dst[:n] {
		if c >= 'A' && c <= 'Z' {
			dst[i] = c + 'a' - 'A'
		}
	}
	return n
}

// Partial describes the command under way after the bytes fed so far:
// its name once its first argument is complete, and how many of its bytes
// were consumed. size is 0 at a command boundary.
func (s *Scanner) Partial() (name string, nameKnown bool, size int64) {
	if s.state == stStart {
		return "", false, 0
	}
	// argIdx is the current command's only past its array header.
	return s.cmd.Name(), s.state > stArrayLF && s.argIdx >= 1, s.cmd.Size
}

func (s *Scanner) capture(b []byte) {
	dst, n := s.cmd.name[:], &s.cmd.nameLen
	if s.argIdx == 1 {
		dst, n = s.cmd.arg1[:], &s.cmd.arg1Len
	}
	*n += lowerInto(dst[*n:], b)
}

func (s *Scanner) fail(p []byte, i int) error {
	err := &ScanError{Offset: s.scanned + int64(i), Byte: p[i], State: stateNames[s.state]}
	s.scanned += int64(len(p))
	return err
}
