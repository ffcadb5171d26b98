package store

import (
	"time"

	"github.com/replproxy/replproxy/psync"
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

// Status is the store's state now; it takes no lock a writer holds.
func (s *Store) Status(now time.Time) Status {
	pub := s.Published()
	v := s.Backlog.View()
	first, end := v.Start, v.End
	st := Status{History: pub.Hist, BacklogFirst: first, BacklogEnd: end, Snapshot: pub.Snap,
		Keyspace: s.Keyspace.Get(pub.Snap), RedisVersion: s.UpstreamVersion(), TailCapacity: s.Backlog.TailCapacity(),
		IntakeBuffer: s.Backlog.WriteBehindLimit(), IntakeBuffered: max(v.End-v.Flushed, 0)}
	if t, ok := s.Arrivals.Arrival(first); ok && end >= first {
		st.OldestEntry = t
	}
	if s.delay > 0 {
		st.Horizon = s.Horizon()
	}
	return st
}

// Status is the data dir as INFO and metrics show it: the store's
// published position (no lock taken) and what it knows of the snapshot.
type Status struct {
	History      psync.History
	BacklogFirst int64
	BacklogEnd   int64
	Snapshot     *snapshot.Info
	Keyspace     []snapshot.KeyStats
	OldestEntry  time.Time // arrival of the backlog's first byte (zero if unknown)
	RedisVersion string    // the upstream's, as the snapshot records it
	TailCapacity int64     // the backlog's in-memory tail
	// IntakeBuffer is the write-behind limit; IntakeBuffered the stream
	// held in memory that the backlog's files do not have yet.
	IntakeBuffer, IntakeBuffered int64
	Horizon                      int64 // the last offset delayed replicas may have now
}
