package proxy

import "testing"

func TestReplicaRDBCompat(t *testing.T) {
	for _, c := range []struct {
		announced string
		rdb       int
		want      rdbCompat
	}{
		{"", 12, rdbUnknown},        // stock Redis announces nothing
		{"garbage", 10, rdbUnknown}, // nor does a version we cannot read
		{"8.0.1", 10, rdbLoads},     // Redis 7.0's RDB on Valkey 8
		{"8.0.1", 11, rdbLoads},
		{"8.1.0", 12, rdbRejects}, // Redis 7.4+ RDB on Valkey 8
		{"9.0.0", 11, rdbLoads},
		{"9.0.0", 80, rdbLoads},
		{"9.0.0", 12, rdbMayReject}, // rdb-version-check strict rejects, relaxed loads
		{"9.0.0", 81, rdbUnknown},
	} {
		if got := replicaRDBCompat(c.announced, c.rdb); got != c.want {
			t.Errorf("version %q, RDB %d: got %d, want %d", c.announced, c.rdb, got, c.want)
		}
	}
}
