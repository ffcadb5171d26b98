package upstream

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

// scan delivers the PUBLISH commands that end in chunk and keeps the
// start of one still under way, in place: the caller runs it only once
// the chunk is in the backlog (and resets sp when an append fails). sc is
// the scanner after chunk; found lists (end, size) of the PUBLISH commands
// in it. The slices given to deliver are valid during the call only.
func (sp *streamPublishes) scan(chunk []byte, found [][2]int, sc *psync.Scanner, deliver func(channel, msg []byte)) {
	for _, f := range found {
		end, size := f[0], f[1]
		var cmd []byte
		switch start := end - size; {
		case start >= 0:
			cmd = chunk[start:end]
		case sp.carryOK && len(sp.carry) == -start:
			sp.carry = append(sp.carry, chunk[:end]...) // the whole command now
			cmd = sp.carry
		default:
			continue // began before anyone subscribed, or too long to keep
		}
		if args, ok := parseArray(cmd); ok && len(args) == 3 {
			deliver(args[1], args[2])
		}
	}
	name, known, size := sc.Partial()
	switch {
	case size == 0 || known && name != "publish":
		sp.carry, sp.carryOK = sp.carry[:0], true // nothing to keep
	case size > maxPublishCarry:
		sp.carry, sp.carryOK = sp.carry[:0], false
	case size <= int64(len(chunk)): // it began in this chunk
		sp.carry, sp.carryOK = append(sp.carry[:0], chunk[int64(len(chunk))-size:]...), true
	case sp.carryOK && int64(len(sp.carry)+len(chunk)) == size: // it goes on
		sp.carry = append(sp.carry, chunk...)
	default:
		sp.carry, sp.carryOK = sp.carry[:0], false
	}
	if cap(sp.carry) > maxPublishCarry && len(sp.carry) == 0 {
		sp.carry = nil // do not keep a long one's buffer once it is done
	}
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
