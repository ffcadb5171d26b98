// Package metrics exposes a proxy to Prometheus and to probes: a collector
// that reads the proxy's state at scrape time (so departed replicas simply
// vanish), histograms fed by the proxy's events, and the HTTP endpoints
// /metrics, /livez, /readyz, /healthz and a status page.
package metrics

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
)

const ns = "replproxy"

// Known label values, pre-initialised to 0 so series exist from the start.
var (
	histogramBucketsS  = prometheus.ExponentialBuckets(0.001, 4, 10) // 1ms .. 262s
	histogramBucketsB  = prometheus.ExponentialBuckets(1024, 4, 12)  // 1KiB .. 4GiB
	nativeBucketFactor = 1.1
)

// MetricDoc describes one exported metric, for the README.
type MetricDoc struct {
	Name, Type, Help string
	Labels           []string
}

// catalog is filled by package initialisation only (desc and init).
var catalog []MetricDoc

// Catalog lists every metric replproxy exports (besides go_ and process_).
func Catalog() []MetricDoc { return catalog }

// histDef is one histogram; the definitions are static so the catalog
// lists them without an Observer.
type histDef struct {
	name, help string
	buckets    []float64
}

var (
	hAckLagBytes   = histDef{"downstream_ack_lag_bytes", "Replica lag in bytes (end offset minus ACKed offset), observed at every REPLCONF ACK.", histogramBucketsB}
	hAckLagSeconds = histDef{"downstream_ack_lag_seconds", "Replica lag in seconds (age of the first unacknowledged byte), observed at every REPLCONF ACK.", histogramBucketsS}
	hUpFullSync    = histDef{"upstream_full_sync_duration_seconds", "Time to receive and install a full sync from upstream.", histogramBucketsS}
	hDownFullSync  = histDef{"downstream_full_sync_duration_seconds", "Time to send the snapshot to a replica.", histogramBucketsS}
)

func init() {
	for _, h := range []histDef{hAckLagBytes, hAckLagSeconds, hUpFullSync, hDownFullSync} {
		catalog = append(catalog, MetricDoc{Name: ns + "_" + h.name, Type: "histogram (classic + native)", Help: h.help})
	}
}

func (h histDef) new() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: ns, Name: h.name, Help: h.help, Buckets: h.buckets,
		NativeHistogramBucketFactor: nativeBucketFactor, NativeHistogramMaxBucketNumber: 160,
		NativeHistogramMinResetDuration: time.Hour,
	})
}

// Observer turns proxy events into histograms. Pass it as the proxy's
// Config.Observer, then to NewRegistry.
type Observer struct {
	ackLagBytes      prometheus.Histogram
	ackLagSeconds    prometheus.Histogram
	upstreamFullSync prometheus.Histogram
	downFullSync     prometheus.Histogram
}

// NewObserver creates the histograms.
func NewObserver() *Observer {
	return &Observer{ackLagBytes: hAckLagBytes.new(), ackLagSeconds: hAckLagSeconds.new(),
		upstreamFullSync: hUpFullSync.new(), downFullSync: hDownFullSync.new()}
}

func (o *Observer) ObserveAck(lagBytes int64, lagSeconds float64) {
	o.ackLagBytes.Observe(float64(lagBytes))
	o.ackLagSeconds.Observe(lagSeconds)
}
func (o *Observer) ObserveUpstreamFullSync(s float64)   { o.upstreamFullSync.Observe(s) }
func (o *Observer) ObserveDownstreamFullSync(s float64) { o.downFullSync.Observe(s) }

// Options shape what is exported.
type Options struct {
	PerReplica      bool // per-replica series (opt-in)
	PerReplicaLimit int  // at most this many replicas get per-replica series
	Version         string
}

// NewRegistry returns a registry with the proxy collector, the observer's
// histograms and the Go and process collectors.
func NewRegistry(p *proxy.Proxy, obs *Observer, opts Options) *prometheus.Registry {
	if opts.PerReplicaLimit <= 0 {
		opts.PerReplicaLimit = 50
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&collector{p: p, opts: opts},
		obs.ackLagBytes, obs.ackLagSeconds, obs.upstreamFullSync, obs.downFullSync,
	)
	return reg
}

type collector struct {
	p    *proxy.Proxy
	opts Options
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func desc(name, help string, labels ...string) *prometheus.Desc {
	typ := "gauge"
	if strings.HasSuffix(name, "_total") {
		typ = "counter"
	}
	catalog = append(catalog, MetricDoc{Name: ns + "_" + name, Type: typ, Help: help, Labels: labels})
	return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, nil)
}

var (
	dBuildInfo        = desc("build_info", "Build metadata; always 1.", "version", "goversion")
	dCfgBacklog       = desc("config_backlog_capacity_bytes", "Configured on-disk backlog budget.")
	dCfgParallel      = desc("config_max_parallel_full_syncs", "Configured limit of concurrent downstream full syncs (0 = unlimited).")
	dUpInfo           = desc("upstream_info", "The upstream followed and its replication ID; always 1.", "master_host", "master_port", "master_replid")
	dUpLinkUp         = desc("upstream_link_up", "1 while the replication link to upstream is streaming.", "master_host", "master_port")
	dUpState          = desc("upstream_state", "1 for the current upstream link state.", "state")
	dUpSyncing        = desc("upstream_sync_in_progress", "1 while a full sync from upstream is being received.")
	dUpOffset         = desc("upstream_offset_bytes", "Replication offset received from upstream (master_repl_offset).")
	dUpLastIO         = desc("upstream_last_io_timestamp_seconds", "Last time bytes arrived from upstream.")
	dUpChanges        = desc("upstream_link_changes_total", "Upstream link up/down transitions.")
	dUpLastChange     = desc("upstream_last_link_change_timestamp_seconds", "Time of the last upstream link transition.")
	dUpDownSeconds    = desc("upstream_disconnected_seconds_total", "Cumulative time the upstream link was down.")
	dUpAttempts       = desc("upstream_connect_attempts_total", "Upstream connection attempts.")
	dUpDisconnects    = desc("upstream_disconnects_total", "Upstream connections ended, by reason.", "reason")
	dUpSyncs          = desc("upstream_syncs_total", "Successful resyncs with upstream, by mode.", "mode")
	dUpSyncFailures   = desc("upstream_sync_failures_total", "Full syncs from upstream that were cut or rejected.")
	dUpRDBSize        = desc("upstream_rdb_transfer_size_bytes", "Size of the RDB being received (0 when unknown, as with diskless transfers).")
	dUpRDBRecv        = desc("upstream_rdb_transfer_received_bytes", "Bytes of the RDB received so far in the current transfer.")
	dUpRecv           = desc("upstream_received_bytes_total", "Bytes received from upstream, by phase.", "phase")
	dUpFullSyncs      = desc("upstream_full_syncs_total", "Full syncs the upstream started for the proxy, each a fork and a BGSAVE on the origin, by purpose (initial, history_change, refresh) and outcome (ok, or the failure class: local, payload, link).", "purpose", "outcome")
	dUpFSInARow       = desc("upstream_full_sync_failures_in_a_row", "Consecutive failed upstream full syncs of the last failure's class (0 for the other classes).", "class")
	dUpFSNext         = desc("upstream_full_sync_next_attempt_timestamp_seconds", "When the next request that costs the origin a fork may be made after a failure (0: no wait).")
	dUpFSBlocked      = desc("upstream_full_sync_blocked", "1 while a full sync is held back by a local cause (disk_full, data_dir_error) that retrying cannot fix.", "reason")
	dBlWindowShort    = desc("backlog_window_short", "1 while the backlog is full and covers less than 10 s of stream at the current write rate.")
	dBlUsed           = desc("backlog_used_bytes", "Bytes held in the backlog.")
	dBlStart          = desc("backlog_start_offset_bytes", "Offset of the first byte held (repl_backlog_first_byte_offset).")
	dBlEnd            = desc("backlog_end_offset_bytes", "Offset of the last byte held (master_repl_offset).")
	dIntakeBuffered   = desc("intake_buffered_bytes", "Stream received and served from memory that the backlog's files do not hold yet (--intake-buffer).")
	dIntakeLimit      = desc("intake_buffer_limit_bytes", "The intake buffer's limit (--intake-buffer); 0 when off.")
	dBlOldest         = desc("backlog_oldest_entry_timestamp_seconds", "When the backlog's first byte arrived; time() minus this is the PSYNC window in seconds.")
	dBlWritten        = desc("backlog_written_bytes_total", "Bytes appended to the backlog.")
	dBlTrimmed        = desc("backlog_trimmed_bytes_total", "Bytes trimmed from the backlog front.")
	dBlSyncErrors     = desc("backlog_fsync_errors_total", "Background fsyncs of the backlog that failed (--fsync everysec).")
	dSecondOffset     = desc("second_repl_offset_bytes", "Offset up to which replid2 is accepted (-1 if none).")
	dSnapSize         = desc("snapshot_size_bytes", "Size of the stored snapshot.")
	dSnapOffset       = desc("snapshot_offset_bytes", "Replication offset of the stored snapshot.")
	dSnapTime         = desc("snapshot_timestamp_seconds", "When the stored snapshot was taken.")
	dSnapVersion      = desc("snapshot_rdb_version", "RDB format version of the stored snapshot.")
	dSnapInProgress   = desc("snapshot_in_progress", "1 while a snapshot refresh runs.")
	dSnapRefreshes    = desc("snapshot_refreshes_total", "Snapshot refreshes fetched from upstream.")
	dSnapSource       = desc("snapshot_source", "1 for where the stored snapshot came from: a downstream replica (no fork on the origin) or the upstream.", "source")
	dSnapAttempts     = desc("snapshot_refresh_attempts_total", "Snapshot refresh attempts by source (replica, upstream) and outcome (ok, failed).", "source", "outcome")
	dSnapStale        = desc("snapshot_stale", "1 while the stored snapshot has lapsed (--snapshot-refresh lazy): the next full sync waits for a refresh.")
	dSnapOverBudget   = desc("snapshot_budget_exceeded", "1 while the stream since the snapshot exceeds the backlog budget: no refresh succeeded, so the backlog cannot be trimmed.")
	dSnapFailures     = desc("snapshot_refresh_failures_total", "Snapshot refreshes that failed.")
	dSourceRefusals   = desc("snapshot_refresh_source_refusals_total", "Replicas that could not serve a snapshot refresh, by reason (untrusted, denied, auth, unreachable, writable, not_replica).", "reason")
	dCalmWaiting      = desc("upstream_calm_waiting", "1 while a full sync from the upstream is held until the origin's write burst calms (it cut replproxy behind the burst).")
	dCalmWaits        = desc("upstream_calm_waits_total", "Waits for an origin's write burst to calm before a full sync.")
	dIntakeRate       = desc("upstream_intake_bytes_per_second", "The stream rate replproxy measured it could take when the upstream last cut it behind a burst.")
	dSourcesRefused   = desc("snapshot_refresh_sources_refused", "Replicas refused as refresh sources within the last 10 minutes.")
	dDownReplicas     = desc("downstream_replicas", "Connected replicas by state.", "state")
	dDownClients      = desc("downstream_clients", "Connected non-replica clients.")
	dDownSyncs        = desc("downstream_syncs_total", "Syncs served to replicas, by mode.", "mode")
	dDownRejections   = desc("downstream_partial_sync_rejections_total", "PSYNC requests answered with a full sync, by reason.", "reason")
	dDownDisconnects  = desc("downstream_disconnects_total", "Replica links ended, by reason.", "reason")
	dDownFullSyncing  = desc("downstream_full_syncs_in_progress", "Replicas receiving a snapshot now.")
	dDownQueue        = desc("downstream_full_sync_queue_length", "Replicas waiting for a full-sync slot.")
	dDownSent         = desc("downstream_sent_bytes_total", "Bytes sent to replicas, by phase.", "phase")
	dDownMaxLagB      = desc("downstream_max_lag_bytes", "Largest lag in bytes over online replicas.")
	dDownMaxLagS      = desc("downstream_max_lag_seconds", "Largest lag in seconds over online replicas.")
	dDownOldestAck    = desc("downstream_oldest_ack_timestamp_seconds", "Oldest last-ACK time over online replicas.")
	dRepInfo          = desc("downstream_replica_info", "A replica's identity and state; always 1.", "replica", "addr", "state")
	dRepAckOffset     = desc("downstream_replica_ack_offset_bytes", "Offset a replica last acknowledged.", "replica")
	dRepLagBytes      = desc("downstream_replica_lag_bytes", "A replica's lag in bytes.", "replica")
	dRepLagSeconds    = desc("downstream_replica_lag_seconds", "A replica's lag in seconds.", "replica")
	dRepLastAck       = desc("downstream_replica_last_ack_timestamp_seconds", "When a replica last acknowledged.", "replica")
	dPeakRSS          = desc("process_peak_resident_memory_bytes", "Peak resident set size since the process started (VmHWM): the worst moment, which a scrape interval can miss.")
	dCfgMaxClients    = desc("config_max_clients", "Configured limit of downstream connections (--max-clients).")
	dDownRejected     = desc("downstream_rejected_connections_total", "Connections refused because --max-clients were connected.")
	dFanoutBytes      = desc("downstream_fanout_bytes_total", "Stream bytes written to caught-up replicas straight from the follower's read buffer (--fanout-writer; also counted in downstream_sent_bytes_total).")
	dFanoutHandbacks  = desc("downstream_fanout_handbacks_total", "Replicas the fan-out writer handed back to their own copy loop: a full socket, a busy follower (a read filled its buffer), a gap or a history reset.")
	dSubscriberDrops  = desc("pubsub_subscriber_drops_total", "Pub/sub subscribers disconnected for not reading their messages (32 MB pending).")
	dTLSExpiry        = desc("tls_certificate_expiry_timestamp_seconds", "When the certificate in use expires, by role: server (the TLS listener), upstream (the client certificate towards the upstream), metrics (HTTPS).", "role")
	dReloads          = desc("reloads_total", "Successful reloads of changed certificate and users files, by role (server, upstream, metrics, users).", "role")
	dReloadFailures   = desc("reload_failures_total", "Reloads that failed and kept the previous certificate or users, by role.", "role")
	dReloadFailing    = desc("reload_failing", "1 while the last reload of a role failed (the files on disk are not in use).", "role")
	dAuthFailures     = desc("auth_failures_total", "Refused authentications and TLS handshakes, by reason.", "reason")
	dGuardHolding     = desc("guard_holding", "1 while the empty-origin guard holds a new history with too few keys (replicas keep the current data until an operator accepts it).")
	dGuardHolds       = desc("guard_holds_total", "New histories the empty-origin guard has held since start.")
	dGuardKeys        = desc("guard_keys", "Keys of the served (current) and the held (new) snapshot while the guard holds.", "snapshot")
	dDelayHorizon     = desc("delay_horizon_offset_bytes", "Last offset delayed replicas (--delayed-listen) may have now: what arrived at least --delay ago.")
	dDelayCovered     = desc("delay_covered", "1 while the backlog budget holds the stream delayed replicas need; 0 when the write rate outgrows it.")
	dRepSeriesDropped = desc("downstream_replica_series_dropped", "Replicas left out of per-replica series by the limit.")
)

func unix(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.p.Status()
	stats := c.p.Stats()
	g := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	cnt := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	cfg := c.p.Config()
	port := strconv.Itoa(st.UpstreamPort)
	g(dBuildInfo, 1, c.opts.Version, runtime.Version())
	g(dCfgBacklog, float64(cfg.BacklogSize))
	g(dCfgParallel, float64(cfg.MaxParallelFullSyncs))
	g(dCfgMaxClients, float64(cfg.MaxClients))
	if hwm, err := PeakRSS(); err == nil {
		g(dPeakRSS, float64(hwm))
	}

	g(dUpInfo, 1, st.UpstreamHost, port, st.History.ReplID)
	g(dUpLinkUp, b(st.LinkUp), st.UpstreamHost, port)
	for _, s := range vocab.LinkStates {
		g(dUpState, b(st.LinkState == s), string(s))
	}
	g(dUpSyncing, b(st.LinkState == vocab.LinkSync))
	g(dUpOffset, float64(max(st.BacklogEnd, 0)))
	g(dUpLastIO, unix(st.LastIO))
	cnt(dUpChanges, float64(stats.UpstreamLinkChanges.Load()))
	g(dUpLastChange, unix(st.LinkChanged))
	cnt(dUpDownSeconds, st.DownDuration.Seconds())
	cnt(dUpAttempts, float64(stats.UpstreamConnects.Load()))
	for _, r := range vocab.UpstreamReasons {
		cnt(dUpDisconnects, float64(stats.UpstreamDisconnects.Load(r)), string(r))
	}
	cnt(dUpSyncs, float64(stats.UpstreamFullSyncs.Load()), "full")
	cnt(dUpSyncs, float64(stats.UpstreamPartialSyncs.Load()), "partial")
	cnt(dUpSyncFailures, float64(stats.UpstreamSyncFailures.Load()))
	for _, purpose := range vocab.SyncPurposes() {
		for _, outcome := range vocab.SyncOutcomes {
			cnt(dUpFullSyncs, float64(stats.UpstreamFullSyncOutcomes.Load(purpose+"/"+outcome)), purpose, outcome)
		}
	}
	fs := st.FullSync
	for _, class := range vocab.FailureClasses {
		n := 0
		if fs.LastClass == class {
			n = fs.InARow
		}
		g(dUpFSInARow, float64(n), class)
	}
	g(dUpFSNext, unix(fs.NextAt))
	for _, r := range vocab.BlockedReasons {
		g(dUpFSBlocked, b(strings.HasPrefix(fs.Blocked, r+":")), r)
	}
	var rdbSize, rdbRead float64
	if st.LinkState == vocab.LinkSync {
		rdbSize, rdbRead = float64(st.SyncTotalBytes), float64(st.SyncReadBytes)
	}
	g(dUpRDBSize, rdbSize)
	g(dUpRDBRecv, rdbRead)
	cnt(dUpRecv, float64(stats.UpstreamRDBBytes.Load()), "rdb")
	cnt(dUpRecv, float64(stats.UpstreamStreamBytes.Load()), "stream")

	used := float64(0)
	if st.BacklogFirst > 0 {
		used = float64(st.BacklogEnd - st.BacklogFirst + 1)
	}
	written, trimmed := c.p.BacklogCounters()
	g(dBlUsed, used)
	g(dBlWindowShort, b(st.BacklogWindowShort))
	g(dBlStart, float64(st.BacklogFirst))
	g(dBlEnd, float64(max(st.BacklogEnd, 0)))
	g(dIntakeBuffered, float64(st.IntakeBuffered))
	g(dIntakeLimit, float64(st.IntakeBuffer))
	g(dBlOldest, unix(st.OldestEntry))
	cnt(dBlWritten, float64(written))
	cnt(dBlTrimmed, float64(trimmed))
	cnt(dBlSyncErrors, float64(c.p.BacklogSyncErrors()))
	second := float64(-1)
	if !st.History.Empty() {
		second = float64(st.History.SecondOffset)
	}
	g(dSecondOffset, second)

	var snapSize, snapOff, snapTime, snapVer float64
	if s := st.Snapshot; s != nil {
		snapSize, snapOff, snapTime, snapVer = float64(s.Size), float64(s.Offset), unix(s.Created), float64(s.RDBVersion)
	}
	g(dSnapSize, snapSize)
	g(dSnapOffset, snapOff)
	g(dSnapTime, snapTime)
	g(dSnapVersion, snapVer)
	g(dSnapInProgress, b(st.Refreshing))
	cnt(dSnapRefreshes, float64(stats.Refreshes.Load()))
	cnt(dSnapFailures, float64(stats.RefreshFailures.Load()))
	for _, src := range vocab.SnapshotSources {
		g(dSnapSource, b(st.Snapshot != nil && vocab.SnapshotSource(st.Snapshot) == src), src)
		for _, o := range vocab.RefreshOutcomes {
			cnt(dSnapAttempts, float64(stats.RefreshAttempts.Load(src+"/"+o)), src, o)
		}
	}
	for _, r := range vocab.SourceRefusals {
		cnt(dSourceRefusals, float64(stats.SourceRefusals.Load(r)), string(r))
	}
	g(dSourcesRefused, float64(len(st.RefusedSources)))
	g(dCalmWaiting, b(st.Calm.Waiting))
	cnt(dCalmWaits, float64(st.Calm.Waits))
	g(dIntakeRate, float64(st.Calm.Intake))
	g(dSnapOverBudget, b(st.BudgetExceeded()))
	g(dSnapStale, b(st.SnapshotStale()))

	byState := map[vocab.ReplicaState]int{}
	var maxLagB, maxLagS float64
	var oldestAck time.Time
	for _, r := range st.Replicas {
		byState[r.State]++
		if r.State != vocab.ReplicaOnline {
			continue
		}
		maxLagB = max(maxLagB, float64(r.LagBytes))
		maxLagS = max(maxLagS, r.LagSeconds)
		if !r.AckTime.IsZero() && (oldestAck.IsZero() || r.AckTime.Before(oldestAck)) {
			oldestAck = r.AckTime
		}
	}
	for _, s := range vocab.ReplicaStates {
		g(dDownReplicas, float64(byState[s]), string(s))
	}
	g(dDownClients, float64(st.Clients))
	cnt(dDownRejected, float64(stats.RejectedConns.Load()))
	cnt(dFanoutBytes, float64(stats.FanoutBytes.Load()))
	cnt(dFanoutHandbacks, float64(stats.FanoutHandbacks.Load()))
	cnt(dSubscriberDrops, float64(stats.OutputBufferDrops.Load()))
	cnt(dDownSyncs, float64(stats.SyncFull.Load()), "full")
	cnt(dDownSyncs, float64(stats.SyncPartialOK.Load()), "partial")
	for _, v := range psync.RejectVerdicts {
		cnt(dDownRejections, float64(stats.Rejections[v].Load()), v.String())
	}
	for _, r := range vocab.DisconnectReasons {
		cnt(dDownDisconnects, float64(stats.Disconnects.Load(r)), string(r))
	}
	if ds := st.Delay; ds.Enabled {
		g(dDelayHorizon, float64(max(ds.Horizon, 0)))
		g(dDelayCovered, b(ds.Covered))
	}
	gs := st.Guard
	g(dGuardHolding, b(gs.Holding))
	cnt(dGuardHolds, float64(gs.Holds))
	g(dGuardKeys, float64(gs.CurKeys), "current")
	g(dGuardKeys, float64(gs.NewKeys), "new")
	for _, r := range c.p.ReloadStatus() {
		if !r.NotAfter.IsZero() {
			g(dTLSExpiry, unix(r.NotAfter), r.Role)
		}
		cnt(dReloads, float64(r.Reloads), r.Role)
		cnt(dReloadFailures, float64(r.Failures), r.Role)
		g(dReloadFailing, b(r.LastError != ""), r.Role)
	}
	for _, r := range security.AuthFailureReasons() {
		cnt(dAuthFailures, float64(stats.AuthFailures.Load(r)), r)
	}
	g(dDownFullSyncing, float64(st.FullSyncing))
	g(dDownQueue, float64(st.Queued))
	cnt(dDownSent, float64(stats.SentRDBBytes.Load()), "rdb")
	cnt(dDownSent, float64(stats.SentStreamBytes.Load()), "stream")
	g(dDownMaxLagB, maxLagB)
	g(dDownMaxLagS, maxLagS)
	g(dDownOldestAck, unix(oldestAck))

	if !c.opts.PerReplica {
		return
	}
	seen := map[string]bool{}
	dropped := 0
	for i, r := range st.Replicas {
		if i >= c.opts.PerReplicaLimit {
			dropped++
			continue
		}
		name := fmt.Sprintf("%s:%d", r.IP, r.Port)
		if seen[name] {
			name = fmt.Sprintf("%s#%d", name, r.ID) // two replicas announcing the same address
		}
		seen[name] = true
		g(dRepInfo, 1, name, r.Addr, string(r.State))
		g(dRepAckOffset, float64(max(r.AckOff, 0)), name)
		g(dRepLagBytes, float64(r.LagBytes), name)
		g(dRepLagSeconds, r.LagSeconds, name)
		g(dRepLastAck, unix(r.AckTime), name)
	}
	g(dRepSeriesDropped, float64(dropped))
}
