// Package psync is the Redis replication protocol as a library: replication
// history and the partial-resync rule, the replica-side handshake, PSYNC reply
// parsing, RDB payload framing, the stream scanner and CRC-64/Jones. It owns
// no goroutines, files or sockets it was not handed.
package psync

import (
	"strings"
)

// NoReplID is what Redis shows for an absent secondary replication ID.
const NoReplID = "0000000000000000000000000000000000000000"

// ReplIDLen is the length of every replication ID.
const ReplIDLen = 40

// History is the identity of a replication stream: the current ID and the
// previous one, valid up to SecondOffset (the first offset of the new history).
type History struct {
	ReplID       string `json:"replid"`
	ReplID2      string `json:"replid2"`
	SecondOffset int64  `json:"second_replid_offset"`
}

// Empty reports whether no history has been taken yet.
func (h History) Empty() bool { return h.ReplID == "" }

// Shift moves the current ID to replid2 as Redis' shiftReplicationId() does:
// offsets up to and including end belong to the old ID.
func (h History) Shift(newID string, end int64) History {
	return History{ReplID: newID, ReplID2: h.ReplID, SecondOffset: end + 1}
}

// Fresh is the history after a full resync with newID: no secondary ID.
func Fresh(newID string) History {
	return History{ReplID: newID, ReplID2: NoReplID, SecondOffset: -1}
}

// ContinueVerdict says why a PSYNC can or cannot continue.
type ContinueVerdict int

const (
	Continue        ContinueVerdict = iota
	RejectNoHistory                 // the replica asked for "?" or we have no history
	RejectReplID                    // unknown ID, or replid2 past second_replid_offset
	RejectBehind                    // offset before the first byte held
	RejectAhead                     // offset past end+1
)

// RejectVerdicts lists the verdicts that refuse a partial resync, for
// counters that exist from the start.
var RejectVerdicts = []ContinueVerdict{RejectNoHistory, RejectReplID, RejectBehind, RejectAhead}

func (v ContinueVerdict) String() string {
	switch v {
	case Continue:
		return "continue"
	case RejectNoHistory:
		return "no_backlog"
	case RejectReplID:
		return "replid_mismatch"
	case RejectBehind:
		return "offset_behind_backlog"
	case RejectAhead:
		return "offset_ahead"
	}
	return "unknown"
}

// CanContinue is replication.c:masterTryPartialResynchronization()'s rule
// for a backlog holding the bytes [first, end]; first == end+1 when it is empty.
// An offset of end+1 continues with nothing to send.
func (h History) CanContinue(reqID string, reqOff, first, end int64) ContinueVerdict {
	if h.Empty() || reqID == "?" || first <= 0 {
		return RejectNoHistory
	}
	idOK := strings.EqualFold(reqID, h.ReplID) ||
		(h.ReplID2 != NoReplID && strings.EqualFold(reqID, h.ReplID2) && reqOff <= h.SecondOffset)
	if !idOK {
		return RejectReplID
	}
	if reqOff < first {
		return RejectBehind
	}
	if reqOff > end+1 {
		return RejectAhead
	}
	return Continue
}

// ValidReplID reports whether s can be a replication ID: 40 printable,
// non-space characters (Redis accepts any; it generates lowercase hex).
func ValidReplID(s string) bool {
	if len(s) != ReplIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
