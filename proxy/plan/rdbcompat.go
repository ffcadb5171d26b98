package plan

import (
	"strconv"
	"strings"
)

// RDBCompat is what the proxy can tell about a replica loading an RDB of a
// given version. A loader rejects versions newer than its own ("Can't handle
// RDB format version"), and a raw relay cannot convert between versions.
type RDBCompat int

const (
	RDBUnknown   RDBCompat = iota // nothing announced (stock Redis never does)
	RDBLoads                      // the announced release reads this version
	RDBRejects                    // the announced release refuses this version
	RDBMayReject                  // it depends on the replica's configuration
)

// ReplicaRDBCompat judges an RDB version against the release a replica
// announced with REPLCONF version. Only Valkey 8.0+ announce one: 8.x reads
// up to RDB 11; 9.x also reads its own 80 and, with rdb-version-check
// relaxed only, the 12–79 range Redis 7.4+ writes.
func ReplicaRDBCompat(announced string, rdbVersion int) RDBCompat {
	major, ok := majorVersion(announced)
	switch {
	case !ok:
		return RDBUnknown
	case rdbVersion <= 11:
		return RDBLoads
	case major < 9:
		return RDBRejects
	case rdbVersion == 80:
		return RDBLoads
	case rdbVersion < 80:
		return RDBMayReject
	}
	return RDBUnknown
}

func majorVersion(v string) (int, bool) {
	head, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(head)
	return n, err == nil && n > 0
}
