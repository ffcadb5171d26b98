package plan

import (
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// Request is what the replica asked for.
type Request struct {
	Legacy  bool   // SYNC: no +FULLRESYNC line, no ACKs
	RDBOnly bool   // REPLCONF rdb-only 1: the snapshot, then a close
	ReplID  string // "?" for none
	Offset  int64
	Version string // REPLCONF version (Valkey 8+ announce one)
}

// Position is the part of the store's position the planner reads.
type Position struct {
	Hist       psync.History
	First, End int64          // the backlog holds [First, End]
	Snap       *snapshot.Info // nil: none yet
}

// Input is everything the planner looks at.
type Input struct {
	Req Request
	Pos Position
	// HoldAhead: the hold-ahead period for this request has not run out.
	HoldAhead bool
	// FullSync: the planner already answered FullSync-when-ready once, so
	// the continue rule is not tried again.
	FullSync bool
}

// Kind is what the session does next.
type Kind int

const (
	Continue Kind = iota // +CONTINUE, then stream from the offset
	Hold                 // keepalive and ask again
	FullSync             // +FULLRESYNC with the stored snapshot
	Refuse               // the replica cannot load the snapshot: an error reply and a close
)

// Plan is the planner's answer.
type Plan struct {
	Kind Kind
	// Verdict is why a PSYNC did not continue (FullSync, and a Hold
	// waiting for a snapshot).
	Verdict psync.ContinueVerdict
	// Counted: the rejection counts as a failed partial resync (Redis does
	// not count "?" requests).
	Counted bool
	// WaitSnapshot: a hold for a snapshot (rather than for the offset).
	WaitSnapshot bool
	Snap         *snapshot.Info
	// Stale: the hold is for a lapsed snapshot (the backlog no longer holds
	// the stream after it); a refresh must be asked for.
	Stale bool
	// RDBWarn: the replica may refuse this RDB version (strict check).
	RDBWarn bool
}

// Sync is the rule book.
func Sync(in Input) Plan {
	req, pos := in.Req, in.Pos
	var out Plan
	if !in.FullSync && !req.Legacy && !req.RDBOnly {
		v := pos.Hist.CanContinue(req.ReplID, req.Offset, pos.First, pos.End)
		switch {
		case v == psync.Continue:
			return Plan{Kind: Continue}
		case v == psync.RejectAhead && in.HoldAhead:
			return Plan{Kind: Hold, Verdict: v}
		}
		out.Verdict, out.Counted = v, req.ReplID != "?"
	}
	if pos.Snap == nil || pos.Hist.Empty() {
		out.Kind, out.WaitSnapshot = Hold, true
		return out
	}
	if pos.Snap.Offset+1 < pos.First { // the stream after it was trimmed
		out.Kind, out.WaitSnapshot, out.Stale = Hold, true, true
		return out
	}
	out.Snap = pos.Snap
	switch ReplicaRDBCompat(req.Version, pos.Snap.RDBVersion) {
	case RDBRejects:
		out.Kind = Refuse
		return out
	case RDBMayReject:
		out.RDBWarn = true
	}
	out.Kind = FullSync
	return out
}
