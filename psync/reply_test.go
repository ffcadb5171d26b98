package psync

import (
	"bufio"
	"strings"
	"testing"
)

const id40 = "0123456789abcdef0123456789abcdef01234567"

func TestParsePsyncReply(t *testing.T) {
	cases := []struct {
		line string
		kind ReplyKind
		id   string
		off  int64
		err  bool
	}{
		{"+FULLRESYNC " + id40 + " 1000", ReplyFullResync, id40, 1000, false},
		{"+FULLRESYNC " + id40 + " 0", ReplyFullResync, id40, 0, false},
		{"+FULLRESYNC " + id40[:39] + " 1000", ReplyFullResync, "", 0, true},
		{"+FULLRESYNC " + id40 + " x", ReplyFullResync, "", 0, true},
		{"+FULLRESYNC", ReplyFullResync, "", 0, true},
		{"+CONTINUE", ReplyContinue, "", 0, false},
		{"+CONTINUE " + id40, ReplyContinue, id40, 0, false},
		{"+CONTINUE " + id40[:20], ReplyContinue, "", 0, false},
		{"-NOMASTERLINK Can't SYNC while not connected with my master", ReplyTryLater, "", 0, false},
		{"-LOADING Redis is loading the dataset in memory", ReplyTryLater, "", 0, false},
		{"-ERR unknown command 'PSYNC'", ReplyNotSupported, "", 0, false},
	}
	for _, c := range cases {
		r, err := ParsePsyncReply(c.line)
		if (err != nil) != c.err {
			t.Errorf("%q: err %v", c.line, err)
			continue
		}
		if err != nil {
			continue
		}
		if r.Kind != c.kind || r.ReplID != c.id || r.Offset != c.off {
			t.Errorf("%q: got %+v", c.line, r)
		}
	}
}

func TestReadReplyLineSkipsKeepalives(t *testing.T) {
	br := bufio.NewReader(strings.NewReader("\n\n\r\n+FULLRESYNC " + id40 + " 28\r\n"))
	n := 0
	line, err := ReadReplyLine(br, MaxReplyLine, func() { n++ })
	if err != nil || line != "+FULLRESYNC "+id40+" 28" || n != 3 {
		t.Fatalf("line %q err %v keepalives %d", line, err, n)
	}
}

// TestReadLineLong: a long error reply (Redis' -DENIED protected-mode text
// is ~600 bytes) comes back whole; past MaxReplyLine it is cut, not
// replaced, and the next line is read normally; a line past the discard
// bound is an error.
func TestReadLineLong(t *testing.T) {
	denied := "-DENIED Redis is running in protected mode because protected mode is enabled and no password is set for the default user. " + strings.Repeat("In this mode connections are only accepted from the loopback interface. ", 7)
	long := strings.Repeat("y", 5000)
	br := bufio.NewReaderSize(strings.NewReader(denied+"\r\n"+long+"\r\n+OK\r\n"), 16)
	if line, err := ReadLine(br, MaxReplyLine); err != nil || line != denied {
		t.Fatalf("%d-byte error reply: %q %v", len(denied), line, err)
	}
	if line, err := ReadLine(br, MaxReplyLine); err != nil || line != long[:MaxReplyLine] {
		t.Fatalf("over-long line: %d bytes, %v", len(line), err)
	}
	if line, err := ReadLine(br, MaxReplyLine); err != nil || line != "+OK" {
		t.Fatalf("the line after: %q %v", line, err)
	}
	br = bufio.NewReaderSize(strings.NewReader(strings.Repeat("z", MaxReplyLine+maxDiscard+10)+"\r\n"), 16)
	if _, err := ReadLine(br, MaxReplyLine); err == nil {
		t.Fatal("accepted a line past the discard bound")
	}
}

func FuzzParsePsyncReply(f *testing.F) {
	for _, s := range []string{"+FULLRESYNC " + id40 + " 1000", "+CONTINUE", "+CONTINUE " + id40, "-LOADING x", "", "+FULLRESYNC  ", "+CONTINUE \x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		r, err := ParsePsyncReply(line)
		if err != nil {
			return
		}
		if r.Kind == ReplyFullResync && (!ValidReplID(r.ReplID) || r.Offset < 0) {
			t.Fatalf("accepted bad FULLRESYNC %q: %+v", line, r)
		}
		if r.Kind == ReplyContinue && r.ReplID != "" && !ValidReplID(r.ReplID) {
			t.Fatalf("accepted bad CONTINUE id %q", line)
		}
	})
}

// TestEncodeParseRoundTrip: the master-side lines the proxy writes parse
// back, as a replica reads them, to what was meant.
func TestEncodeParseRoundTrip(t *testing.T) {
	id := strings.Repeat("ab", 20)
	r, err := ParsePsyncReply(strings.TrimSuffix(string(EncodeFullResync(id, 12345)), "\r\n"))
	if err != nil || r.Kind != ReplyFullResync || r.ReplID != id || r.Offset != 12345 {
		t.Fatalf("FULLRESYNC: %+v %v", r, err)
	}
	for _, psync2 := range []bool{true, false} {
		r, err := ParsePsyncReply(strings.TrimSuffix(string(EncodeContinue(id, psync2)), "\r\n"))
		want := ""
		if psync2 {
			want = id
		}
		if err != nil || r.Kind != ReplyContinue || r.ReplID != want {
			t.Fatalf("CONTINUE psync2=%v: %+v %v", psync2, r, err)
		}
	}
	h, err := ParsePayloadHeader(strings.TrimSuffix(string(EncodePayloadHeader(99)), "\r\n"))
	if err != nil || h.Length != 99 {
		t.Fatalf("payload header: %+v %v", h, err)
	}
}
