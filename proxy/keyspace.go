package proxy

import (
	"log/slog"
	"sync"

	"github.com/replproxy/replproxy/psync/snapshot"
)

// keyspaceStats holds per-DB key counts of the current snapshot, computed
// in the background after each install: parsing a large RDB takes seconds.
type keyspaceStats struct {
	mu    sync.Mutex
	name  string
	stats []snapshot.KeyStats
	busy  sync.Mutex // one computation at a time
}

func (k *keyspaceStats) compute(dir string, info *snapshot.Info, log *slog.Logger) {
	k.busy.Lock()
	defer k.busy.Unlock()
	stats, err := snapshot.Stats(dir, info)
	if err != nil {
		// The file may be replaced while it is read; the next install retries.
		log.Debug("keyspace stats unavailable", "snapshot", info.Name, "err", err)
		return
	}
	k.mu.Lock()
	k.name, k.stats = info.Name, stats
	k.mu.Unlock()
}

// get returns the stats if they belong to snap.
func (k *keyspaceStats) get(snap *snapshot.Info) []snapshot.KeyStats {
	k.mu.Lock()
	defer k.mu.Unlock()
	if snap == nil || snap.Name != k.name {
		return nil
	}
	return k.stats
}
