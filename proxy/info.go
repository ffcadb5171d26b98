package proxy

import (
	"fmt"
	"math"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/psync/snapshot"
	"github.com/tidwall/resp"
)

// redisCompatVersion is the redis_version tools see; replproxy_version is
// the real one. Tools gate features on it, and replproxy speaks 7.0's
// replication protocol.
const redisCompatVersion = "7.0.0"

var defaultSections = []string{"server", "clients", "persistence", "stats", "replication", "keyspace", "replproxy"}

// info renders INFO in Redis' format and field order (server.c:genRedisInfoString()).
func (p *Proxy) info(sections ...string) string {
	want := map[string]bool{}
	if len(sections) == 0 {
		sections = []string{"default"}
	}
	for _, s := range sections {
		switch s = strings.ToLower(s); s {
		case "default", "all", "everything":
			for _, d := range defaultSections {
				want[d] = true
			}
		default:
			want[s] = true
		}
	}
	st := p.Status()
	now := time.Now()
	var b strings.Builder
	section := func(name string, lines ...string) {
		if !want[strings.ToLower(name)] {
			return
		}
		if b.Len() > 0 {
			b.WriteString("\r\n")
		}
		b.WriteString("# " + name + "\r\n")
		for _, l := range lines {
			b.WriteString(l + "\r\n")
		}
	}
	tcpPort := 0
	if a, ok := p.Addr().(*net.TCPAddr); ok {
		tcpPort = a.Port
	}
	uptime := int64(now.Sub(st.Started).Seconds())
	section("Server",
		kv("redis_version", p.upstreamVersion()),
		kv("redis_mode", "standalone"),
		kv("process_id", os.Getpid()),
		kv("run_id", st.RunID),
		kv("tcp_port", tcpPort),
		kv("uptime_in_seconds", uptime),
		kv("uptime_in_days", uptime/86400),
		kv("replproxy_version", st.Version),
	)
	// As Redis: replicas are not clients; the link to the master is one.
	section("Clients",
		kv("connected_clients", st.Clients+map[bool]int{true: 1, false: 0}[st.LinkUp]),
	)
	var snapTime int64
	if st.Snapshot != nil {
		snapTime = st.Snapshot.Created.Unix()
	}
	refreshing := 0
	if st.Refreshing {
		refreshing = 1
	}
	section("Persistence",
		kv("loading", 0),
		kv("rdb_bgsave_in_progress", refreshing),
		kv("rdb_last_save_time", snapTime),
		kv("rdb_last_bgsave_status", "ok"),
		kv("aof_enabled", 0),
	)
	ps := p.stats
	section("Stats",
		kv("rejected_connections", ps.RejectedConns.Load()),
		kv("sync_full", ps.SyncFull.Load()),
		kv("sync_partial_ok", ps.SyncPartialOK.Load()),
		kv("sync_partial_err", ps.SyncPartialErr.Load()),
		kv("total_net_repl_input_bytes", ps.UpstreamRDBBytes.Load()+ps.UpstreamStreamBytes.Load()),
		kv("total_net_repl_output_bytes", ps.SentRDBBytes.Load()+ps.SentStreamBytes.Load()),
	)
	repl := []string{
		kv("role", "slave"),
		kv("master_host", st.UpstreamHost),
		kv("master_port", st.UpstreamPort),
		kv("master_link_status", map[bool]string{true: "up", false: "down"}[st.LinkUp]),
	}
	lastIO := int64(-1)
	if st.LinkUp && !st.LastIO.IsZero() {
		lastIO = int64(now.Sub(st.LastIO).Seconds())
	}
	syncing := st.LinkState == LinkSync
	repl = append(repl,
		kv("master_last_io_seconds_ago", lastIO),
		kv("master_sync_in_progress", map[bool]int{true: 1, false: 0}[syncing]),
		kv("slave_read_repl_offset", st.BacklogEnd),
		kv("slave_repl_offset", st.BacklogEnd),
	)
	if syncing {
		perc := 0.0
		if st.SyncTotalBytes > 0 {
			perc = float64(st.SyncReadBytes) * 100 / float64(st.SyncTotalBytes)
		}
		repl = append(repl,
			kv("master_sync_total_bytes", st.SyncTotalBytes),
			kv("master_sync_read_bytes", st.SyncReadBytes),
			kv("master_sync_left_bytes", st.SyncTotalBytes-st.SyncReadBytes),
			fmt.Sprintf("master_sync_perc:%.2f", perc),
			kv("master_sync_last_io_seconds_ago", int64(now.Sub(st.LastIO).Seconds())),
		)
	}
	if !st.LinkUp {
		down := int64(-1)
		if !st.LinkDownSince.IsZero() {
			down = int64(now.Sub(st.LinkDownSince).Seconds())
		}
		repl = append(repl, kv("master_link_down_since_seconds", down))
		if st.LinkDownReason != "" {
			repl = append(repl, kv("master_link_down_reason", st.LinkDownReason)) // a replproxy field
		}
	}
	repl = append(repl,
		kv("slave_priority", 0),
		kv("slave_read_only", 1),
		kv("replica_announced", 1),
		kv("connected_slaves", len(st.Replicas)),
	)
	i := 0
	for _, r := range st.Replicas {
		lag := int64(0)
		if r.State == ReplicaOnline && !r.AckTime.IsZero() {
			lag = int64(now.Sub(r.AckTime).Seconds())
		}
		off := max(r.AckOff, 0)
		repl = append(repl, fmt.Sprintf("slave%d:ip=%s,port=%d,state=%s,offset=%d,lag=%d", i, r.IP, r.Port, r.State, off, lag))
		i++
	}
	hist := st.History
	replid, replid2, second := hist.ReplID, hist.ReplID2, hist.SecondOffset
	if hist.Empty() {
		replid, replid2, second = strings.Repeat("0", 40), strings.Repeat("0", 40), -1
	}
	active, first, histlen := 0, int64(0), int64(0)
	if !hist.Empty() && st.BacklogFirst > 0 {
		active, first, histlen = 1, st.BacklogFirst, st.BacklogEnd-st.BacklogFirst+1
	}
	repl = append(repl,
		kv("master_failover_state", "no-failover"),
		kv("master_replid", replid),
		kv("master_replid2", replid2),
		kv("master_repl_offset", max(st.BacklogEnd, 0)),
		kv("second_repl_offset", second),
		kv("repl_backlog_active", active),
		kv("repl_backlog_size", st.BacklogSize),
		kv("repl_backlog_first_byte_offset", first),
		kv("repl_backlog_histlen", histlen),
	)
	section("Replication", repl...)
	var ks []string
	for _, k := range st.Keyspace {
		ks = append(ks, fmt.Sprintf("db%d:keys=%d,expires=%d,avg_ttl=0", k.DB, k.Keys, k.Expires))
	}
	section("Keyspace", ks...)
	var snapOff, snapSize int64
	if st.Snapshot != nil {
		snapOff, snapSize = st.Snapshot.Offset, st.Snapshot.Size
	}
	window := int64(0)
	if !st.OldestEntry.IsZero() {
		window = int64(now.Sub(st.OldestEntry).Seconds())
	}
	rp := []string{
		kv("upstream_link_state", st.LinkState),
		kv("upstream_last_error", oneLine(st.LinkDownError)),
		kv("backlog_window_short", map[bool]int{true: 1, false: 0}[st.BacklogWindowShort]),
		// The # Keyspace counts are the stored snapshot's, taken at its offset.
		kv("keyspace_source", "snapshot"),
		kv("keyspace_offset", snapOff),
		kv("psync_window_seconds", window),
		kv("snapshot_offset", snapOff),
		kv("snapshot_size", snapSize),
		kv("full_syncs_queued", st.Queued),
		kv("upstream_full_syncs", ps.UpstreamFullSyncs.Load()),
		kv("upstream_partial_syncs", ps.UpstreamPartialSyncs.Load()),
		kv("upstream_sync_failures", ps.UpstreamSyncFailures.Load()),
		kv("snapshot_refreshes", ps.Refreshes.Load()),
		kv("snapshot_refresh_failures", ps.RefreshFailures.Load()),
		kv("snapshot_source", SnapshotSource(st.Snapshot)),
		kv("snapshot_budget_exceeded", map[bool]int{true: 1, false: 0}[st.BudgetExceeded()]),
		kv("snapshot_stale", map[bool]int{true: 1, false: 0}[st.SnapshotStale()]),
	}
	for _, src := range SnapshotSources {
		rp = append(rp, fmt.Sprintf("snapshot_refreshes_from_%s:ok=%d,failed=%d", src,
			ps.RefreshAttempts.Load(src+"/ok"), ps.RefreshAttempts.Load(src+"/failed")))
	}
	// Requests that cost the origin a fork, and why the next one waits.
	fs := st.FullSync
	next := int64(0)
	if !fs.NextAt.IsZero() {
		next = int64(math.Ceil(fs.NextAt.Sub(now).Seconds()))
	}
	lastClass := fs.LastClass
	if lastClass == "" {
		lastClass = "none"
	}
	for _, purpose := range SyncPurposes() {
		var failed int64
		for _, class := range FailureClasses {
			failed += ps.UpstreamFullSyncOutcomes.Load(purpose + "/" + class)
		}
		rp = append(rp, fmt.Sprintf("origin_full_syncs_%s:ok=%d,failed=%d", purpose,
			ps.UpstreamFullSyncOutcomes.Load(purpose+"/ok"), failed))
	}
	rp = append(rp,
		kv("full_sync_failures_in_a_row", fs.InARow),
		kv("full_sync_last_failure", lastClass),
		kv("full_sync_last_error", oneLine(fs.LastError)),
		kv("full_sync_next_attempt_in_seconds", next),
		kv("full_sync_blocked", oneLine(fs.Blocked)),
	)
	rp = append(rp, strings.Split(strings.TrimSuffix(guardText(p.GuardStatus()), "\r\n"), "\r\n")...)
	if ds := p.DelayStatus(); ds.Enabled {
		rp = append(rp, kv("delay_seconds", int64(ds.Delay.Seconds())), kv("delay_horizon_offset", ds.Horizon),
			kv("delay_port", listenerPort(p.down.delayedLn)), kv("delay_covered", map[bool]int{true: 1, false: 0}[ds.Covered]))
	}
	upAddr, upSource := p.follower.upstreamOrigin()
	rp = append(rp, kv("upstream", upAddr), kv("upstream_source", upSource), kv("upstream_configured", p.cfg.Upstream))
	rp = append(rp, kv("upstream_tls", map[bool]int{true: 1, false: 0}[p.cfg.UpstreamTLS]), kv("tls_port", listenerPort(p.down.tlsLn)))
	var fails []string
	for _, r := range AuthFailureReasons() {
		fails = append(fails, fmt.Sprintf("%s=%d", r, ps.AuthFailures.Load(r)))
	}
	rp = append(rp, "auth_failures:"+strings.Join(fails, ","))
	for i, r := range st.Replicas {
		rp = append(rp, fmt.Sprintf("replica%d:ip=%s,port=%d,state=%s,ack_offset=%d,lag_bytes=%d,lag_seconds=%.3f",
			i, r.IP, r.Port, r.State, max(r.AckOff, 0), r.LagBytes, r.LagSeconds))
	}
	section("Replproxy", rp...)
	return b.String()
}

// SnapshotSource names where a snapshot came from; snapshots kept from before
// sources were recorded came from the upstream.
func SnapshotSource(s *snapshot.Info) string {
	switch {
	case s == nil:
		return "none"
	case s.Source == "":
		return snapFromUpstream
	}
	return s.Source
}

// kv is one INFO line.
func kv(k string, v any) string { return fmt.Sprintf("%s:%v", k, v) }

// listenerPort is a listener's port, 0 without one (as Redis shows a
// disabled port).
func listenerPort(ln net.Listener) int {
	if ln == nil {
		return 0
	}
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

// oneLine keeps an INFO value on its line.
func oneLine(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }

// role renders ROLE as a replica does (replication.c:roleCommand()).
func (p *Proxy) role() resp.Value {
	st := p.Status()
	off := st.BacklogEnd
	if st.History.Empty() || st.LinkState != LinkConnected {
		off = -1 // as Redis: the offset exists only with a master link
	}
	return resp.ArrayValue([]resp.Value{
		resp.StringValue("slave"), resp.StringValue(st.UpstreamHost), resp.IntegerValue(st.UpstreamPort),
		resp.StringValue(string(st.LinkState)), resp.IntegerValue(int(off)),
	})
}

// configGet answers CONFIG GET for the few parameters tools ask for.
func (p *Proxy) configGet(patterns [][]byte) resp.Value {
	params := [][2]string{
		{"repl-backlog-size", strconv.FormatInt(p.cfg.BacklogSize, 10)},
		{"repl-timeout", strconv.Itoa(int(p.cfg.ReplTimeout.Seconds()))},
		{"databases", "16"},
		{"maxmemory", "0"},
		{"slave-priority", "0"},
		{"replica-priority", "0"},
		{"slave-read-only", "yes"},
		{"replica-read-only", "yes"},
		{"masterauth", ""},
		{"requirepass", ""},
		{"port", strconv.Itoa(listenerPort(p.down.ln))},
		{"tls-port", strconv.Itoa(listenerPort(p.down.tlsLn))},
		{"tls-replication", map[bool]string{true: "yes", false: "no"}[p.cfg.UpstreamTLS]},
		{"tls-auth-clients", p.cfg.TLSAuthClients},
	}
	var out []resp.Value
	for _, kv := range params {
		for _, pat := range patterns {
			if ok, _ := path.Match(strings.ToLower(string(pat)), kv[0]); ok {
				v := kv[1]
				if strings.Contains(kv[0], "pass") || kv[0] == "masterauth" {
					v = "" // never reveal secrets
				}
				out = append(out, resp.StringValue(kv[0]), resp.StringValue(v))
				break
			}
		}
	}
	return resp.ArrayValue(out)
}
