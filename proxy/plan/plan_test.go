package plan

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
	shifted := Position{Hist: psync.History{ReplID: a, ReplID2: b, SecondOffset: 1000}, First: 101, End: 2000, Snap: snap10}
	fresh := Position{Hist: psync.Fresh(a), First: 101, End: 2000, Snap: snap10}
	psyncReq := func(id string, off int64) Request { return Request{ReplID: id, Offset: off} }
	cases := []struct {
		name string
		in   Input
		want Plan
	}{
		{"same id inside the backlog", Input{Req: psyncReq(a, 500), Pos: fresh}, Plan{Kind: Continue}},
		{"id compared without case", Input{Req: psyncReq(strings.ToUpper(a), 500), Pos: fresh}, Plan{Kind: Continue}},
		{"first byte held", Input{Req: psyncReq(a, 101), Pos: fresh}, Plan{Kind: Continue}},
		{"end+1: nothing to send yet", Input{Req: psyncReq(a, 2001), Pos: fresh}, Plan{Kind: Continue}},
		{"behind the backlog", Input{Req: psyncReq(a, 100), Pos: fresh},
			Plan{Kind: FullSync, Verdict: psync.RejectBehind, Counted: true, Snap: snap10}},
		{"ahead, within hold-ahead: hold", Input{Req: psyncReq(a, 2002), Pos: fresh, HoldAhead: true},
			Plan{Kind: Hold, Verdict: psync.RejectAhead}},
		{"ahead, hold-ahead over", Input{Req: psyncReq(a, 2002), Pos: fresh},
			Plan{Kind: FullSync, Verdict: psync.RejectAhead, Counted: true, Snap: snap10}},
		{"replid2 up to second_repl_offset", Input{Req: psyncReq(b, 1000), Pos: shifted}, Plan{Kind: Continue}},
		{"replid2 past second_repl_offset", Input{Req: psyncReq(b, 1001), Pos: shifted},
			Plan{Kind: FullSync, Verdict: psync.RejectReplID, Counted: true, Snap: snap10}},
		{"unknown id", Input{Req: psyncReq(b, 500), Pos: fresh},
			Plan{Kind: FullSync, Verdict: psync.RejectReplID, Counted: true, Snap: snap10}},
		{"? -1 is a full sync, not a failed partial", Input{Req: psyncReq("?", -1), Pos: fresh},
			Plan{Kind: FullSync, Verdict: psync.RejectNoHistory, Snap: snap10}},
		{"no history yet: wait for a snapshot", Input{Req: psyncReq("?", -1), Pos: Position{}},
			Plan{Kind: Hold, Verdict: psync.RejectNoHistory, WaitSnapshot: true}},
		{"history but no snapshot: wait", Input{Req: psyncReq(b, 5), Pos: Position{Hist: psync.Fresh(a), First: 101, End: 200}},
			Plan{Kind: Hold, Verdict: psync.RejectReplID, Counted: true, WaitSnapshot: true}},
		{"lapsed snapshot (lazy): hold and ask for a refresh", Input{Req: psyncReq("?", -1), Pos: Position{Hist: fresh.Hist, First: 102, End: 2000, Snap: snap10}},
			Plan{Kind: Hold, Verdict: psync.RejectNoHistory, WaitSnapshot: true, Stale: true}},
		{"SYNC never continues", Input{Req: Request{Legacy: true}, Pos: fresh}, Plan{Kind: FullSync, Snap: snap10}},
		{"rdb-only never continues", Input{Req: Request{RDBOnly: true, ReplID: a, Offset: 500}, Pos: fresh},
			Plan{Kind: FullSync, Snap: snap10}},
		{"after a hold for the snapshot, no second continue check", Input{Req: psyncReq(a, 500), Pos: fresh, FullSync: true},
			Plan{Kind: FullSync, Snap: snap10}},
		{"Valkey 8 cannot load RDB 12: refused", Input{Req: Request{ReplID: "?", Offset: -1, Version: "8.0.2"}, Pos: Position{Hist: fresh.Hist, First: 101, End: 2000, Snap: snap12}},
			Plan{Kind: Refuse, Verdict: psync.RejectNoHistory, Snap: snap12}},
		{"Valkey 9 may refuse RDB 12: warn", Input{Req: Request{ReplID: "?", Offset: -1, Version: "9.0.0"}, Pos: Position{Hist: fresh.Hist, First: 101, End: 2000, Snap: snap12}},
			Plan{Kind: FullSync, Verdict: psync.RejectNoHistory, Snap: snap12, RDBWarn: true}},
		{"stock Redis announces nothing: serve", Input{Req: psyncReq("?", -1), Pos: Position{Hist: fresh.Hist, First: 101, End: 2000, Snap: snap12}},
			Plan{Kind: FullSync, Verdict: psync.RejectNoHistory, Snap: snap12}},
	}
	for _, c := range cases {
		if got := Sync(c.in); got != c.want {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, c.want)
		}
	}
}
