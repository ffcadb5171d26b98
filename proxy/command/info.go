package command

import (
	"fmt"
	"hash/fnv"
	"math"
	"net"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/proxy/pubsub"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/tidwall/resp"
)

// INFO's sections in Redis 7's order. Redis' defaults, with replproxy's
// own section after them (where a module's would be).
var (
	defaultSections = []string{"server", "clients", "memory", "persistence", "stats", "replication", "cpu",
		"modules", "errorstats", "cluster", "keyspace", "replproxy"}
	allSections = []string{"server", "clients", "memory", "persistence", "stats", "replication", "cpu",
		"modules", "commandstats", "errorstats", "latencystats", "cluster", "keyspace", "replproxy"}
)

// infoSections is the set INFO's arguments name, as Redis 7 reads them:
// none or "default" the defaults, "all" and "everything" all of them,
// unknown names nothing.
func infoSections(args []string) map[string]bool {
	want := map[string]bool{}
	if len(args) == 0 {
		args = []string{"default"}
	}
	for _, s := range args {
		var add []string
		switch s = strings.ToLower(s); s {
		case "default":
			add = defaultSections
		case "all", "everything":
			add = allSections
		case "module_list":
			add = []string{"modules"}
		default:
			add = []string{s}
		}
		for _, a := range add {
			want[a] = true
		}
	}
	return want
}

// Info renders INFO in Redis' format and field order (server.c:genRedisInfoString()).
// No field appears twice; fields with no truthful value for a proxy (hz,
// lru_clock, Lua memory, ...) are left out rather than invented.
func (p *Server) Info(sections ...string) string {
	want := infoSections(sections)
	v := &infoView{st: p.daemon.Status(), now: time.Now(), srv: p}
	var b strings.Builder
	for _, s := range infoRenderers {
		if !want[strings.ToLower(s.name)] {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("\r\n")
		}
		b.WriteString("# " + s.name + "\r\n")
		if s.render == nil {
			continue
		}
		for _, l := range s.render(v) {
			b.WriteString(l + "\r\n")
		}
	}
	return b.String()
}

// infoView is what one INFO renders from: a status value taken once, the
// time, and the server's own counters and options.
type infoView struct {
	st  vocab.Status
	now time.Time
	srv *Server
}

// infoRenderers are INFO's sections in Redis 7's order, each rendered by
// its own function as genRedisInfoString() calls one per section; nil:
// a section with no fields here.
var infoRenderers = []struct {
	name   string
	render func(*infoView) []string
}{
	{"Server", (*infoView).server},
	{"Clients", (*infoView).clients},
	{"Memory", (*infoView).memory},
	{"Persistence", (*infoView).persistence},
	{"Stats", (*infoView).stats},
	{"Replication", (*infoView).replication},
	{"CPU", (*infoView).cpu},
	{"Modules", nil},
	{"Commandstats", func(v *infoView) []string { return v.srv.commands.commandstats() }},
	{"Errorstats", func(v *infoView) []string { return v.srv.commands.errorstats() }},
	{"Latencystats", func(v *infoView) []string { return v.srv.commands.latencystats() }},
	{"Cluster", func(*infoView) []string { return []string{kv("cluster_enabled", 0)} }},
	// The proxy cannot count keys live (a write may create a key or not),
	// and the snapshot's counts are old: # Replproxy has those, labelled.
	{"Keyspace", nil},
	{"Replproxy", (*infoView).replproxy},
}

// on is INFO's 1 or 0.
func on(v bool) int {
	if v {
		return 1
	}
	return 0
}

// server is # Server.
func (v *infoView) server() []string {
	st, now, p := v.st, v.now, v.srv
	tcpPort := p.Port()
	uptime := int64(now.Sub(st.Started).Seconds())
	exe, _ := os.Executable()
	supervised := "no"
	if os.Getenv("NOTIFY_SOCKET") != "" {
		supervised = "systemd"
	}
	return []string{
		kv("redis_version", st.RedisVersion),
		kv("redis_git_sha1", "00000000"),
		kv("redis_git_dirty", 0),
		kv("redis_build_id", buildID(st.Version)),
		kv("redis_mode", "standalone"),
		kv("os", osName()),
		kv("arch_bits", strconv.Itoa(32<<(^uint(0)>>63))),
		kv("monotonic_clock", "POSIX clock_gettime"),
		kv("multiplexing_api", map[string]string{"linux": "epoll", "darwin": "kqueue", "freebsd": "kqueue"}[runtime.GOOS]),
		kv("go_version", runtime.Version()),
		kv("process_id", os.Getpid()),
		kv("process_supervised", supervised),
		kv("run_id", st.RunID),
		kv("tcp_port", tcpPort),
		kv("server_time_usec", now.UnixMicro()),
		kv("uptime_in_seconds", uptime),
		kv("uptime_in_days", uptime/86400),
		kv("executable", exe),
		kv("config_file", p.cfg.ConfigFile),
		kv("io_threads_active", 0),
		kv("replproxy_version", st.Version),
	}
}

// clients is # Clients: as Redis, replicas are not clients; the link to the master is one.
func (v *infoView) clients() []string {
	st, p := v.st, v.srv
	_, _, subscribers := p.pubsub.Counts()
	return []string{
		kv("connected_clients", st.Clients+on(st.LinkUp)),
		kv("cluster_connections", 0),
		kv("maxclients", p.cfg.MaxClients),
		kv("blocked_clients", 0),
		kv("tracking_clients", 0),
		kv("pubsub_clients", subscribers),
		kv("clients_in_timeout_table", 0),
	}
}

// memory is # Memory; it records the peak used_memory.
func (v *infoView) memory() []string {
	st, p := v.st, v.srv
	used, rss := goMemory(), residentMemory()
	peak := p.memPeak.Load()
	for used > peak && !p.memPeak.CompareAndSwap(peak, used) {
		peak = p.memPeak.Load()
	}
	peak = max(peak, used)
	total := systemMemory()
	frag := 0.0
	if used > 0 {
		frag = float64(rss) / float64(used)
	}
	return []string{
		kv("used_memory", used),
		kv("used_memory_human", redisHumanBytes(used)),
		kv("used_memory_rss", rss),
		kv("used_memory_rss_human", redisHumanBytes(rss)),
		kv("used_memory_peak", peak),
		kv("used_memory_peak_human", redisHumanBytes(peak)),
		fmt.Sprintf("used_memory_peak_perc:%.2f%%", float64(used)*100/float64(max(peak, 1))),
		kv("used_memory_dataset", 0), // the proxy holds no keys in memory
		kv("used_memory_lua", 0),     // nor a Lua VM
		kv("number_of_cached_scripts", 0),
		kv("total_system_memory", total),
		kv("total_system_memory_human", redisHumanBytes(total)),
		kv("maxmemory", 0),
		kv("maxmemory_human", "0B"),
		kv("maxmemory_policy", "noeviction"),
		fmt.Sprintf("mem_fragmentation_ratio:%.2f", frag),
		kv("mem_fragmentation_bytes", rss-used),
		// The backlog lives on disk; its in-memory part is the tail.
		kv("mem_replication_backlog", st.TailCapacity),
		// Stream received and served to replicas, not yet in the files.
		kv("mem_intake_buffer", st.IntakeBuffered),
		kv("intake_buffer_limit", st.IntakeBuffer),
		kv("mem_aof_buffer", 0),
		kv("mem_cluster_links", 0),
		kv("mem_allocator", "go-"+strings.TrimPrefix(runtime.Version(), "go")),
		kv("active_defrag_running", 0),
		kv("lazyfree_pending_objects", 0),
		kv("lazyfreed_objects", 0),
	}
}

// persistence is # Persistence: the snapshot refreshes are the BGSAVEs.
func (v *infoView) persistence() []string {
	st, p := v.st, v.srv
	var snapTime int64 = st.Started.Unix() // as Redis: the start, before any save
	if st.Snapshot != nil {
		snapTime = st.Snapshot.Created.Unix()
	}
	rl := st.Refresh
	return []string{
		kv("loading", 0),
		kv("async_loading", 0),
		kv("rdb_bgsave_in_progress", on(st.Refreshing)),
		kv("rdb_last_save_time", snapTime),
		kv("rdb_last_bgsave_status", map[bool]string{false: "ok", true: "err"}[rl.Failed]),
		kv("rdb_last_bgsave_time_sec", rl.LastSecs),
		kv("rdb_current_bgsave_time_sec", rl.CurrentSecs),
		kv("rdb_saves", p.stats.Refreshes.Load()),
		kv("rdb_last_cow_size", 0), // no fork here, no copy-on-write
		kv("aof_enabled", 0),
		kv("aof_rewrite_in_progress", 0),
		kv("aof_rewrite_scheduled", 0),
		kv("aof_last_rewrite_time_sec", -1),
		kv("aof_current_rewrite_time_sec", -1),
		kv("aof_last_bgrewrite_status", "ok"),
		kv("aof_last_write_status", "ok"),
		kv("aof_last_cow_size", 0),
		kv("module_fork_in_progress", 0),
		kv("module_fork_last_cow_size", 0),
	}
}

// stats is # Stats.
func (v *infoView) stats() []string {
	p := v.srv
	chans, pats, _ := p.pubsub.Counts()
	ps := p.stats
	return []string{
		kv("total_connections_received", ps.ConnectionsReceived.Load()),
		kv("total_commands_processed", ps.CommandsProcessed.Load()),
		kv("total_net_input_bytes", ps.NetInputBytes.Load()),
		kv("total_net_output_bytes", ps.NetOutputBytes.Load()),
		kv("total_net_repl_input_bytes", ps.UpstreamRDBBytes.Load()+ps.UpstreamStreamBytes.Load()),
		kv("total_net_repl_output_bytes", ps.SentRDBBytes.Load()+ps.SentStreamBytes.Load()),
		kv("rejected_connections", ps.RejectedConns.Load()),
		kv("sync_full", ps.SyncFull.Load()),
		kv("sync_partial_ok", ps.SyncPartialOK.Load()),
		kv("sync_partial_err", ps.SyncPartialErr.Load()),
		// A proxy neither expires, evicts, defragments nor tracks keys.
		kv("expired_keys", 0),
		kv("expired_stale_perc", "0.00"),
		kv("expired_time_cap_reached_count", 0),
		kv("expire_cycle_cpu_milliseconds", 0),
		kv("evicted_keys", 0),
		kv("evicted_clients", 0),
		kv("total_eviction_exceeded_time", 0),
		kv("current_eviction_exceeded_time", 0),
		kv("keyspace_hits", 0),
		kv("keyspace_misses", 0),
		kv("pubsub_channels", chans),
		kv("pubsub_patterns", pats),
		kv("pubsubshard_channels", 0),
		kv("latest_fork_usec", 0), // the proxy never forks
		kv("total_forks", 0),
		kv("migrate_cached_sockets", 0),
		kv("slave_expires_tracked_keys", 0),
		kv("active_defrag_hits", 0),
		kv("active_defrag_misses", 0),
		kv("active_defrag_key_hits", 0),
		kv("active_defrag_key_misses", 0),
		kv("tracking_total_keys", 0),
		kv("tracking_total_items", 0),
		kv("tracking_total_prefixes", 0),
		kv("unexpected_error_replies", 0),
		kv("total_error_replies", p.commands.errorTotal()),
		kv("dump_payload_sanitizations", 0),
		kv("total_reads_processed", ps.ReadsProcessed.Load()),
		kv("total_writes_processed", ps.WritesProcessed.Load()),
		kv("io_threaded_reads_processed", 0),
		kv("io_threaded_writes_processed", 0),
		kv("client_output_buffer_limit_disconnections", ps.OutputBufferDrops.Load()),
	}
}

// replication is # Replication, as a replica reports it.
func (v *infoView) replication() []string {
	st, now := v.st, v.now
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
	syncing := st.LinkState == vocab.LinkSync
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
		if r.State == vocab.ReplicaOnline && !r.AckTime.IsZero() {
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
	return repl
}

// cpu is # CPU.
func (v *infoView) cpu() []string {
	sys, user, csys, cuser := cpuTimes()
	return []string{
		fmt.Sprintf("used_cpu_sys:%.6f", sys),
		fmt.Sprintf("used_cpu_user:%.6f", user),
		fmt.Sprintf("used_cpu_sys_children:%.6f", csys),
		fmt.Sprintf("used_cpu_user_children:%.6f", cuser),
	}
}

// replproxy is # Replproxy: the proxy's own fields.
func (v *infoView) replproxy() []string {
	st, now, p := v.st, v.now, v.srv
	ps := p.stats
	var snapOff, snapSize int64
	if st.Snapshot != nil {
		snapOff, snapSize = st.Snapshot.Offset, st.Snapshot.Size
	}
	snapAge := int64(-1)
	if st.Snapshot != nil {
		snapAge = int64(now.Sub(st.Snapshot.Created).Seconds())
	}
	window := int64(0)
	if !st.OldestEntry.IsZero() {
		window = int64(now.Sub(st.OldestEntry).Seconds())
	}
	rp := []string{
		kv("upstream_link_state", st.LinkState),
		kv("upstream_last_error", vocab.OneLine(st.LinkDownError)),
		kv("backlog_window_short", map[bool]int{true: 1, false: 0}[st.BacklogWindowShort]),
		kv("psync_window_seconds", window),
		kv("snapshot_offset", snapOff),
		kv("snapshot_size", snapSize),
		kv("snapshot_age_seconds", snapAge),
		kv("full_syncs_queued", st.Queued),
		kv("upstream_full_syncs", ps.UpstreamFullSyncs.Load()),
		kv("upstream_partial_syncs", ps.UpstreamPartialSyncs.Load()),
		kv("upstream_sync_failures", ps.UpstreamSyncFailures.Load()),
		kv("snapshot_refreshes", ps.Refreshes.Load()),
		kv("snapshot_refresh_failures", ps.RefreshFailures.Load()),
		kv("snapshot_source", vocab.SnapshotSource(st.Snapshot)),
		kv("snapshot_budget_exceeded", map[bool]int{true: 1, false: 0}[st.BudgetExceeded()]),
		kv("snapshot_stale", map[bool]int{true: 1, false: 0}[st.SnapshotStale()]),
	}
	for _, src := range vocab.SnapshotSources {
		rp = append(rp, fmt.Sprintf("snapshot_refreshes_from_%s:ok=%d,failed=%d", src,
			ps.RefreshAttempts.Load(src+"/ok"), ps.RefreshAttempts.Load(src+"/failed")))
	}
	rp = append(rp, kv("upstream_calm_wait", map[bool]int{true: 1, false: 0}[st.Calm.Waiting]),
		kv("upstream_calm_waits", st.Calm.Waits),
		kv("upstream_calm_origin_bytes_per_sec", st.Calm.OriginRate),
		kv("upstream_intake_bytes_per_sec", st.Calm.Intake))
	rp = append(rp, kv("snapshot_refresh_upstream", p.cfg.RefreshUpstream),
		kv("snapshot_refresh_trust", strings.Join(p.cfg.RefreshTrust, ",")),
		kv("refresh_sources_refused", len(st.RefusedSources)))
	for i, r := range st.RefusedSources {
		rp = append(rp, fmt.Sprintf("refresh_source_refused_%d:addr=%s,reason=%s,seconds_ago=%d", i, r.Addr, r.Reason,
			int64(now.Sub(r.At).Seconds())))
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
	for _, purpose := range vocab.SyncPurposes() {
		var failed int64
		for _, class := range vocab.FailureClasses {
			failed += ps.UpstreamFullSyncOutcomes.Load(purpose + "/" + class)
		}
		rp = append(rp, fmt.Sprintf("origin_full_syncs_%s:ok=%d,failed=%d", purpose,
			ps.UpstreamFullSyncOutcomes.Load(purpose+"/ok"), failed))
	}
	rp = append(rp,
		kv("full_sync_failures_in_a_row", fs.InARow),
		kv("full_sync_last_failure", lastClass),
		kv("full_sync_last_error", vocab.OneLine(fs.LastError)),
		kv("full_sync_next_attempt_in_seconds", next),
		kv("full_sync_blocked", vocab.OneLine(fs.Blocked)),
	)
	rp = append(rp, kv("fanout_writer", on(p.cfg.Fanout)), kv("fanout_bytes", ps.FanoutBytes.Load()),
		kv("fanout_handbacks", ps.FanoutHandbacks.Load()))
	rp = append(rp, strings.Split(strings.TrimSuffix(GuardText(st.Guard), "\r\n"), "\r\n")...)
	if ds := st.Delay; ds.Enabled {
		rp = append(rp, kv("delay_seconds", int64(ds.Delay.Seconds())), kv("delay_horizon_offset", ds.Horizon),
			kv("delay_port", listenerPort(p.delayedLn)), kv("delay_covered", map[bool]int{true: 1, false: 0}[ds.Covered]))
	}
	upAddr, upSource := st.UpstreamAddr, st.UpstreamSource
	rp = append(rp, kv("upstream", upAddr), kv("upstream_source", upSource), kv("upstream_configured", p.cfg.Upstream))
	rp = append(rp, kv("upstream_tls", map[bool]int{true: 1, false: 0}[p.cfg.UpstreamTLS]), kv("tls_port", listenerPort(p.tlsLn)))
	var fails []string
	for _, r := range security.AuthFailureReasons() {
		fails = append(fails, fmt.Sprintf("%s=%d", r, ps.AuthFailures.Load(r)))
	}
	rp = append(rp, "auth_failures:"+strings.Join(fails, ","))
	// The stored snapshot's key counts, taken at snapshot_offset (not live).
	for _, k := range st.Keyspace {
		rp = append(rp, fmt.Sprintf("snapshot_keyspace_db%d:keys=%d,expires=%d", k.DB, k.Keys, k.Expires))
	}
	for i, r := range st.Replicas {
		rp = append(rp, fmt.Sprintf("replica%d:ip=%s,port=%d,state=%s,ack_offset=%d,lag_bytes=%d,lag_seconds=%.3f",
			i, r.IP, r.Port, r.State, max(r.AckOff, 0), r.LagBytes, r.LagSeconds))
	}
	return rp
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

// role renders ROLE as a replica does (replication.c:roleCommand()).
func (p *Server) role() resp.Value {
	st := p.daemon.Status()
	off := st.BacklogEnd
	if st.History.Empty() || st.LinkState != vocab.LinkConnected {
		off = -1 // as Redis: the offset exists only with a master link
	}
	return resp.ArrayValue([]resp.Value{
		resp.StringValue("slave"), resp.StringValue(st.UpstreamHost), resp.IntegerValue(st.UpstreamPort),
		resp.StringValue(string(st.LinkState)), resp.IntegerValue(int(off)),
	})
}

// configGet answers CONFIG GET for the few parameters tools ask for.
func (p *Server) configGet(patterns [][]byte) resp.Value {
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
		{"port", strconv.Itoa(listenerPort(p.ln))},
		{"tls-port", strconv.Itoa(listenerPort(p.tlsLn))},
		{"tls-replication", map[bool]string{true: "yes", false: "no"}[p.cfg.UpstreamTLS]},
		{"tls-auth-clients", p.cfg.TLSAuthClients},
		{"maxclients", strconv.Itoa(p.cfg.MaxClients)},
		{"maxmemory-policy", "noeviction"},
		{"io-threads", "1"},
		// Replicas are bounded by the disk backlog, not by memory;
		// subscribers as in pubsub.MaxBytes.
		{"client-output-buffer-limit", fmt.Sprintf("normal 0 0 0 slave 0 0 0 pubsub %d 0 0", pubsub.MaxBytes)},
		{"appendonly", "no"},
		{"save", ""},
		{"dir", p.cfg.DataDir},
		{"timeout", "0"},
		{"replica-serve-stale-data", "yes"},
		{"slave-serve-stale-data", "yes"},
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

// buildID is redis_build_id's counterpart: a stable hash of the version.
func buildID(version string) string {
	h := fnv.New64a()
	h.Write([]byte(version))
	return strconv.FormatUint(h.Sum64(), 16)
}

// GuardText renders the guard's state as INFO-style lines.
func GuardText(g vocab.GuardStatus) string {
	state := "watching"
	switch {
	case !g.Enabled:
		state = "off"
	case g.Holding:
		state = "holding"
	}
	lines := []string{kv("guard", state), kv("guard_min_keys_ratio", g.MinRatio), kv("guard_holds", g.Holds)}
	if g.Holding {
		lines = append(lines, kv("guard_held_since", g.Since.UTC().Format(time.RFC3339)),
			kv("guard_held_seconds", int64(time.Since(g.Since).Seconds())), kv("guard_held_replid", g.ReplID),
			kv("guard_held_snapshot_offset", g.Offset), kv("guard_held_stream_end", g.HeldEnd),
			kv("guard_current_keys", g.CurKeys), kv("guard_new_keys", g.NewKeys))
	}
	return strings.Join(lines, "\r\n") + "\r\n"
}
