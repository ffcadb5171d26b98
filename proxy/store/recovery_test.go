package store

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// TestInconsistency: the rule the store recovers by (and Inspect reports):
// a history is served after a restart only with its snapshot on disk and
// a backlog of the same history that reaches the snapshot's offset; a
// backlog that starts after the snapshot is a lapsed snapshot, not a
// broken history.
func TestInconsistency(t *testing.T) {
	dir := t.TempDir()
	snap := &snapshot.Info{Name: "dump-a-100.rdb", Offset: 100, Size: 3}
	if err := os.WriteFile(filepath.Join(dir, snap.Name), []byte("rdb"), 0o644); err != nil {
		t.Fatal(err)
	}
	hist := psync.History{ReplID: strings.Repeat("a", 40)}
	ok := persisted{History: hist, Snapshot: snap, BacklogTag: "tag"}
	for _, c := range []struct {
		name        string
		st          persisted
		tag         string
		first, end  int64
		snapDir     string
		wantProblem string // "" for consistent
	}{
		{"consistent", ok, "tag", 50, 200, dir, ""},
		{"lapsed snapshot: the history stands", ok, "tag", 150, 200, dir, ""},
		{"no history", persisted{}, "tag", 1, 2, dir, "no history"},
		{"no snapshot", persisted{History: hist, BacklogTag: "tag"}, "tag", 1, 2, dir, "no snapshot"},
		{"another history's backlog", ok, "other", 50, 200, dir, "backlog belongs to another history"},
		{"untagged backlog", persisted{History: hist, Snapshot: snap}, "", 50, 200, dir, "backlog belongs to another history"},
		{"empty backlog", ok, "tag", 0, 0, dir, "does not reach snapshot offset"},
		{"backlog ends before the snapshot", ok, "tag", 10, 90, dir, "does not reach snapshot offset"},
		{"snapshot file missing", ok, "tag", 50, 200, t.TempDir(), "no such file"},
	} {
		got := inconsistency(c.st, c.tag, c.first, c.end, c.snapDir)
		if (c.wantProblem == "") != (got == "") || !strings.Contains(got, c.wantProblem) {
			t.Errorf("%s: %q, want %q", c.name, got, c.wantProblem)
		}
	}
}

// TestOpenLocksAndRecoversEmpty: a fresh data dir opens with no history;
// a second store on the same dir is refused while the first holds it, and
// opens once it is closed.
func TestOpenLocksAndRecoversEmpty(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	s, err := Open(Options{DataDir: dir}, log)
	if err != nil {
		t.Fatal(err)
	}
	if pos := s.Position(); !pos.Hist.Empty() || pos.Snap != nil {
		t.Fatalf("a fresh data dir recovered %+v", pos)
	}
	if _, err := Open(Options{DataDir: dir}, log); err == nil || !strings.Contains(err.Error(), "in use by another replproxy") {
		t.Fatalf("a second store on a held dir: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(Options{DataDir: dir}, log)
	if err != nil {
		t.Fatalf("after close: %v", err)
	}
	s2.Close()
}
