package proxy

import (
	"bytes"
	"strconv"

	"github.com/replproxy/replproxy/psync"
)

// streamPublishes finds the PUBLISH commands of the upstream stream, for
// the proxy's own subscribers (a replica delivers them too). It works only
// while someone is subscribed, and keeps at most maxPublishCarry bytes of
// a command cut by a read.
type streamPublishes struct {
	carry   []byte // the start of the command under way, from earlier chunks
	carryOK bool   // carry holds all of that start
}

// maxPublishCarry bounds the copy of a PUBLISH cut between reads; a
// longer one is not delivered (Sentinel's hellos are ~150 bytes).
const maxPublishCarry = 4 << 20

type publication struct{ channel, msg []byte }

// scan returns the publications that end in chunk and the carry state for
// the next chunk; the caller commits it with the bytes. sc is the scanner
// after chunk; found lists (end, size) of the PUBLISH commands in it.
func (sp *streamPublishes) scan(chunk []byte, found [][2]int, sc *psync.Scanner) (pubs []publication, next streamPublishes) {
	for _, f := range found {
		end, size := f[0], f[1]
		var cmd []byte
		switch start := end - size; {
		case start >= 0:
			cmd = chunk[start:end]
		case sp.carryOK && len(sp.carry) == -start:
			cmd = append(append([]byte(nil), sp.carry...), chunk[:end]...)
		default:
			continue // began before anyone subscribed, or too long to keep
		}
		if args, ok := parseArray(cmd); ok && len(args) == 3 {
			pubs = append(pubs, publication{channel: args[1], msg: args[2]})
		}
	}
	name, known, size := sc.Partial()
	switch {
	case size == 0 || known && name != "publish":
		next.carryOK = true // nothing to keep
	case size > maxPublishCarry:
	case size <= int64(len(chunk)):
		next.carry, next.carryOK = append(sp.carry[:0:0], chunk[int64(len(chunk))-size:]...), true
	case sp.carryOK && int64(len(sp.carry)+len(chunk)) == size:
		next.carry, next.carryOK = append(append(sp.carry[:0:0], sp.carry...), chunk...), true
	}
	return pubs, next
}

// parseArray splits one complete RESP array of bulk strings; the slices
// alias b.
func parseArray(b []byte) ([][]byte, bool) {
	line := func() ([]byte, bool) {
		i := bytes.Index(b, []byte("\r\n"))
		if i < 1 {
			return nil, false
		}
		l := b[:i]
		b = b[i+2:]
		return l, true
	}
	head, ok := line()
	if !ok || head[0] != '*' {
		return nil, false
	}
	n, err := strconv.Atoi(string(head[1:]))
	if err != nil || n < 1 {
		return nil, false
	}
	args := make([][]byte, 0, n)
	for range n {
		h, ok := line()
		if !ok || h[0] != '$' {
			return nil, false
		}
		l, err := strconv.Atoi(string(h[1:]))
		if err != nil || l < 0 || len(b) < l+2 {
			return nil, false
		}
		args = append(args, b[:l])
		b = b[l+2:]
	}
	return args, len(b) == 0
}
