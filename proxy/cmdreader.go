package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/tidwall/resp"
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

// protocolError is a malformed or oversized command; the reply names it and
// the connection is closed, as Redis does.
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "Protocol error: " + e.msg }

// cmdReader frames one command at a time under our limits, then decodes the
// frame with tidwall/resp, which then never sees unbounded input.
type cmdReader struct {
	br  *bufio.Reader
	raw []byte
}

func newCmdReader(br *bufio.Reader) *cmdReader { return &cmdReader{br: br} }

// next returns the next command's arguments; an empty slice is a bare
// newline (a keepalive).
func (r *cmdReader) next() ([][]byte, error) {
	if cap(r.raw) > keepRawCap {
		r.raw = nil
	}
	r.raw = r.raw[:0]
	b, err := r.br.Peek(1)
	if err != nil {
		return nil, err
	}
	if b[0] == '*' {
		if err := r.frameMultibulk(); err != nil {
			return nil, err
		}
	} else if err := r.frameLine(maxInlineLen, "too big inline request"); err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(r.raw)) == 0 {
		return [][]byte{}, nil
	}
	v, _, _, err := resp.NewReader(bytes.NewReader(r.raw)).ReadMultiBulk()
	if err != nil {
		return nil, &protocolError{msg: strings.TrimPrefix(err.Error(), "Protocol error: ")}
	}
	vals := v.Array()
	args := make([][]byte, len(vals))
	for i, a := range vals {
		args[i] = a.Bytes()
	}
	return args, nil
}

// frameLine appends one line (through '\n') of at most max bytes to raw.
func (r *cmdReader) frameLine(max int, what string) error {
	start := len(r.raw)
	for {
		frag, err := r.br.ReadSlice('\n')
		r.raw = append(r.raw, frag...)
		if len(r.raw)-start > max {
			return &protocolError{msg: what}
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

func (r *cmdReader) header(prefix byte, limit int64, what string) (int64, error) {
	start := len(r.raw)
	if err := r.frameLine(maxHeaderLine, "too long "+what+" header"); err != nil {
		return 0, err
	}
	line := bytes.TrimSuffix(bytes.TrimSuffix(r.raw[start:], []byte{'\n'}), []byte{'\r'})
	if len(line) < 2 || line[0] != prefix {
		return 0, &protocolError{msg: fmt.Sprintf("expected '%c', got %.8q", prefix, line)}
	}
	n, err := strconv.ParseInt(string(line[1:]), 10, 64)
	if err != nil || n < 0 || n > limit {
		return 0, &protocolError{msg: "invalid " + what + " length"}
	}
	return n, nil
}

func (r *cmdReader) frameMultibulk() error {
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
			return &protocolError{msg: "too big request"}
		}
		r.raw = slices.Grow(r.raw, int(n)+2)[:start+int(n)+2]
		if _, err := io.ReadFull(r.br, r.raw[start:]); err != nil {
			return err
		}
		if !bytes.HasSuffix(r.raw, []byte("\r\n")) {
			return &protocolError{msg: "bulk not terminated by CRLF"}
		}
	}
	return nil
}
