package psync

import (
	"strings"
	"testing"
)

func TestCRC64CheckValue(t *testing.T) {
	// The CRC-64/Jones check value for "123456789", as in Redis' crc64.c test.
	if got := CRC64(0, []byte("123456789")); got != 0xe9c6d914c4b8d9ca {
		t.Fatalf("CRC64 = %x", got)
	}
	// Incremental use gives the same result.
	if got := CRC64(CRC64(0, []byte("1234")), []byte("56789")); got != 0xe9c6d914c4b8d9ca {
		t.Fatalf("incremental CRC64 = %x", got)
	}
}

func TestCanContinue(t *testing.T) {
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	shifted := History{ReplID: b, ReplID2: a, SecondOffset: 101}
	fresh := Fresh(a)
	cases := []struct {
		name        string
		h           History
		id          string
		off         int64
		first, end  int64
		wantVerdict ContinueVerdict
	}{
		{"same id inside", fresh, a, 50, 1, 100, Continue},
		{"same id at first byte", fresh, a, 1, 1, 100, Continue},
		{"same id at end+1 sends nothing", fresh, a, 101, 1, 100, Continue},
		{"case-insensitive id", fresh, strings.ToUpper(a), 50, 1, 100, Continue},
		{"ahead", fresh, a, 102, 1, 100, RejectAhead},
		{"behind", fresh, a, 10, 20, 100, RejectBehind},
		{"unknown id", fresh, b, 50, 1, 100, RejectReplID},
		{"question mark", fresh, "?", -1, 1, 100, RejectNoHistory},
		{"no history", History{}, a, 1, 1, 100, RejectNoHistory},
		{"replid2 up to second offset", shifted, a, 101, 1, 200, Continue},
		{"replid2 past second offset", shifted, a, 102, 1, 200, RejectReplID},
		{"new id past second offset", shifted, b, 150, 1, 200, Continue},
		{"empty backlog after full sync", fresh, a, 1001, 1001, 1000, Continue},
		{"zeros never match replid2", Fresh(a), NoReplID, 5, 1, 100, RejectReplID},
	}
	for _, c := range cases {
		if got := c.h.CanContinue(c.id, c.off, c.first, c.end); got != c.wantVerdict {
			t.Errorf("%s: got %v, want %v", c.name, got, c.wantVerdict)
		}
	}
}

func TestShift(t *testing.T) {
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	h := Fresh(a).Shift(b, 1105)
	if h.ReplID != b || h.ReplID2 != a || h.SecondOffset != 1106 {
		t.Fatalf("shift: %+v", h)
	}
}
