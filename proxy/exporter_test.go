package proxy

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redistest"
)

// exporterScrape is the command sequence redis_exporter v1.88.0 (commit
// cd5941f, exporter.go:scrapeRedisHost) sends on every scrape with its
// default options: set-client-name on, ping-on-connect off, config-command
// CONFIG, no check-keys, no key groups, latency histograms on.
var exporterScrape = [][]any{
	{"CLIENT", "SETNAME", "redis_exporter"},
	{"INFO", "ALL"},
	{"CONFIG", "GET", "*"},
	{"LATENCY", "LATEST"},
	{"LATENCY", "HISTOGRAM"},
	{"SLOWLOG", "LEN"},
	{"SLOWLOG", "GET", "1"},
	{"COMMAND", "INFO", "COMMANDLOG"},
}

// exporterFields are INFO fields the exporter maps to metrics that a
// proxy has a truthful value for; each must be there, numeric.
var exporterFields = []string{
	"uptime_in_seconds", "process_id", "connected_clients", "maxclients", "blocked_clients",
	"used_memory", "used_memory_rss", "used_memory_peak", "maxmemory", "mem_fragmentation_ratio",
	"loading", "rdb_bgsave_in_progress", "rdb_last_save_time", "rdb_last_bgsave_time_sec", "aof_enabled",
	"total_connections_received", "total_commands_processed", "rejected_connections", "total_net_input_bytes",
	"total_net_output_bytes", "total_net_repl_input_bytes", "total_net_repl_output_bytes", "pubsub_channels",
	"pubsub_patterns", "latest_fork_usec", "total_error_replies", "used_cpu_sys", "used_cpu_user",
	"used_cpu_sys_children", "used_cpu_user_children", "connected_slaves", "repl_backlog_size",
	"master_repl_offset", "sync_full", "sync_partial_ok", "sync_partial_err", "slave_priority",
}

// TestExporterScrape replays redis_exporter's scrape against the proxy
// and checks each reply as the exporter parses it; INFO has every section
// the exporter reads, no field twice, and a live Keyspace or none.
func TestExporterScrape(t *testing.T) {
	t.Parallel()
	origin := redistest.StartT(t, "origin")
	ctx := context.Background()
	must(t, origin.Client().Set(ctx, "k", "v", 0).Err())
	p := startProxy(t, origin.Addr(), t.TempDir())
	redistest.Eventually(t, 20*time.Second, "link up", p.linkUp)
	replica := redistest.StartT(t, "replica", "--replicaof", "127.0.0.1", strconv.Itoa(p.port()))
	redistest.Eventually(t, 20*time.Second, "replica online", func() bool {
		return strings.Contains(infoText(replica), "master_link_status:up")
	})
	cli := redis.NewClient(&redis.Options{Addr: p.addr})
	defer cli.Close()
	conn := cli.Conn()
	defer conn.Close()
	if err := conn.Do(ctx, "NOSUCHCOMMAND").Err(); err == nil { // an error for Errorstats
		t.Fatal("an unknown command succeeded")
	}
	for scrape := range 2 { // the second sees the first's commands counted
		replies := make([]any, len(exporterScrape))
		for i, c := range exporterScrape {
			v, err := conn.Do(ctx, c...).Result()
			if err != nil {
				t.Fatalf("scrape %d: %v: %v", scrape, c, err)
			}
			replies[i] = v
		}
		if replies[0] != "OK" {
			t.Fatalf("CLIENT SETNAME: %v", replies[0])
		}
		checkExporterInfo(t, replies[1].(string), origin, scrape)
		cfg, ok := replies[2].([]any)
		if !ok || len(cfg)%2 != 0 {
			t.Fatalf("CONFIG GET *: not a map: %#v", replies[2])
		}
		conf := map[string]string{}
		for i := 0; i < len(cfg); i += 2 {
			k, ok1 := cfg[i].(string)
			v, ok2 := cfg[i+1].(string)
			if !ok1 || !ok2 {
				t.Fatalf("CONFIG GET *: entry %d not strings", i)
			}
			conf[k] = v
		}
		for _, k := range []string{"databases", "maxmemory", "maxclients", "io-threads", "repl-backlog-size"} {
			if _, err := strconv.ParseFloat(conf[k], 64); err != nil {
				t.Errorf("CONFIG %s = %q, not a number", k, conf[k])
			}
		}
		if f := strings.Fields(conf["client-output-buffer-limit"]); len(f) != 12 {
			t.Errorf("client-output-buffer-limit %q", conf["client-output-buffer-limit"])
		}
		if l, ok := replies[3].([]any); !ok || len(l) != 0 {
			t.Errorf("LATENCY LATEST: %#v", replies[3])
		}
		checkHistogram(t, replies[4], scrape)
		if n, ok := replies[5].(int64); !ok || n != 0 {
			t.Errorf("SLOWLOG LEN: %#v", replies[5])
		}
		if l, ok := replies[6].([]any); !ok || len(l) != 0 {
			t.Errorf("SLOWLOG GET 1: %#v", replies[6])
		}
		if l, ok := replies[7].([]any); !ok || len(l) != 1 || l[0] != nil {
			t.Errorf("COMMAND INFO COMMANDLOG (the exporter's Valkey probe): %#v", replies[7])
		}
	}
	list, err := conn.Do(ctx, "CLIENT", "LIST").Text()
	must(t, err)
	if !strings.Contains(list, "name=redis_exporter ") {
		t.Errorf("CLIENT LIST does not show the exporter's name:\n%s", list)
	}
}

func checkExporterInfo(t *testing.T, info string, origin *redistest.Server, scrape int) {
	t.Helper()
	fields := map[string]string{}
	var sections []string
	for _, l := range strings.Split(info, "\r\n") {
		if name, ok := strings.CutPrefix(l, "# "); ok {
			sections = append(sections, name)
			continue
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		if _, dup := fields[k]; dup {
			t.Errorf("INFO ALL: field %s appears twice", k)
		}
		fields[k] = v
	}
	want := "Server Clients Memory Persistence Stats Replication CPU Modules Commandstats Errorstats Latencystats Cluster Keyspace Replproxy"
	if got := strings.Join(sections, " "); got != want {
		t.Errorf("INFO ALL sections: %s\nwant %s", got, want)
	}
	for _, k := range exporterFields {
		if _, err := strconv.ParseFloat(strings.TrimSuffix(fields[k], "%"), 64); err != nil {
			t.Errorf("INFO %s = %q, not a number", k, fields[k])
		}
	}
	if v := mustInfo(t, origin, "server")["redis_version"]; fields["redis_version"] != v {
		t.Errorf("redis_version %q, the upstream's is %q", fields["redis_version"], v)
	}
	if fields["replproxy_version"] == "" || fields["cluster_enabled"] != "0" || fields["maxmemory_policy"] != "noeviction" {
		t.Errorf("replproxy_version %q cluster_enabled %q maxmemory_policy %q", fields["replproxy_version"], fields["cluster_enabled"], fields["maxmemory_policy"])
	}
	for k := range fields {
		if strings.HasPrefix(k, "db") {
			t.Errorf("INFO shows %s: Keyspace would be the snapshot's, not live", k)
		}
	}
	if !strings.HasPrefix(fields["snapshot_keyspace_db0"], "keys=1,") {
		t.Errorf("snapshot_keyspace_db0 %q", fields["snapshot_keyspace_db0"])
	}
	if fields["connected_slaves"] != "1" || fields["connected_clients"] != "2" { // the exporter and the upstream link
		t.Errorf("connected_slaves %s connected_clients %s", fields["connected_slaves"], fields["connected_clients"])
	}
	if !strings.HasPrefix(fields["errorstat_ERR"], "count=") {
		t.Errorf("errorstat_ERR %q", fields["errorstat_ERR"])
	}
	if scrape > 0 {
		for _, cmd := range []string{"info", "config|get", "slowlog|len", "latency|histogram", "client|setname"} {
			if !strings.HasPrefix(fields["cmdstat_"+cmd], "calls=") || fields["latency_percentiles_usec_"+cmd] == "" {
				t.Errorf("cmdstat_%s %q latency %q", cmd, fields["cmdstat_"+cmd], fields["latency_percentiles_usec_"+cmd])
			}
		}
		if n, _ := strconv.Atoi(fields["total_commands_processed"]); n < len(exporterScrape) {
			t.Errorf("total_commands_processed %d", n)
		}
	}
}

// checkHistogram parses LATENCY HISTOGRAM as the exporter does
// (latency.go: name, then calls and histogram_usec pairs).
func checkHistogram(t *testing.T, v any, scrape int) {
	t.Helper()
	l, ok := v.([]any)
	if !ok || len(l)%2 != 0 {
		t.Fatalf("LATENCY HISTOGRAM: %#v", v)
	}
	names := map[string]bool{}
	for i := 0; i < len(l); i += 2 {
		name, _ := l[i].(string)
		d, ok := l[i+1].([]any)
		if !ok || len(d) != 4 || d[0] != "calls" || d[2] != "histogram_usec" {
			t.Fatalf("LATENCY HISTOGRAM %s: %#v", name, l[i+1])
		}
		calls, _ := d[1].(int64)
		buckets, _ := d[3].([]any)
		if len(buckets) == 0 || len(buckets)%2 != 0 {
			t.Fatalf("LATENCY HISTOGRAM %s buckets %#v", name, d[3])
		}
		if last, _ := buckets[len(buckets)-1].(int64); last != calls {
			t.Errorf("LATENCY HISTOGRAM %s: cumulative %d of %d calls", name, last, calls)
		}
		names[name] = true
	}
	if scrape > 0 && !names["info"] {
		t.Errorf("LATENCY HISTOGRAM lacks info: %v", fmt.Sprint(names))
	}
}

// TestInfoSections: INFO's arguments select sections as in Redis 7.
func TestInfoSections(t *testing.T) {
	p := startProxy(t, "127.0.0.1:1", t.TempDir()) // no upstream needed
	cli := redis.NewClient(&redis.Options{Addr: p.addr})
	defer cli.Close()
	info := func(args ...string) string {
		v, err := cli.Info(context.Background(), args...).Result()
		must(t, err)
		return v
	}
	headers := func(args ...string) string {
		var hs []string
		for _, l := range strings.Split(info(args...), "\r\n") {
			if h, ok := strings.CutPrefix(l, "# "); ok {
				hs = append(hs, h)
			}
		}
		return strings.Join(hs, " ")
	}
	def := "Server Clients Memory Persistence Stats Replication CPU Modules Errorstats Cluster Keyspace Replproxy"
	all := "Server Clients Memory Persistence Stats Replication CPU Modules Commandstats Errorstats Latencystats Cluster Keyspace Replproxy"
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, def}, {[]string{"default"}, def}, {[]string{"ALL"}, all}, {[]string{"everything"}, all},
		{[]string{"clients", "server"}, "Server Clients"}, {[]string{"commandstats"}, "Commandstats"},
		{[]string{"default", "latencystats"}, "Server Clients Memory Persistence Stats Replication CPU Modules Errorstats Latencystats Cluster Keyspace Replproxy"},
		{[]string{"bogus"}, ""},
	} {
		if got := headers(c.args...); got != c.want {
			t.Errorf("INFO %v: %s\nwant %s", c.args, got, c.want)
		}
	}
	if got := info("bogus"); got != "" {
		t.Errorf("INFO bogus: %q, want empty as Redis", got)
	}
}
