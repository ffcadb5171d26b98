package plan

import "testing"

func TestReplicaRDBCompat(t *testing.T) {
	for _, c := range []struct {
		announced string
		rdb       int
		want      RDBCompat
	}{
		{"", 12, RDBUnknown},        // stock Redis announces nothing
		{"garbage", 10, RDBUnknown}, // nor does a version we cannot read
		{"8.0.1", 10, RDBLoads},     // Redis 7.0's RDB on Valkey 8
		{"8.0.1", 11, RDBLoads},
		{"8.1.0", 12, RDBRejects}, // Redis 7.4+ RDB on Valkey 8
		{"9.0.0", 11, RDBLoads},
		{"9.0.0", 80, RDBLoads},
		{"9.0.0", 12, RDBMayReject}, // rdb-version-check strict rejects, relaxed loads
		{"9.0.0", 81, RDBUnknown},
	} {
		if got := ReplicaRDBCompat(c.announced, c.rdb); got != c.want {
			t.Errorf("version %q, RDB %d: got %d, want %d", c.announced, c.rdb, got, c.want)
		}
	}
}
