package store

import (
	"context"
	"log/slog"
	"sync"

	"github.com/replproxy/replproxy/psync/snapshot"
)

// KeyspaceStats serves INFO's key counts. A snapshot carries its counts,
// taken while it was received; one recovered from a data dir written
// before counts were kept is scanned once in the background (values
// skipped, a fixed buffer: memory does not follow the data).
type KeyspaceStats struct {
	mu    sync.Mutex
	name  string
	stats []snapshot.KeyStats
}

// Scan counts the keys of info; run by Serve's group, cancelled with ctx.
func (k *KeyspaceStats) Scan(ctx context.Context, dir string, info *snapshot.Info, log *slog.Logger) {
	stats, err := snapshot.ScanFile(ctx, dir, info, snapshot.ScanOptions{})
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("keyspace counts unavailable", "snapshot", info.Name, "err", err)
		}
		return
	}
	k.mu.Lock()
	k.name, k.stats = info.Name, stats
	k.mu.Unlock()
}

// Get returns the counts of snap, nil when unknown.
func (k *KeyspaceStats) Get(snap *snapshot.Info) []snapshot.KeyStats {
	switch {
	case snap == nil:
		return nil
	case snap.Keyspace != nil:
		return snap.Keyspace
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if snap.Name != k.name {
		return nil
	}
	return k.stats
}
