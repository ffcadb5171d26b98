package store

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/replproxy/replproxy/internal/atomicfile"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// Layout names every file and directory replproxy keeps in its data dir,
// so the layout is spelled out once.
type Layout struct{ Dir string }

func (l Layout) lock() string      { return filepath.Join(l.Dir, "LOCK") }
func (l Layout) state() string     { return filepath.Join(l.Dir, "state") }
func (l Layout) backlog() string   { return filepath.Join(l.Dir, "backlog") }
func (l Layout) snapshots() string { return filepath.Join(l.Dir, "snapshots") }

// upstream is the upstream REPLICAOF set, kept across restarts.
func (l Layout) upstream() string { return filepath.Join(l.Dir, "upstream.json") }

// FullSyncGate is the cost backoff of full syncs asked of the upstream.
func (l Layout) FullSyncGate() string { return filepath.Join(l.Dir, "fullsync-backoff") }

// Held is the directory of the history the empty-origin guard holds:
// its record, its snapshot and its backlog.
func (l Layout) Held() string           { return filepath.Join(l.Dir, "held") }
func (l Layout) HeldRecordFile() string { return filepath.Join(l.Held(), "held.json") }
func (l Layout) HeldBacklog() string    { return filepath.Join(l.Held(), "backlog") }

// HeldRecord is what the data dir keeps of a history the guard holds.
type HeldRecord struct {
	Snapshot *snapshot.Info `json:"snapshot"`
	Since    time.Time      `json:"since"`
	CurKeys  int64          `json:"current_keys"`
	NewKeys  int64          `json:"new_keys"`
}

// WriteHeldRecord persists h, atomically.
func (l Layout) WriteHeldRecord(h HeldRecord) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(l.HeldRecordFile(), b, nil); err != nil {
		return fmt.Errorf("guard: persist: %w", err)
	}
	return nil
}

// ReadHeldRecord loads the held record; os.ErrNotExist when none is held.
func (l Layout) ReadHeldRecord() (HeldRecord, error) {
	var h HeldRecord
	b, err := os.ReadFile(l.HeldRecordFile())
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("%s: %w", l.HeldRecordFile(), err)
	}
	return h, nil
}
