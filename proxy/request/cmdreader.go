package request

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// Limits on what a downstream client may send. Replicas and tools send short
// commands; anything beyond these is a protocol error and closes the link.
const (
	maxArgs       = 1024
	maxArgLen     = 64 << 10
	maxInlineLen  = 64 << 10
	maxHeaderLine = 32
	// maxCommandLen bounds a whole command, so a session's buffer (and a
	// burst of connections times it) stays small.
	maxCommandLen = 1 << 20
	// keepRawCap: a buffer grown past this by one large command is
	// dropped rather than kept for the session's life.
	keepRawCap = 64 << 10
)

// ProtocolError is a malformed or oversized command; the reply names it and
// the connection is closed, as Redis does.
type ProtocolError struct{ msg string }

func (e *ProtocolError) Error() string { return "Protocol error: " + e.msg }

// Reader reads one command at a time under our limits, collecting its
// arguments as it frames them: RESP multibulk, or an inline line split as
// Redis splits it (sdssplitargs: quotes and escapes).
type Reader struct {
	br    *bufio.Reader
	raw   []byte
	args  [][]byte
	spans [][2]int // argument bounds in raw, for multibulk
}

func NewReader(br *bufio.Reader) *Reader { return &Reader{br: br} }

// Next returns the next command's arguments, valid until the next call; an
// empty slice is a bare newline (a keepalive).
func (r *Reader) Next() ([][]byte, error) {
	if cap(r.raw) > keepRawCap {
		r.raw = nil
	}
	r.raw, r.args, r.spans = r.raw[:0], r.args[:0], r.spans[:0]
	b, err := r.br.Peek(1)
	if err != nil {
		return nil, err
	}
	if b[0] == '*' {
		if err := r.frameMultibulk(); err != nil {
			return nil, err
		}
		for _, sp := range r.spans {
			r.args = append(r.args, r.raw[sp[0]:sp[1]])
		}
		return r.args, nil
	}
	if err := r.frameLine(maxInlineLen, "too big inline request"); err != nil {
		return nil, err
	}
	return splitInline(r.raw, r.args)
}

// splitInline splits an inline command line as Redis' sdssplitargs does:
// arguments separated by white space, "double quotes" with \n \r \t \b
// \a \\ \" and \xHH escapes, 'single quotes' with \' only; a closing
// quote must end the argument. Quoted arguments are unescaped in place.
func splitInline(line []byte, args [][]byte) ([][]byte, error) {
	errQuotes := &ProtocolError{msg: "unbalanced quotes in request"}
	isSpace := func(c byte) bool { return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\v' || c == '\f' }
	i := 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i == len(line) {
			return args, nil
		}
		start, w := i, i // arguments are written back over the line
		inDQ, inSQ := false, false
		for done := false; !done; {
			if i == len(line) {
				if inDQ || inSQ {
					return nil, errQuotes
				}
				break
			}
			c := line[i]
			switch {
			case inDQ:
				switch {
				case c == '\\' && i+3 < len(line) && line[i+1] == 'x' && isHex(line[i+2]) && isHex(line[i+3]):
					line[w] = unhex(line[i+2])<<4 | unhex(line[i+3])
					i += 3
				case c == '\\' && i+1 < len(line):
					i++
					line[w] = unescape(line[i])
				case c == '"':
					if i+1 < len(line) && !isSpace(line[i+1]) {
						return nil, errQuotes // the closing quote must end the argument
					}
					done = true
					w--
				default:
					line[w] = c
				}
			case inSQ:
				switch {
				case c == '\\' && i+1 < len(line) && line[i+1] == '\'':
					i++
					line[w] = '\''
				case c == '\'':
					if i+1 < len(line) && !isSpace(line[i+1]) {
						return nil, errQuotes
					}
					done = true
					w--
				default:
					line[w] = c
				}
			case isSpace(c):
				done = true
				w--
			case c == '"':
				inDQ = true
				w--
			case c == '\'':
				inSQ = true
				w--
			default:
				line[w] = c
			}
			i++
			w++
		}
		args = append(args, line[start:w])
		if len(args) > maxArgs {
			return nil, &ProtocolError{msg: "too many arguments"}
		}
	}
}

// unescape is the character a backslash escape in double quotes stands for.
func unescape(c byte) byte {
	switch c {
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	case 'b':
		return '\b'
	case 'a':
		return '\a'
	}
	return c
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// frameLine appends one line (through '\n') of at most max bytes to raw.
func (r *Reader) frameLine(max int, what string) error {
	start := len(r.raw)
	for {
		frag, err := r.br.ReadSlice('\n')
		r.raw = append(r.raw, frag...)
		if len(r.raw)-start > max {
			return &ProtocolError{msg: what}
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

func (r *Reader) header(prefix byte, limit int64, what string) (int64, error) {
	start := len(r.raw)
	if err := r.frameLine(maxHeaderLine, "too long "+what+" header"); err != nil {
		return 0, err
	}
	line := bytes.TrimSuffix(bytes.TrimSuffix(r.raw[start:], []byte{'\n'}), []byte{'\r'})
	if len(line) < 2 || line[0] != prefix {
		return 0, &ProtocolError{msg: fmt.Sprintf("expected '%c', got %.8q", prefix, line)}
	}
	n, err := strconv.ParseInt(string(line[1:]), 10, 64)
	if err != nil || n < 0 || n > limit {
		return 0, &ProtocolError{msg: "invalid " + what + " length"}
	}
	return n, nil
}

func (r *Reader) frameMultibulk() error {
	argc, err := r.header('*', maxArgs, "multibulk")
	if err != nil {
		return err
	}
	for range argc {
		n, err := r.header('$', maxArgLen, "bulk")
		if err != nil {
			return err
		}
		start := len(r.raw)
		if int64(start)+n+2 > maxCommandLen {
			return &ProtocolError{msg: "too big request"}
		}
		r.raw = slices.Grow(r.raw, int(n)+2)[:start+int(n)+2]
		if _, err := io.ReadFull(r.br, r.raw[start:]); err != nil {
			return err
		}
		if !bytes.HasSuffix(r.raw, []byte("\r\n")) {
			return &ProtocolError{msg: "bulk not terminated by CRLF"}
		}
		r.spans = append(r.spans, [2]int{start, start + int(n)})
	}
	return nil
}
