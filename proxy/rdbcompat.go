package proxy

import (
	"strconv"
	"strings"
)

// rdbCompat is what the proxy can tell about a replica loading an RDB of a
// given version. A loader rejects versions newer than its own ("Can't handle
// RDB format version"), and a raw relay cannot convert between versions.
type rdbCompat int

const (
	rdbUnknown   rdbCompat = iota // nothing announced (stock Redis never does)
	rdbLoads                      // the announced release reads this version
	rdbRejects                    // the announced release refuses this version
	rdbMayReject                  // it depends on the replica's configuration
)

// replicaRDBCompat judges an RDB version against the release a replica
// announced with REPLCONF version. Only Valkey 8.0+ announce one: 8.x reads
// up to RDB 11; 9.x also reads its own 80 and, with rdb-version-check
// relaxed only, the 12–79 range Redis 7.4+ writes.
func replicaRDBCompat(announced string, rdbVersion int) rdbCompat {
	major, ok := majorVersion(announced)
	switch {
	case !ok:
		return rdbUnknown
	case rdbVersion <= 11:
		return rdbLoads
	case major < 9:
		return rdbRejects
	case rdbVersion == 80:
		return rdbLoads
	case rdbVersion < 80:
		return rdbMayReject
	}
	return rdbUnknown
}

func majorVersion(v string) (int, bool) {
	head, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(head)
	return n, err == nil && n > 0
}
