package metrics

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"sigs.k8s.io/yaml"

	"github.com/replproxy/replproxy/internal/faultproxy"
	"github.com/replproxy/replproxy/internal/loopback"
	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/internal/testcert"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
)

type rig struct {
	p    *proxy.Proxy
	addr string
	reg  *prometheus.Registry
	web  *httptest.Server
}

func startRig(t *testing.T, upstream string) *rig {
	t.Helper()
	obs := NewObserver()
	p, err := proxy.New(proxy.Config{Upstream: upstream, DataDir: t.TempDir(), Listen: "127.0.0.1:0",
		BacklogSize: 64 << 20, ReplTimeout: 30 * time.Second, Observer: obs}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := loopback.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx, ln) }()
	reg := NewRegistry(p, obs, Options{PerReplica: true, Version: "test"})
	web := httptest.NewServer(Handler(p, reg, HandlerOptions{Readiness: ReadySynced}))
	t.Cleanup(func() {
		web.Close()
		cancel()
		<-done
	})
	return &rig{p: p, addr: ln.Addr().String(), reg: reg, web: web}
}

func (r *rig) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(r.web.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// gauge returns the value of a metric with the given labels, or -1.
func (r *rig) value(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range labels {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

func families(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func replicasOf(t *testing.T, n int, master string) []*redistest.Server {
	host, port, _ := net.SplitHostPort(master)
	var out []*redistest.Server
	for i := range n {
		out = append(out, redistest.StartT(t, fmt.Sprintf("replica%d", i), "--replicaof", host, port))
	}
	return out
}

var wantMetrics = []string{
	"replproxy_build_info", "replproxy_config_backlog_capacity_bytes", "replproxy_config_max_parallel_full_syncs",
	"replproxy_upstream_info", "replproxy_upstream_link_up", "replproxy_upstream_state", "replproxy_upstream_sync_in_progress",
	"replproxy_upstream_offset_bytes", "replproxy_upstream_last_io_timestamp_seconds", "replproxy_upstream_link_changes_total",
	"replproxy_upstream_last_link_change_timestamp_seconds", "replproxy_upstream_disconnected_seconds_total",
	"replproxy_upstream_connect_attempts_total", "replproxy_upstream_disconnects_total", "replproxy_upstream_syncs_total",
	"replproxy_upstream_sync_failures_total", "replproxy_upstream_full_sync_duration_seconds",
	"replproxy_upstream_rdb_transfer_size_bytes", "replproxy_upstream_rdb_transfer_received_bytes",
	"replproxy_upstream_received_bytes_total", "replproxy_backlog_used_bytes", "replproxy_backlog_start_offset_bytes",
	"replproxy_backlog_end_offset_bytes", "replproxy_backlog_oldest_entry_timestamp_seconds",
	"replproxy_backlog_written_bytes_total", "replproxy_backlog_trimmed_bytes_total", "replproxy_backlog_fsync_errors_total",
	"replproxy_second_repl_offset_bytes",
	"replproxy_snapshot_size_bytes", "replproxy_snapshot_offset_bytes", "replproxy_snapshot_timestamp_seconds",
	"replproxy_snapshot_rdb_version", "replproxy_snapshot_in_progress", "replproxy_snapshot_refreshes_total",
	"replproxy_snapshot_refresh_failures_total", "replproxy_downstream_replicas", "replproxy_downstream_clients",
	"replproxy_downstream_syncs_total", "replproxy_downstream_partial_sync_rejections_total",
	"replproxy_downstream_disconnects_total", "replproxy_downstream_full_syncs_in_progress",
	"replproxy_downstream_full_sync_queue_length", "replproxy_downstream_full_sync_duration_seconds",
	"replproxy_downstream_sent_bytes_total", "replproxy_downstream_max_lag_bytes", "replproxy_downstream_max_lag_seconds",
	"replproxy_downstream_oldest_ack_timestamp_seconds", "replproxy_downstream_ack_lag_bytes",
	"replproxy_downstream_ack_lag_seconds", "replproxy_downstream_replica_info", "replproxy_downstream_replica_ack_offset_bytes",
	"replproxy_downstream_replica_lag_bytes", "replproxy_downstream_replica_lag_seconds",
	"replproxy_downstream_replica_last_ack_timestamp_seconds",
}

// TestMetricsLiveTopology runs origin -> proxy -> 3 replicas and checks the
// metric set, lint, lag behaviour, readiness, INFO agreement and the page.
func TestMetricsLiveTopology(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	up, err := faultproxy.New(origin.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	up.Refuse(true)
	r := startRig(t, up.Addr())
	if code, body := r.get(t, "/readyz"); code != 503 {
		t.Fatalf("/readyz before the first snapshot: %d %s", code, body)
	}
	if code, _ := r.get(t, "/livez"); code != 200 {
		t.Fatalf("/livez %d", code)
	}
	up.Refuse(false)
	redistest.Eventually(t, 20*time.Second, "ready once synced", func() bool { code, _ := r.get(t, "/readyz"); return code == 200 })

	replicas := replicasOf(t, 3, r.addr)
	ctx := context.Background()
	redistest.Eventually(t, 30*time.Second, "three online replicas", func() bool {
		return r.value(t, "replproxy_downstream_replicas", map[string]string{"state": "online"}) == 3
	})
	for i := range 2000 {
		_ = origin.Client().Set(ctx, "k"+strconv.Itoa(i), i, 0).Err()
	}

	// Every metric named in the docs exists, and promlint is happy.
	fams := families(t, r.reg)
	for _, name := range wantMetrics {
		if fams[name] == nil {
			t.Errorf("metric %s missing", name)
		}
	}
	problems, err := testutil.GatherAndLint(r.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "replproxy_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}

	// After writes stop every replica's lag returns to 0 in bytes and seconds.
	lagOf := func(metric string, rep *redistest.Server) float64 {
		return r.value(t, metric, map[string]string{"replica": "127.0.0.1:" + strconv.Itoa(rep.Port)})
	}
	redistest.Eventually(t, 20*time.Second, "lag returns to zero", func() bool {
		for _, rep := range replicas {
			if lagOf("replproxy_downstream_replica_lag_bytes", rep) != 0 || lagOf("replproxy_downstream_replica_lag_seconds", rep) != 0 {
				return false
			}
		}
		return r.value(t, "replproxy_downstream_max_lag_bytes", nil) == 0
	})

	// INFO and /metrics agree on offsets and the replica list.
	info, err := redis.NewClient(&redis.Options{Addr: r.addr}).InfoMap(ctx, "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	repl := info["Replication"]
	if repl["role"] != "slave" || repl["slave_priority"] != "0" {
		t.Fatalf("INFO replication: %v", repl)
	}
	end, _ := strconv.ParseFloat(repl["master_repl_offset"], 64)
	if got := r.value(t, "replproxy_backlog_end_offset_bytes", nil); got != end {
		t.Errorf("INFO master_repl_offset %v, metric %v", end, got)
	}
	var infoReplicas, metricReplicas []string
	for k, v := range repl {
		if strings.HasPrefix(k, "slave") && strings.Contains(v, "ip=") {
			f := map[string]string{}
			for _, kv := range strings.Split(v, ",") {
				a, b, _ := strings.Cut(kv, "=")
				f[a] = b
			}
			infoReplicas = append(infoReplicas, f["ip"]+":"+f["port"]+"@"+f["offset"])
		}
	}
	for _, m := range fams["replproxy_downstream_replica_info"].GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "replica" {
				off := r.value(t, "replproxy_downstream_replica_ack_offset_bytes", map[string]string{"replica": lp.GetValue()})
				metricReplicas = append(metricReplicas, fmt.Sprintf("%s@%d", lp.GetValue(), int64(off)))
			}
		}
	}
	sort.Strings(infoReplicas)
	sort.Strings(metricReplicas)
	if len(infoReplicas) != 3 || strings.Join(infoReplicas, " ") != strings.Join(metricReplicas, " ") {
		t.Errorf("INFO replicas %v, metrics %v", infoReplicas, metricReplicas)
	}

	// The status page lists each replica.
	_, page := r.get(t, "/")
	for _, rep := range replicas {
		if !strings.Contains(page, "127.0.0.1:"+strconv.Itoa(rep.Port)) {
			t.Errorf("status page lacks replica %d", rep.Port)
		}
	}
	if strings.Count(page, `class="replica"`) != 3 {
		t.Errorf("status page rows: %d", strings.Count(page, `class="replica"`))
	}

	// One stopped replica under load: its lag rises, the others' stays low.
	slow := replicas[0]
	if err := slow.Pause(); err != nil {
		t.Fatal(err)
	}
	defer slow.Resume()
	stop := make(chan struct{})
	// About 2 MB/s: the lag passes 1 MB and 3 s long before the 64 MB
	// backlog could trim past the stopped replica (which would drop it).
	go func() {
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			pipe := origin.Client().Pipeline()
			for j := range 100 {
				pipe.Set(ctx, "load"+strconv.Itoa((i*100+j)%1000), strings.Repeat("x", 500), 0)
			}
			_, _ = pipe.Exec(ctx)
		}
	}()
	redistest.Eventually(t, 30*time.Second, "stopped replica's lag rises", func() bool {
		return lagOf("replproxy_downstream_replica_lag_bytes", slow) > 1<<20 && lagOf("replproxy_downstream_replica_lag_seconds", slow) > 3
	})
	for _, rep := range replicas[1:] {
		// Replicas ACK once a second, so a healthy one is at most ~1s behind.
		if s := lagOf("replproxy_downstream_replica_lag_seconds", rep); s > 1.5 {
			t.Errorf("running replica %d lags %.2fs", rep.Port, s)
		}
	}
	close(stop)
	h := families(t, r.reg)["replproxy_downstream_ack_lag_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() == 0 {
		t.Error("ACK lag histogram observed nothing")
	}

	// Upstream down: not ready.
	up.Refuse(true)
	up.CutAll()
	redistest.Eventually(t, 10*time.Second, "not ready while upstream is down", func() bool { code, _ := r.get(t, "/readyz"); return code == 503 })
	if r.value(t, "replproxy_upstream_link_up", nil) != 0 || r.value(t, "replproxy_upstream_link_changes_total", nil) < 2 {
		t.Error("link metrics do not show the outage")
	}
}

var metricName = regexp.MustCompile(`replproxy_[a-z0-9_]+`)

func referenced(exprs []string) []string {
	var out []string
	for _, e := range exprs {
		for _, m := range metricName.FindAllString(e, -1) {
			for _, suf := range []string{"_bucket", "_count", "_sum"} {
				if strings.HasSuffix(m, suf) && (strings.Contains(m, "_lag_") || strings.Contains(m, "_duration_")) {
					m = strings.TrimSuffix(m, suf)
				}
			}
			out = append(out, m)
		}
	}
	return out
}

// TestDashboardAndAlerts: the dashboard is a Grafana dashboard model and
// the rules are Prometheus rule groups, and both name only real metrics.
func TestDashboardAndAlerts(t *testing.T) {
	// Every TLS role and the users file configured: their series exist.
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue(dir, "proxy", "proxy")
	if err != nil {
		t.Fatal(err)
	}
	users := filepath.Join(dir, "users.acl")
	if err := os.WriteFile(users, []byte("user repl on >x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := proxy.New(proxy.Config{Upstream: "127.0.0.1:1", DataDir: t.TempDir(),
		TLSListen: "127.0.0.1:0", TLSCertFile: pair.CertFile, TLSKeyFile: pair.KeyFile, TLSCAFile: ca.CertFile,
		UpstreamTLS: true, UpstreamTLSCertFile: pair.CertFile, UpstreamTLSKeyFile: pair.KeyFile, UpstreamTLSCAFile: ca.CertFile,
		MetricsTLSCertFile: pair.CertFile, MetricsTLSKeyFile: pair.KeyFile, UsersFile: users,
		DelayedListen: "127.0.0.1:0", Delay: time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := NewRegistry(p, NewObserver(), Options{PerReplica: true})
	fams := families(t, reg)
	r := &rig{reg: reg}
	for _, role := range []string{security.RoleServer, security.RoleUpstream, security.RoleMetrics} {
		if v := r.value(t, "replproxy_tls_certificate_expiry_timestamp_seconds", map[string]string{"role": role}); v != float64(pair.NotAfter.Unix()) {
			t.Errorf("%s certificate expiry %v, want %d", role, v, pair.NotAfter.Unix())
		}
	}
	for _, role := range []string{security.RoleServer, security.RoleUpstream, security.RoleMetrics, security.RoleUsers} {
		if v := r.value(t, "replproxy_reload_failing", map[string]string{"role": role}); v != 0 {
			t.Errorf("%s reload_failing %v", role, v)
		}
	}
	if v := r.value(t, "replproxy_auth_failures_total", map[string]string{"reason": security.AuthTLSBadClientCert}); v != 0 {
		t.Errorf("auth failures series: %v", v)
	}
	exists := func(name string) bool {
		if fams[name] != nil {
			return true
		}
		for _, n := range wantMetrics { // per-replica series appear only with replicas
			if n == name {
				return true
			}
		}
		return false
	}

	b, err := os.ReadFile(filepath.Join("..", "deploy", "grafana", "replproxy.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID, Title    string
		SchemaVersion int `json:"schemaVersion"`
		Panels        []struct {
			ID      int
			Type    string
			Title   string
			GridPos struct{ X, Y, W, H int } `json:"gridPos"`
			Targets []struct {
				Expr  string
				RefID string `json:"refId"`
			}
		}
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&dash); err != nil {
		t.Fatal(err)
	}
	if dash.UID == "" || dash.Title == "" || dash.SchemaVersion == 0 || len(dash.Panels) < 10 {
		t.Fatalf("dashboard model incomplete: %+v", dash)
	}
	var exprs []string
	for _, p := range dash.Panels {
		if p.Type == "" || p.Title == "" || len(p.Targets) == 0 || p.GridPos.W == 0 {
			t.Errorf("panel %d incomplete", p.ID)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, m := range referenced(exprs) {
		if !exists(m) {
			t.Errorf("dashboard names unknown metric %s", m)
		}
	}

	b, err = os.ReadFile(filepath.Join("..", "deploy", "prometheus", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert,omitempty"`
				Record      string            `json:"record,omitempty"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels,omitempty"`
				Annotations map[string]string `json:"annotations,omitempty"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.UnmarshalStrict(b, &rules); err != nil {
		t.Fatal(err)
	}
	exprs = nil
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if (r.Alert == "") == (r.Record == "") || r.Expr == "" {
				t.Errorf("rule %+v: want exactly one of alert/record, and an expr", r)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("rule %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if r.Alert != "" {
				alerts++
				if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
					t.Errorf("alert %s lacks severity or summary", r.Alert)
				}
			}
			exprs = append(exprs, r.Expr)
		}
	}
	if alerts < 7 {
		t.Errorf("%d alerts", alerts)
	}
	for _, m := range referenced(exprs) {
		if !exists(m) {
			t.Errorf("alerts name unknown metric %s", m)
		}
	}
}

// TestSentinelCoexistence: a real Sentinel watching the origin discovers the
// proxy as a replica with priority 0, talks to it, and never disturbs
// replication through it.
func TestSentinelCoexistence(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	r := startRig(t, origin.Addr())
	replicas := replicasOf(t, 1, r.addr)
	_, oport, _ := net.SplitHostPort(origin.Addr())
	sen := redistest.StartSentinelT(t, origin.Addr(), "sentinel down-after-milliseconds mymaster 2000")
	sentinel := redis.NewSentinelClient(&redis.Options{Addr: sen.Addr})
	defer sentinel.Close()
	ctx := context.Background()
	_, proxyPort, _ := net.SplitHostPort(r.addr)
	var entry map[string]string
	redistest.Eventually(t, 30*time.Second, "sentinel discovers the proxy and reads its INFO", func() bool {
		reps, err := sentinel.Replicas(ctx, "mymaster").Result()
		if err != nil {
			return false
		}
		for _, e := range reps {
			if e["port"] == proxyPort {
				entry = e
				refresh, _ := strconv.Atoi(e["info-refresh"])
				return e["master-link-status"] == "ok" && refresh < 15000 && e["slave-priority"] != ""
			}
		}
		return false
	})
	if entry["slave-priority"] != "0" || strings.Contains(entry["flags"], "down") || strings.Contains(entry["flags"], "disconnected") {
		t.Fatalf("sentinel's view of the proxy: %v", entry)
	}
	for i := range 500 {
		_ = origin.Client().Set(ctx, "s"+strconv.Itoa(i), i, 0).Err()
	}
	redistest.Eventually(t, 20*time.Second, "replication through the proxy continues", func() bool {
		od, _ := origin.Digest()
		rd, _ := replicas[0].Digest()
		return od == rd
	})
	if got := r.p.Stats().SyncFull.Load(); got != 1 {
		t.Fatalf("full syncs %d with sentinel around", got)
	}
	m, _ := sentinel.Master(ctx, "mymaster").Result()
	if m["port"] != oport {
		t.Fatalf("sentinel's master moved: %v", m)
	}
}

// TestEveryLabelAtZeroFromStart: right after start-up, before any event,
// every reason, state and outcome series exists, so that increase()
// alerts can fire on the first event of each.
func TestEveryLabelAtZeroFromStart(t *testing.T) {
	t.Parallel()
	r := startRig(t, "127.0.0.1:1")
	want := map[string][]string{}
	for _, s := range vocab.UpstreamReasons {
		want["replproxy_upstream_disconnects_total"] = append(want["replproxy_upstream_disconnects_total"], "reason="+string(s))
	}
	for _, s := range vocab.DisconnectReasons {
		want["replproxy_downstream_disconnects_total"] = append(want["replproxy_downstream_disconnects_total"], "reason="+string(s))
	}
	for _, v := range psync.RejectVerdicts {
		want["replproxy_downstream_partial_sync_rejections_total"] = append(want["replproxy_downstream_partial_sync_rejections_total"], "reason="+v.String())
	}
	for _, s := range vocab.LinkStates {
		want["replproxy_upstream_state"] = append(want["replproxy_upstream_state"], "state="+string(s))
	}
	for _, s := range vocab.ReplicaStates {
		want["replproxy_downstream_replicas"] = append(want["replproxy_downstream_replicas"], "state="+string(s))
	}
	for _, p := range vocab.SyncPurposes() {
		for _, o := range vocab.SyncOutcomes {
			want["replproxy_upstream_full_syncs_total"] = append(want["replproxy_upstream_full_syncs_total"], "purpose="+p+",outcome="+o)
		}
	}
	for _, reason := range vocab.BlockedReasons {
		want["replproxy_upstream_full_sync_blocked"] = append(want["replproxy_upstream_full_sync_blocked"], "reason="+reason)
	}
	fams := families(t, r.reg)
	for name, series := range want {
		mf := fams[name]
		if mf == nil {
			t.Errorf("%s missing at start-up", name)
			continue
		}
		have := map[string]bool{}
		for _, m := range mf.GetMetric() {
			var kv []string
			for _, lp := range m.GetLabel() {
				kv = append(kv, lp.GetName()+"="+lp.GetValue())
			}
			have[strings.Join(kv, ",")] = true
		}
		for _, s := range series {
			if !have[s] && !have[sortedLabels(s)] {
				t.Errorf("%s{%s} missing at start-up (have %v)", name, s, have)
			}
		}
	}
}

// sortedLabels puts "a=1,b=2" label pairs in the order the registry gives.
func sortedLabels(s string) string {
	kv := strings.Split(s, ",")
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

// TestGuardEndpoints: POST /guard/accept is authenticated like the Redis
// port and answers clearly when nothing is held; /guard shows the state.
func TestGuardEndpoints(t *testing.T) {
	p, err := proxy.New(proxy.Config{Upstream: "127.0.0.1:1", DataDir: t.TempDir(), RequirePass: "s3cret"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewServer(Handler(p, NewRegistry(p, NewObserver(), Options{}), HandlerOptions{Readiness: ReadySynced}))
	defer web.Close()
	do := func(method, path, user, pass string) (int, string) {
		req, _ := http.NewRequest(method, web.URL+path, nil)
		if pass != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		method, user, pass string
		code               int
		body               string
	}{
		{"GET", "", "", 405, "POST"},
		{"POST", "", "", 401, "WRONGPASS"},
		{"POST", "default", "wrong", 401, "WRONGPASS"},
		{"POST", "", "s3cret", 409, "holds no history"},
	} {
		if code, body := do(c.method, "/guard/accept", c.user, c.pass); code != c.code || !strings.Contains(body, c.body) {
			t.Errorf("%s /guard/accept as %q: %d %q", c.method, c.user, code, body)
		}
	}
	if code, body := do("GET", "/guard", "", ""); code != 200 || !strings.Contains(body, "guard:watching") {
		t.Errorf("/guard: %d %q", code, body)
	}
}
