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

// ReplyKind classifies the master's answer to PSYNC.
type ReplyKind int

const (
	ReplyFullResync   ReplyKind = iota // +FULLRESYNC <id> <offset>
	ReplyContinue                      // +CONTINUE [id]
	ReplyTryLater                      // -NOMASTERLINK, -LOADING
	ReplyNotSupported                  // any other error or line
)

func (k ReplyKind) String() string {
	return [...]string{"fullresync", "continue", "try_later", "not_supported"}[k]
}

// PsyncReply is a parsed PSYNC reply line.
type PsyncReply struct {
	Kind   ReplyKind
	ReplID string // FULLRESYNC id; CONTINUE id or "" when absent
	Offset int64  // FULLRESYNC offset
	Line   string // the raw line, for logs
}

// ErrBadFullResync is a +FULLRESYNC line without a usable ID and offset. Redis
// would fall back to pre-PSYNC mode; a relay cannot, so it is an error.
var ErrBadFullResync = errors.New("psync: malformed +FULLRESYNC reply")

// ParsePsyncReply parses one PSYNC reply line (without CRLF), following
// slaveTryPartialResynchronization(): the ID must be exactly 40 characters.
func ParsePsyncReply(line string) (PsyncReply, error) {
	r := PsyncReply{Line: line}
	switch {
	case strings.HasPrefix(line, "+FULLRESYNC"):
		r.Kind = ReplyFullResync
		rest, ok := strings.CutPrefix(line, "+FULLRESYNC ")
		if !ok {
			return r, ErrBadFullResync
		}
		id, off, ok := strings.Cut(rest, " ")
		if !ok || !ValidReplID(id) {
			return r, ErrBadFullResync
		}
		n, err := strconv.ParseInt(off, 10, 64)
		if err != nil || n < 0 {
			return r, ErrBadFullResync
		}
		r.ReplID, r.Offset = id, n
	case strings.HasPrefix(line, "+CONTINUE"):
		r.Kind = ReplyContinue
		if id, ok := strings.CutPrefix(line, "+CONTINUE "); ok {
			id = strings.TrimRight(id, " ")
			if ValidReplID(id) {
				r.ReplID = id
			}
		}
	case strings.HasPrefix(line, "-NOMASTERLINK"), strings.HasPrefix(line, "-LOADING"):
		r.Kind = ReplyTryLater
	default:
		r.Kind = ReplyNotSupported
	}
	return r, nil
}

// ReadLine reads one line of at most max bytes, without the trailing CRLF,
// the way connSyncReadLine() does: up to '\n', with a trailing '\r' stripped.
//
// A longer line keeps its first max bytes (the rest is read and dropped, up
// to maxDiscard), so an error reply is cut, never replaced.
func ReadLine(br *bufio.Reader, max int) (string, error) {
	var buf []byte
	total := 0
	for {
		frag, err := br.ReadSlice('\n')
		total += len(frag)
		if total > max+maxDiscard {
			return "", fmt.Errorf("psync: reply line longer than %d bytes", max+maxDiscard)
		}
		if room := max + 2 - len(buf); room > 0 {
			buf = append(buf, frag[:min(room, len(frag))]...)
		}
		if err == nil {
			break
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err == io.EOF && total > 0 {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
	if total > max+2 { // cut: the kept part has no line end
		return string(bytes.TrimSuffix(buf[:max], []byte{'\r'})), nil
	}
	buf = bytes.TrimSuffix(buf[:len(buf)-1], []byte{'\r'})
	return string(buf), nil
}

// maxDiscard bounds what ReadLine drops of an over-long line before it
// gives up on the connection.
const maxDiscard = 64 << 10

// ReadReplyLine reads the next line that is not an empty keepalive. onKeepalive,
// if not nil, is called for each empty line so the caller can extend deadlines.
func ReadReplyLine(br *bufio.Reader, max int, onKeepalive func()) (string, error) {
	for {
		line, err := ReadLine(br, max)
		if err != nil {
			return "", err
		}
		if line != "" {
			return line, nil
		}
		if onKeepalive != nil {
			onKeepalive()
		}
	}
}

// EncodeContinue is a master's +CONTINUE line (masterTryPartialResynchronization):
// with the replication ID for replicas that sent capa psync2.
func EncodeContinue(replid string, psync2 bool) []byte {
	if psync2 {
		return []byte("+CONTINUE " + replid + "\r\n")
	}
	return []byte("+CONTINUE\r\n")
}

// EncodeFullResync is a master's "+FULLRESYNC <replid> <offset>" line.
func EncodeFullResync(replid string, offset int64) []byte {
	return fmt.Appendf(nil, "+FULLRESYNC %s %d\r\n", replid, offset)
}

// EncodePayloadHeader is the "$<length>" line before a disk-form payload.
func EncodePayloadHeader(length int64) []byte { return fmt.Appendf(nil, "$%d\r\n", length) }
