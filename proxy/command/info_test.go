package command

import (
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/proxy/pubsub"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
	"github.com/replproxy/replproxy/psync/snapshot"
)

// fixedDaemon answers with one status value.
type fixedDaemon struct{ st vocab.Status }

func (d fixedDaemon) Status() vocab.Status     { return d.st }
func (d fixedDaemon) RedisVersion() string     { return d.st.RedisVersion }
func (d fixedDaemon) MoveUpstream(string) bool { return false }
func (d fixedDaemon) GuardAccept() error       { return vocab.ErrNothingHeld }

// emptyStats are counters at zero, every labelled series present.
func emptyStats() *vocab.Stats {
	return &vocab.Stats{
		UpstreamCounters: &vocab.UpstreamCounters{UpstreamDisconnects: vocab.NewCounts(vocab.UpstreamReasons),
			RefreshAttempts: vocab.NewCounts([]string{"replica/ok"}), UpstreamFullSyncOutcomes: vocab.NewCounts([]string{"initial/ok"}),
			SourceRefusals: vocab.NewCounts(vocab.SourceRefusals)},
		ReplicaCounters: &vocab.ReplicaCounters{Disconnects: vocab.NewCounts(vocab.DisconnectReasons)},
		ClientCounters:  &vocab.ClientCounters{AuthFailures: vocab.NewCounts([]string{"wrongpass"})},
	}
}

// TestInfoFromStatus: INFO is rendered from a status value alone, in
// Redis' section order, each field once, the value's facts where Redis
// and tools read them.
func TestInfoFromStatus(t *testing.T) {
	now := time.Now()
	snap := &snapshot.Info{Name: "s", Offset: 1000, Size: 4096, Created: now.Add(-time.Minute), Source: vocab.SnapFromReplica}
	st := vocab.Status{
		RunID: "r1", Version: "1.2.3", Started: now.Add(-time.Hour), RedisVersion: "7.2.4",
		UpstreamHost: "10.0.0.1", UpstreamPort: 6379, UpstreamAddr: "10.0.0.1:6379", UpstreamSource: "replicaof",
		LinkState: vocab.LinkConnected, LinkUp: true, LastIO: now,
		History:      psync.History{ReplID: strings.Repeat("a", 40), ReplID2: strings.Repeat("b", 40), SecondOffset: 900},
		BacklogFirst: 1001, BacklogEnd: 5000, BacklogSize: 2000, Snapshot: snap, // 4000 bytes since the snapshot: over budget
		Replicas: []vocab.ReplicaStatus{{ID: 7, IP: "10.0.0.2", Port: 6380, State: vocab.ReplicaOnline, AckOff: 4990,
			AckTime: now, LagBytes: 10}},
		Refresh: vocab.RefreshStatus{Failed: true, LastSecs: 3, CurrentSecs: -1},
		Guard:   vocab.GuardStatus{Enabled: true, MinRatio: 0.5},
		Delay:   vocab.DelayStatus{Enabled: true, Delay: 2 * time.Hour, Horizon: 4000, Covered: true},
	}
	srv := New(Options{MaxClients: 100, Fanout: true, Upstream: "10.0.0.9:6379"}, slog.New(slog.DiscardHandler), emptyStats(),
		nil, pubsub.New(), nil, fixedDaemon{st})
	info := srv.Info("everything")
	var headers []string
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSuffix(info, "\r\n"), "\r\n") {
		switch {
		case strings.HasPrefix(l, "# "):
			headers = append(headers, strings.TrimPrefix(l, "# "))
		case l == "":
		default:
			k, _, ok := strings.Cut(l, ":")
			if !ok {
				t.Errorf("line %q is not key:value", l)
			}
			if seen[k] {
				t.Errorf("field %s appears twice", k)
			}
			seen[k] = true
		}
	}
	want := "Server Clients Memory Persistence Stats Replication CPU Modules Commandstats Errorstats Latencystats Cluster Keyspace Replproxy"
	if got := strings.Join(headers, " "); got != want {
		t.Fatalf("sections %s, want %s", got, want)
	}
	for _, line := range []string{
		"redis_version:7.2.4", "replproxy_version:1.2.3", "run_id:r1", "maxclients:100",
		"rdb_last_bgsave_status:err", "rdb_last_bgsave_time_sec:3", "rdb_last_save_time:" + strconv.FormatInt(snap.Created.Unix(), 10),
		"role:slave", "master_host:10.0.0.1", "master_port:6379", "master_link_status:up",
		"connected_slaves:1", "slave0:ip=10.0.0.2,port=6380,state=online,offset=4990,lag=0",
		"master_replid:" + st.History.ReplID, "master_replid2:" + st.History.ReplID2, "second_repl_offset:900",
		"master_repl_offset:5000", "repl_backlog_first_byte_offset:1001", "repl_backlog_histlen:4000",
		"snapshot_offset:1000", "snapshot_source:replica", "snapshot_stale:0", "snapshot_budget_exceeded:1",
		"upstream:10.0.0.1:6379", "upstream_source:replicaof", "upstream_configured:10.0.0.9:6379",
		"guard:watching", "delay_seconds:7200", "delay_horizon_offset:4000", "delay_covered:1", "fanout_writer:1",
		"replica0:ip=10.0.0.2,port=6380,state=online,ack_offset=4990,lag_bytes=10,lag_seconds=0.000",
	} {
		if !strings.Contains(info, "\r\n"+line+"\r\n") {
			t.Errorf("INFO lacks %q", line)
		}
	}
	if got := srv.Info("replication"); !strings.HasPrefix(got, "# Replication\r\n") || strings.Contains(got, "# Server") {
		t.Errorf("INFO replication: %q", got)
	}
	if got := srv.Info("nosuchsection"); got != "" {
		t.Errorf("INFO of an unknown section: %q", got)
	}
}
