package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Header is the parsed start of an RDB file.
type Header struct {
	Magic   string // "REDIS" or "VALKEY"
	Version int    // e.g. 10 for Redis 7.0, 80 for Valkey 9
	Aux     map[string]string
}

const (
	opAux = 0xFA
	opEOF = 0xFF
)

// ParseHeader parses the magic, version and leading AUX fields of an RDB.
// b need only hold the start of the file; AUX fields cut off by its end are
// left out rather than reported as errors.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	var verDigits string
	switch {
	case len(b) >= 9 && string(b[:5]) == "REDIS":
		h.Magic, verDigits = "REDIS", string(b[5:9])
	case len(b) >= 9 && string(b[:6]) == "VALKEY":
		h.Magic, verDigits = "VALKEY", string(b[6:9])
	default:
		return h, errors.New("rdb: missing REDIS/VALKEY magic")
	}
	v, err := strconv.Atoi(verDigits)
	if err != nil || v < 1 {
		return h, fmt.Errorf("rdb: bad version %q", verDigits)
	}
	h.Version = v
	h.Aux = map[string]string{}
	p := b[9:]
	for len(p) > 0 && p[0] == opAux {
		key, n, err := readString(p[1:])
		if err != nil {
			break
		}
		val, m, err := readString(p[1+n:])
		if err != nil {
			break
		}
		h.Aux[key] = val
		p = p[1+n+m:]
	}
	return h, nil
}

var errShort = errors.New("rdb: truncated")

// readString decodes an RDB string object (length-prefixed or integer
// encoded) and returns it with the bytes consumed. LZF-compressed strings
// are skipped and returned empty: no AUX field the relay reads is compressed.
func readString(p []byte) (string, int, error) {
	n, enc, used, err := readLength(p)
	if err != nil {
		return "", 0, err
	}
	if enc {
		switch n {
		case 0:
			if len(p) < used+1 {
				return "", 0, errShort
			}
			return strconv.Itoa(int(int8(p[used]))), used + 1, nil
		case 1:
			if len(p) < used+2 {
				return "", 0, errShort
			}
			return strconv.Itoa(int(int16(binary.LittleEndian.Uint16(p[used:])))), used + 2, nil
		case 2:
			if len(p) < used+4 {
				return "", 0, errShort
			}
			return strconv.Itoa(int(int32(binary.LittleEndian.Uint32(p[used:])))), used + 4, nil
		case 3:
			clen, _, u1, err := readLength(p[used:])
			if err != nil {
				return "", 0, err
			}
			_, _, u2, err := readLength(p[used+u1:])
			if err != nil {
				return "", 0, err
			}
			total := used + u1 + u2 + int(clen)
			if clen > uint64(len(p)) || total > len(p) {
				return "", 0, errShort
			}
			return "", total, nil
		}
		return "", 0, fmt.Errorf("rdb: unknown string encoding %d", n)
	}
	if n > uint64(len(p)-used) {
		return "", 0, errShort
	}
	return string(p[used : used+int(n)]), used + int(n), nil
}

// readLength decodes an RDB length; enc reports the special-encoding form.
func readLength(p []byte) (n uint64, enc bool, used int, err error) {
	if len(p) < 1 {
		return 0, false, 0, errShort
	}
	switch p[0] >> 6 {
	case 0:
		return uint64(p[0] & 0x3F), false, 1, nil
	case 1:
		if len(p) < 2 {
			return 0, false, 0, errShort
		}
		return uint64(p[0]&0x3F)<<8 | uint64(p[1]), false, 2, nil
	case 3:
		return uint64(p[0] & 0x3F), true, 1, nil
	}
	switch p[0] {
	case 0x80:
		if len(p) < 5 {
			return 0, false, 0, errShort
		}
		return uint64(binary.BigEndian.Uint32(p[1:])), false, 5, nil
	case 0x81:
		if len(p) < 9 {
			return 0, false, 0, errShort
		}
		return binary.BigEndian.Uint64(p[1:]), false, 9, nil
	}
	return 0, false, 0, fmt.Errorf("rdb: bad length byte 0x%02x", p[0])
}
