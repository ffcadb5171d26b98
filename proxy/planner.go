package proxy

import (
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// The sync planner decides what a replica's SYNC or PSYNC gets, from the
// request, the store's position and what the replica announced. It does
// no I/O: the session executes its answer (write, wait, stream) and asks
// again after waiting. The rules are PROTOCOL.md §5.2 (continue), the
// hold-ahead rule for a proxy catching up after a restart, and RDB-version
// compatibility.

// syncRequest is what the replica asked for.
type syncRequest struct {
	legacy  bool   // SYNC: no +FULLRESYNC line, no ACKs
	rdbOnly bool   // REPLCONF rdb-only 1: the snapshot, then a close
	replID  string // "?" for none
	offset  int64
	version string // REPLCONF version (Valkey 8+ announce one)
}

// planInput is everything the planner looks at.
type planInput struct {
	req syncRequest
	pos position
	// holdAhead: the hold-ahead period for this request has not run out.
	holdAhead bool
	// fullSync: the planner already answered FullSync-when-ready once, so
	// the continue rule is not tried again.
	fullSync bool
}

// planKind is what the session does next.
type planKind int

const (
	planContinue planKind = iota // +CONTINUE, then stream from the offset
	planHold                     // keepalive and ask again
	planFullSync                 // +FULLRESYNC with the stored snapshot
	planRefuse                   // an error reply and a close
)

// syncPlan is the planner's answer.
type syncPlan struct {
	kind planKind
	// verdict is why a PSYNC did not continue (planFullSync, and a
	// planHold waiting for a snapshot).
	verdict psync.ContinueVerdict
	// counted: the rejection counts as a failed partial resync (Redis does
	// not count "?" requests).
	counted bool
	// waitSnapshot: a hold for a snapshot (rather than for the offset).
	waitSnapshot bool
	snap         *snapshot.Info
	// stale: the hold is for a lapsed snapshot (lazy refresh: the backlog
	// no longer holds the stream after it); a refresh must be asked for.
	stale bool
	// rdbWarn: the replica may refuse this RDB version (strict check).
	rdbWarn bool
	reason  DisconnectReason // planRefuse
}

// planSync is the rule book.
func planSync(in planInput) syncPlan {
	req, pos := in.req, in.pos
	var out syncPlan
	if !in.fullSync && !req.legacy && !req.rdbOnly {
		v := pos.hist.CanContinue(req.replID, req.offset, pos.first, pos.end)
		switch {
		case v == psync.Continue:
			return syncPlan{kind: planContinue}
		case v == psync.RejectAhead && in.holdAhead:
			return syncPlan{kind: planHold, verdict: v}
		}
		out.verdict, out.counted = v, req.replID != "?"
	}
	if pos.snap == nil || pos.hist.Empty() {
		out.kind, out.waitSnapshot = planHold, true
		return out
	}
	if pos.snap.Offset+1 < pos.first { // the stream after it was trimmed
		out.kind, out.waitSnapshot, out.stale = planHold, true, true
		return out
	}
	out.snap = pos.snap
	switch replicaRDBCompat(req.version, pos.snap.RDBVersion) {
	case rdbRejects:
		out.kind, out.reason = planRefuse, DownRDBVersion
		return out
	case rdbMayReject:
		out.rdbWarn = true
	}
	out.kind = planFullSync
	return out
}
