package store

import (
	"github.com/replproxy/replproxy/psync/snapshot"
)

// DefaultRedisVersion is the redis_version tools see before a snapshot
// says the upstream's: replproxy speaks 7.0's replication protocol, and
// tools gate features on it.
const DefaultRedisVersion = "7.0.0"

// headerRead bounds the read of a snapshot's header: its aux fields come
// first and are small.
const headerRead = 64 << 10

// SnapshotAux reads the aux fields (redis-ver, ...) of a stored
// snapshot's header.
func SnapshotAux(dir string, snap *snapshot.Info) (map[string]string, error) {
	f, err := snapshot.Open(dir, snap)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, headerRead)
	n, _ := f.ReadAt(head, 0)
	h, err := snapshot.ParseHeader(head[:n])
	if err != nil {
		return nil, err
	}
	return h.Aux, nil
}

// UpstreamVersion is the redis_version tools see: the upstream's, as its
// last snapshot recorded it (aux redis-ver), else DefaultRedisVersion.
// It is read once per snapshot.
func (s *Store) UpstreamVersion() string {
	snap := s.Position().Snap
	if snap == nil {
		return DefaultRedisVersion
	}
	if v, ok := s.versions.Load(snap.Name); ok {
		return v.(string)
	}
	v := DefaultRedisVersion
	if aux, err := SnapshotAux(s.SnapDir, snap); err == nil && aux["redis-ver"] != "" {
		v = aux["redis-ver"]
	}
	s.versions.Store(snap.Name, v)
	return v
}
