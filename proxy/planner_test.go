package proxy

import (
	"strings"
	"testing"

	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// TestPlanSync covers each rule of the planner: PROTOCOL.md §5.2's
// continue rule (IDs, replid2 up to second_repl_offset, the backlog range,
// "?"), hold-ahead, waiting for a snapshot, and RDB-version refusals.
func TestPlanSync(t *testing.T) {
	a, b := strings.Repeat("a", 40), strings.Repeat("b", 40)
	snap10 := &snapshot.Info{Name: "s", Offset: 100, RDBVersion: 10}
	snap12 := &snapshot.Info{Name: "s", Offset: 100, RDBVersion: 12}
	// History a since offset 1001 (replid2 b up to 1000), backlog [101, 2000].
	shifted := position{hist: psync.History{ReplID: a, ReplID2: b, SecondOffset: 1000}, first: 101, end: 2000, snap: snap10}
	fresh := position{hist: psync.Fresh(a), first: 101, end: 2000, snap: snap10}
	psyncReq := func(id string, off int64) syncRequest { return syncRequest{replID: id, offset: off} }
	cases := []struct {
		name string
		in   planInput
		want syncPlan
	}{
		{"same id inside the backlog", planInput{req: psyncReq(a, 500), pos: fresh}, syncPlan{kind: planContinue}},
		{"id compared without case", planInput{req: psyncReq(strings.ToUpper(a), 500), pos: fresh}, syncPlan{kind: planContinue}},
		{"first byte held", planInput{req: psyncReq(a, 101), pos: fresh}, syncPlan{kind: planContinue}},
		{"end+1: nothing to send yet", planInput{req: psyncReq(a, 2001), pos: fresh}, syncPlan{kind: planContinue}},
		{"behind the backlog", planInput{req: psyncReq(a, 100), pos: fresh},
			syncPlan{kind: planFullSync, verdict: psync.RejectBehind, counted: true, snap: snap10}},
		{"ahead, within hold-ahead: hold", planInput{req: psyncReq(a, 2002), pos: fresh, holdAhead: true},
			syncPlan{kind: planHold, verdict: psync.RejectAhead}},
		{"ahead, hold-ahead over", planInput{req: psyncReq(a, 2002), pos: fresh},
			syncPlan{kind: planFullSync, verdict: psync.RejectAhead, counted: true, snap: snap10}},
		{"replid2 up to second_repl_offset", planInput{req: psyncReq(b, 1000), pos: shifted}, syncPlan{kind: planContinue}},
		{"replid2 past second_repl_offset", planInput{req: psyncReq(b, 1001), pos: shifted},
			syncPlan{kind: planFullSync, verdict: psync.RejectReplID, counted: true, snap: snap10}},
		{"unknown id", planInput{req: psyncReq(b, 500), pos: fresh},
			syncPlan{kind: planFullSync, verdict: psync.RejectReplID, counted: true, snap: snap10}},
		{"? -1 is a full sync, not a failed partial", planInput{req: psyncReq("?", -1), pos: fresh},
			syncPlan{kind: planFullSync, verdict: psync.RejectNoHistory, snap: snap10}},
		{"no history yet: wait for a snapshot", planInput{req: psyncReq("?", -1), pos: position{}},
			syncPlan{kind: planHold, verdict: psync.RejectNoHistory, waitSnapshot: true}},
		{"history but no snapshot: wait", planInput{req: psyncReq(b, 5), pos: position{hist: psync.Fresh(a), first: 101, end: 200}},
			syncPlan{kind: planHold, verdict: psync.RejectReplID, counted: true, waitSnapshot: true}},
		{"lapsed snapshot (lazy): hold and ask for a refresh", planInput{req: psyncReq("?", -1), pos: position{hist: fresh.hist, first: 102, end: 2000, snap: snap10}},
			syncPlan{kind: planHold, verdict: psync.RejectNoHistory, waitSnapshot: true, stale: true}},
		{"SYNC never continues", planInput{req: syncRequest{legacy: true}, pos: fresh}, syncPlan{kind: planFullSync, snap: snap10}},
		{"rdb-only never continues", planInput{req: syncRequest{rdbOnly: true, replID: a, offset: 500}, pos: fresh},
			syncPlan{kind: planFullSync, snap: snap10}},
		{"after a hold for the snapshot, no second continue check", planInput{req: psyncReq(a, 500), pos: fresh, fullSync: true},
			syncPlan{kind: planFullSync, snap: snap10}},
		{"Valkey 8 cannot load RDB 12: refused", planInput{req: syncRequest{replID: "?", offset: -1, version: "8.0.2"}, pos: position{hist: fresh.hist, first: 101, end: 2000, snap: snap12}},
			syncPlan{kind: planRefuse, verdict: psync.RejectNoHistory, snap: snap12, reason: DownRDBVersion}},
		{"Valkey 9 may refuse RDB 12: warn", planInput{req: syncRequest{replID: "?", offset: -1, version: "9.0.0"}, pos: position{hist: fresh.hist, first: 101, end: 2000, snap: snap12}},
			syncPlan{kind: planFullSync, verdict: psync.RejectNoHistory, snap: snap12, rdbWarn: true}},
		{"stock Redis announces nothing: serve", planInput{req: psyncReq("?", -1), pos: position{hist: fresh.hist, first: 101, end: 2000, snap: snap12}},
			syncPlan{kind: planFullSync, verdict: psync.RejectNoHistory, snap: snap12}},
	}
	for _, c := range cases {
		if got := planSync(c.in); got != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, c.want)
		}
	}
}
