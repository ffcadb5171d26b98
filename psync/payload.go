package psync

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// EOFMarkLen is the length of the mark around a diskless ($EOF:) payload.
const EOFMarkLen = 40

// maxPayloadHeader is readSyncBulkPayload()'s buffer for the "$..." line.
const maxPayloadHeader = 1024

// PayloadHeader describes how an RDB payload is framed.
type PayloadHeader struct {
	Length int64  // bytes that follow; -1 for the EOF-mark form
	Mark   []byte // the 40-byte EOF mark, for the EOF-mark form
}

// EOFForm reports whether the payload ends with a mark rather than a length.
func (h PayloadHeader) EOFForm() bool { return h.Length < 0 }

// MasterAbortError is a "-..." line where the payload header was expected.
type MasterAbortError struct{ Line string }

func (e *MasterAbortError) Error() string {
	return "psync: master aborted replication: " + e.Line
}

// ParsePayloadHeader parses a "$<len>" or "$EOF:<mark>" line.
func ParsePayloadHeader(line string) (PayloadHeader, error) {
	if strings.HasPrefix(line, "-") {
		return PayloadHeader{}, &MasterAbortError{Line: line}
	}
	if !strings.HasPrefix(line, "$") {
		return PayloadHeader{}, fmt.Errorf("psync: bad protocol from master, expected $ header: %.64q", line)
	}
	if mark, ok := strings.CutPrefix(line, "$EOF:"); ok {
		if len(mark) < EOFMarkLen {
			return PayloadHeader{}, fmt.Errorf("psync: EOF mark shorter than %d bytes", EOFMarkLen)
		}
		return PayloadHeader{Length: -1, Mark: []byte(mark[:EOFMarkLen])}, nil
	}
	n, err := strconv.ParseInt(line[1:], 10, 64)
	if err != nil || n < 0 {
		return PayloadHeader{}, fmt.Errorf("psync: bad payload length %.64q", line)
	}
	return PayloadHeader{Length: n}, nil
}

// ReadPayloadHeader reads the payload header, skipping keepalive newlines.
func ReadPayloadHeader(br *bufio.Reader, onKeepalive func()) (PayloadHeader, error) {
	line, err := ReadReplyLine(br, maxPayloadHeader, onKeepalive)
	if err != nil {
		return PayloadHeader{}, fmt.Errorf("psync: read payload header: %w", err)
	}
	return ParsePayloadHeader(line)
}

// ErrShortPayload means the connection ended inside the payload.
var ErrShortPayload = errors.New("psync: connection ended inside the RDB payload")

// CopyPayload copies the RDB payload described by h from r to dst, stripping
// the EOF marks. For the length form it reads exactly Length bytes, so stream
// bytes glued after the payload stay in r. For the EOF form it ends when a
// read ends with the mark, as Redis' disk loader does: the master sends
// nothing after the mark until the replica ACKs. progress, if not nil, is
// called with the running byte count.
func CopyPayload(dst io.Writer, r io.Reader, h PayloadHeader, progress func(int64)) (int64, error) {
	if !h.EOFForm() {
		var n int64
		buf := make([]byte, 256<<10)
		for n < h.Length {
			chunk := buf
			if left := h.Length - n; left < int64(len(chunk)) {
				chunk = chunk[:left]
			}
			m, err := r.Read(chunk)
			if m > 0 {
				if _, werr := dst.Write(chunk[:m]); werr != nil {
					return n, werr
				}
				n += int64(m)
				if progress != nil {
					progress(n)
				}
			}
			if err != nil && n < h.Length {
				if err == io.EOF {
					return n, ErrShortPayload
				}
				return n, err
			}
		}
		return n, nil
	}
	buf := make([]byte, EOFMarkLen+256<<10)
	held := 0 // bytes at the start of buf not yet written: the possible mark
	var n int64
	for {
		m, err := r.Read(buf[held:])
		if m > 0 {
			held += m
			if held >= EOFMarkLen && bytes.Equal(buf[held-EOFMarkLen:held], h.Mark) {
				body := held - EOFMarkLen
				if _, werr := dst.Write(buf[:body]); werr != nil {
					return n, werr
				}
				n += int64(body)
				if progress != nil {
					progress(n)
				}
				return n, nil
			}
			if held > EOFMarkLen {
				body := held - EOFMarkLen
				if _, werr := dst.Write(buf[:body]); werr != nil {
					return n, werr
				}
				n += int64(body)
				copy(buf, buf[body:held])
				held = EOFMarkLen
				if progress != nil {
					progress(n)
				}
			}
		}
		if err != nil {
			if err == io.EOF {
				return n, ErrShortPayload
			}
			return n, err
		}
	}
}
