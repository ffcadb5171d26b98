package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/backlog"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// Inspection is what `replproxy inspect` reports about a data dir.
type Inspection struct {
	History    psync.History       `json:"history"`
	BacklogTag string              `json:"backlog_tag"`
	Backlog    backlog.Summary     `json:"backlog"`
	Snapshot   *snapshot.Info      `json:"snapshot,omitempty"`
	Aux        map[string]string   `json:"aux,omitempty"`
	Keyspace   []snapshot.KeyStats `json:"keyspace,omitempty"`
	Consistent bool                `json:"consistent"`
	// SnapshotStale: the backlog starts after the snapshot (lazy refresh);
	// the next full sync refreshes it first.
	SnapshotStale bool   `json:"snapshot_stale,omitempty"`
	Problem       string `json:"problem,omitempty"`
	// Replicaof is the upstream a REPLICAOF set, followed after a restart
	// while --upstream is still the one it was set under; nil when none.
	Replicaof *persistedUpstream `json:"replicaof,omitempty"`
	// Held is the new history the empty-origin guard holds; nil when none.
	Held *HeldRecord `json:"held,omitempty"`
}

// InspectOptions choose what Inspect counts.
type InspectOptions struct {
	// Keys reports key counts per database: the snapshot's own, or a scan.
	Keys bool
	// Types scans the snapshot to count keys by type as well.
	Types bool
}

// Inspect reads a data dir without changing it. Key counts come from a
// scan that skips values (memory stays at one buffer whatever the data).
func Inspect(ctx context.Context, dir string, opts InspectOptions) (*Inspection, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("data dir %s is not a directory", dir)
	}
	l := Layout{dir}
	st, err := loadState(l.state())
	if err != nil {
		return nil, err
	}
	sum, err := backlog.Inspect(l.backlog())
	if err != nil {
		return nil, err
	}
	in := &Inspection{History: st.History, BacklogTag: st.BacklogTag, Backlog: sum, Snapshot: st.Snapshot}
	if b, err := os.ReadFile(l.upstream()); err == nil {
		var pu persistedUpstream
		if json.Unmarshal(b, &pu) == nil {
			in.Replicaof = &pu
		}
	}
	if h, err := l.ReadHeldRecord(); err == nil {
		in.Held = &h
	}
	snapDir := l.snapshots()
	// The rule the daemon recovers by: a data dir it would serve from.
	in.Problem = inconsistency(st, sum.Tag, sum.First, sum.End, snapDir)
	in.Consistent = in.Problem == ""
	in.SnapshotStale = in.Consistent && sum.First > st.Snapshot.Offset+1
	if st.Snapshot != nil {
		aux, err := SnapshotAux(snapDir, st.Snapshot)
		if errors.Is(err, os.ErrNotExist) {
			return in, nil
		}
		in.Aux = aux
		switch {
		case opts.Types || (opts.Keys && st.Snapshot.Keyspace == nil):
			if in.Keyspace, err = snapshot.ScanFile(ctx, snapDir, st.Snapshot, snapshot.ScanOptions{Types: opts.Types}); err != nil {
				return nil, err
			}
		case opts.Keys:
			in.Keyspace = st.Snapshot.Keyspace
		}
	}
	return in, nil
}
