package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/faultproxy"
	"github.com/replproxy/replproxy/internal/loadgen"
	"github.com/replproxy/replproxy/internal/redistest"
)

type scenario struct {
	name, help string
	replicas   int
	dataset    string
	duration   time.Duration
	run        func(c *common, fs *flag.FlagSet) (*report, error)
}

var scenarios = []scenario{
	{"fanout", "N replicas full-sync at once from a dataset of D bytes", 10, "256mb", 0, fanout},
	{"relay", "steady write load relayed to K replicas: end-to-end lag", 3, "0", 15 * time.Second, relay},
	{"outage", "one replica offline T seconds under load: which resync, how many bytes", 2, "32mb", 0, outage},
	{"restart", "the intermediate SIGKILLed and restarted under load", 3, "32mb", 5 * time.Second, restart},
	{"churn", "sustained writes at a fixed byte rate, replicas joining and restarting: what it costs the origin", 2, "64mb", time.Minute, churn},
	{"burst", "a bulk load at the origin's full speed with default output-buffer limits: chained replica and replproxy, cuts and forks", 1, "0", 0, burst},
	{"ceiling", "synthetic upstream at full speed into replproxy with K sinks, next to a plain socket copy", 4, "512mb", 0, ceiling},
}

func runScenario(s scenario, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(s.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &common{log: stderr}
	c.register(fs, s.replicas, s.dataset, s.duration)
	if s.name == "churn" {
		fs.String("write-rate", "8mb", "load, bytes/s")
		fs.String("churn-every", "10s", "interval between churn steps (a replica restarted, one added)")
	}
	if s.name == "burst" {
		c.budget = 4 << 30 // room for the whole of a 4 GB burst, as a user sizing for bulk loads would
		fs.String("bursts", "1gb:100kb,4gb:100kb,8gb:100kb,2gb:1kb", "bursts to run, TOTAL:VALUE-SIZE, comma-separated")
	}
	if s.name == "relay" {
		fs.Duration("freeze", 0, "SIGSTOP the last replica this long, 2s into the load; the lag is then the others' (the load must last 4s longer)")
	}
	if s.name == "outage" {
		fs.String("outages", "1s,5s,15s", "offline durations to sweep")
		fs.Int64("write-rate-bytes", 2<<20, "load during outages, bytes/s")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := c.setup(); err != nil {
		fmt.Fprintln(stderr, "replbench:", err)
		return 1
	}
	defer c.cleanup()
	rep, err := s.run(c, fs)
	if err != nil {
		fmt.Fprintf(stderr, "replbench %s: %v\n", s.name, err)
		return 1
	}
	rep.Command = "replbench " + s.name + " " + strings.Join(args, " ")
	if c.tls != nil { // its own result files, beside the plaintext ones
		rep.Scenario += "-tls"
		rep.Params["tls"] = "yes"
	}
	if err := rep.write(c, stdout); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

var topologies = []string{"direct", "chained", "proxy"}

// fanout: time until N fresh replicas are online and equal, and what it
// costs the origin.
func fanout(c *common, _ *flag.FlagSet) (*report, error) {
	rep := &report{Scenario: "fanout", Headline: "seconds to all in sync", Lower: true,
		Columns: []string{"seconds to all in sync", "origin forks", "origin CPU s (incl. probe)", "origin worst PING ms", "intermediate CPU s", "intermediate peak RSS MB"},
		Params:  map[string]string{"replicas": strconv.Itoa(c.replicas), "dataset": strconv.FormatInt(c.dataset>>20, 10) + "MB"}}
	for _, kind := range c.pick(topologies) {
		fmt.Fprintf(c.log, "fanout: %s\n", kind)
		rw := row{Label: kind, Values: map[string]float64{}}
		err := func() error {
			origin, err := c.benchOrigin("fanout-" + kind)
			if err != nil {
				return err
			}
			defer origin.Kill()
			ctx := context.Background()
			if err := loadgen.Fill(ctx, origin.Client(), c.dataset, 1000); err != nil {
				return err
			}
			forks0 := origin.InfoInt("stats", "total_forks")
			cpu0, _ := procStats(origin.PID())
			t, err := c.intermediate(kind, origin, "fanout")
			if err != nil {
				return err
			}
			defer t.close()
			probe := startProbe(origin)
			start := time.Now()
			if err := c.addReplicas(t, "fanout", c.replicas); err != nil {
				return err
			}
			if err := waitFor(20*time.Minute, func() bool { return converged(t) }); err != nil {
				return err
			}
			rw.Values["seconds to all in sync"] = time.Since(start).Seconds()
			worst := probe.stop()
			cpu1, _ := procStats(origin.PID())
			rw.Values["origin forks"] = float64(origin.InfoInt("stats", "total_forks") - forks0)
			rw.Values["origin CPU s (incl. probe)"] = cpu1 - cpu0
			rw.Values["origin worst PING ms"] = float64(worst.Microseconds()) / 1000
			if pid := t.midPID(); pid != 0 {
				cpu, rss := procStats(pid)
				rw.Values["intermediate CPU s"] = cpu
				rw.Values["intermediate peak RSS MB"] = float64(rss >> 20)
			}
			return nil
		}()
		if err != nil {
			rw.Error = err.Error()
		}
		rep.Rows = append(rep.Rows, rw)
	}
	rep.Notes = append(rep.Notes, "Origin forks and CPU include the intermediate's own initial sync. The origin runs Redis' default repl-diskless-sync-delay of 5 s, so direct replicas arriving together share a fork; the clock starts when the replicas start, after the intermediate is synced.")
	return rep, nil
}

// probe issues PING every millisecond and keeps the worst latency.
type probe struct {
	stopc chan struct{}
	done  chan time.Duration
}

func startProbe(s *redistest.Server) *probe {
	p := &probe{stopc: make(chan struct{}), done: make(chan time.Duration, 1)}
	cli := redis.NewClient(&redis.Options{Addr: s.Addr(), PoolSize: 1, ReadTimeout: 30 * time.Second, TLSConfig: tlsOf.clientConfig()})
	go func() {
		defer cli.Close()
		var worst time.Duration
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stopc:
				p.done <- worst
				return
			case <-t.C:
			}
			t0 := time.Now()
			_ = cli.Ping(context.Background()).Err()
			worst = max(worst, time.Since(t0))
		}
	}()
	return p
}

func (p *probe) stop() time.Duration {
	close(p.stopc)
	return <-p.done
}

// relay: replication lag end to end, from a marker write on the origin to
// the keyspace event it raises on each replica.
func relay(c *common, fs *flag.FlagSet) (*report, error) {
	rep := &report{Scenario: "relay", Headline: "lag p99 ms", Lower: true,
		Columns: []string{"writes/s", "lag p50 ms", "lag p99 ms", "lag max ms", "MB relayed", "intermediate CPU s per GB", "intermediate peak RSS MB"},
		Params:  map[string]string{"replicas": strconv.Itoa(c.replicas), "duration": c.duration.String(), "rate": strconv.Itoa(c.rate)}}
	freeze, _ := time.ParseDuration(fs.Lookup("freeze").Value.String())
	if freeze > 0 {
		if c.replicas < 2 || c.duration < freeze+4*time.Second {
			return nil, fmt.Errorf("--freeze %v needs 2 or more replicas and a --duration of at least %v", freeze, freeze+4*time.Second)
		}
		rep.Params["freeze"] = freeze.String()
		rep.Columns = append(rep.Columns, "intermediate RSS growth over the freeze MB", "frozen replica caught up s")
		rep.Notes = append(rep.Notes, fmt.Sprintf("The last replica was stopped (SIGSTOP) for %v from 2s into the load; the lag figures are the other replicas'.", freeze))
	}
	for _, kind := range c.pick(topologies) {
		fmt.Fprintf(c.log, "relay: %s\n", kind)
		rw := row{Label: kind, Values: map[string]float64{}}
		if err := relayOne(c, kind, freeze, &rw); err != nil {
			rw.Error = err.Error()
		}
		rep.Rows = append(rep.Rows, rw)
	}
	rep.Notes = append(rep.Notes, "Lag is measured from just before a marker SET is sent to the origin until each replica publishes its keyspace event; the load is pipelined SETs of 100-byte values. Latency figures on a 2-core machine running origin, intermediate, replicas and the load include scheduling noise.")
	return rep, nil
}

func relayOne(c *common, kind string, freeze time.Duration, rw *row) error {
	origin, err := c.benchOrigin("relay-" + kind)
	if err != nil {
		return err
	}
	defer origin.Kill()
	t, err := c.intermediate(kind, origin, "relay")
	if err != nil {
		return err
	}
	defer t.close()
	if err := c.addReplicas(t, "relay", c.replicas, "--notify-keyspace-events", "K$"); err != nil {
		return err
	}
	if err := waitFor(2*time.Minute, func() bool { return converged(t) }); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Subscribers: the j-th event on a replica is the j-th marker.
	var sent sync.Map // marker index -> send time
	var mu sync.Mutex
	var lags []time.Duration
	var subs sync.WaitGroup
	watched, frozen := t.replicas, (*redistest.Server)(nil)
	if freeze > 0 {
		watched, frozen = t.replicas[:len(t.replicas)-1], t.replicas[len(t.replicas)-1]
	}
	for _, r := range watched {
		ps := r.Client().Subscribe(ctx, "__keyspace@0__:marker")
		if _, err := ps.Receive(ctx); err != nil {
			return err
		}
		subs.Go(func() {
			defer ps.Close()
			ch := ps.Channel()
			for j := 0; ; j++ {
				select {
				case <-ctx.Done():
					return
				case _, ok := <-ch:
					if !ok {
						return
					}
					now := time.Now()
					if v, ok := sent.Load(j); ok {
						mu.Lock()
						lags = append(lags, now.Sub(v.(time.Time)))
						mu.Unlock()
					}
				}
			}
		})
	}
	off0 := origin.InfoInt("replication", "master_repl_offset")
	cpu0 := 0.0
	if pid := t.midPID(); pid != 0 {
		cpu0, _ = procStats(pid)
	}
	var writes atomic.Int64
	loadCtx, stopLoad := context.WithTimeout(ctx, c.duration)
	var wg sync.WaitGroup // the load and the freeze, joined on every return
	defer func() { stopLoad(); wg.Wait() }()
	wg.Go(func() { steadyLoad(loadCtx, origin.Client(), c.rate, &writes) })
	var rssGrowth float64
	if frozen != nil {
		wg.Go(func() {
			select {
			case <-loadCtx.Done():
				return
			case <-time.After(2 * time.Second):
			}
			before := currentRSS(t.midPID())
			syscall.Kill(frozen.PID(), syscall.SIGSTOP)
			select {
			case <-loadCtx.Done():
			case <-time.After(freeze):
			}
			rssGrowth = float64(currentRSS(t.midPID())-before) / (1 << 20)
			syscall.Kill(frozen.PID(), syscall.SIGCONT)
		})
	}
	marker := redis.NewClient(&redis.Options{Addr: origin.Addr(), PoolSize: 1, TLSConfig: tlsOf.clientConfig()})
	defer marker.Close()
	tick := time.NewTicker(10 * time.Millisecond)
	markers := 0
	for loadCtx.Err() == nil {
		<-tick.C
		sent.Store(markers, time.Now())
		if err := marker.Set(ctx, "marker", markers, 0).Err(); err != nil {
			return err
		}
		markers++
	}
	tick.Stop()
	wg.Wait()
	elapsed := c.duration.Seconds()
	if err := waitFor(2*time.Minute, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lags) >= markers*len(watched)
	}); err != nil {
		return fmt.Errorf("markers seen %d of %d", len(lags), markers*len(watched))
	}
	if frozen != nil {
		thawed := time.Now()
		want := origin.InfoInt("replication", "master_repl_offset")
		if err := waitFor(2*time.Minute, func() bool { return frozen.InfoInt("replication", "slave_repl_offset") >= want }); err != nil {
			return fmt.Errorf("the frozen replica did not catch up: %w", err)
		}
		if t.midPID() != 0 {
			rw.Values["intermediate RSS growth over the freeze MB"] = rssGrowth
		}
		rw.Values["frozen replica caught up s"] = time.Since(thawed).Seconds()
	}
	cancel()
	bytes := origin.InfoInt("replication", "master_repl_offset") - off0
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	q := func(p float64) float64 { return float64(lags[int(p*float64(len(lags)-1))].Microseconds()) / 1000 }
	rw.Values["writes/s"] = float64(writes.Load()) / elapsed
	rw.Values["lag p50 ms"] = q(0.5)
	rw.Values["lag p99 ms"] = q(0.99)
	rw.Values["lag max ms"] = q(1)
	rw.Values["MB relayed"] = float64(bytes) / 1e6
	if pid := t.midPID(); pid != 0 {
		cpu, rss := procStats(pid)
		rw.Values["intermediate CPU s per GB"] = (cpu - cpu0) / (float64(bytes) / 1e9)
		rw.Values["intermediate peak RSS MB"] = float64(rss >> 20)
	}
	return nil
}

// steadyLoad writes pipelined SETs of 100-byte values at rate commands/s
// (0: as fast as the origin answers) until ctx ends.
func steadyLoad(ctx context.Context, cli *redis.Client, rate int, n *atomic.Int64) {
	val := strings.Repeat("v", 100)
	const batch = 100
	var tick <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Second * batch / time.Duration(rate))
		defer t.Stop()
		tick = t.C
	}
	for i := 0; ctx.Err() == nil; i++ {
		if tick != nil {
			select {
			case <-ctx.Done():
				return
			case <-tick:
			}
		}
		pipe := cli.Pipeline()
		for j := range batch {
			pipe.Set(ctx, "load:"+strconv.Itoa((i*batch+j)%100000), val, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return
		}
		n.Add(batch)
	}
}

// outage: one replica cut off for T seconds under load; which resync it
// gets and what it costs.
func outage(c *common, fs *flag.FlagSet) (*report, error) {
	var durations []time.Duration
	for _, s := range strings.Split(fs.Lookup("outages").Value.String(), ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("--outages: %w", err)
		}
		durations = append(durations, d)
	}
	bps, _ := strconv.ParseInt(fs.Lookup("write-rate-bytes").Value.String(), 10, 64)
	rep := &report{Scenario: "outage", Headline: "MB sent on reconnect", Lower: true,
		Columns: []string{"resync", "MB sent on reconnect", "seconds to converge", "MB missed"},
		Params:  map[string]string{"write_rate": strconv.FormatInt(bps>>20, 10) + "MB/s", "backlog": strconv.FormatInt(c.budget>>20, 10) + "MB", "dataset": strconv.FormatInt(c.dataset>>20, 10) + "MB"}}
	for _, kind := range c.pick([]string{"direct", "chained", "chained-sized", "proxy"}) {
		for _, d := range durations {
			fmt.Fprintf(c.log, "outage: %s %v\n", kind, d)
			rw := row{Label: fmt.Sprintf("%s, %v", kind, d), Values: map[string]float64{}, Text: map[string]string{}}
			if err := outageOne(c, kind, d, bps, &rw); err != nil {
				rw.Error = err.Error()
			}
			rep.Rows = append(rep.Rows, rw)
		}
	}
	rep.Notes = append(rep.Notes, fmt.Sprintf("direct and chained use Redis' default 1 MB backlog; chained-sized has a %d MB backlog like replproxy's budget. The replica's link is cut by a TCP proxy and refused for T seconds.", c.budget>>20))
	return rep, nil
}

func outageOne(c *common, kind string, d time.Duration, bps int64, rw *row) error {
	name := fmt.Sprintf("outage-%s-%d", kind, d.Milliseconds())
	t, err := c.filledTopology(name, kind)
	if err != nil {
		return err
	}
	defer t.close()
	origin, ctx := t.origin, context.Background()
	fp, err := faultproxy.New(t.attach)
	if err != nil {
		return err
	}
	defer fp.Close()
	direct := t.attach
	t.attach = fp.Addr()
	if err := c.addReplicas(t, name, 1); err != nil {
		return err
	}
	t.attach = direct
	if err := waitFor(5*time.Minute, func() bool { return converged(t) }); err != nil {
		return err
	}
	r := t.replicas[0]
	logBefore := readFile(r.Log)
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go byteRateLoad(loadCtx, origin.Client(), bps)
	time.Sleep(time.Second) // load runs before the cut; a workload phase, not synchronisation
	off0 := origin.InfoInt("replication", "master_repl_offset")
	fp.Refuse(true)
	fp.CutAll()
	time.Sleep(d) // the outage itself
	missed := origin.InfoInt("replication", "master_repl_offset") - off0
	sent0 := fp.Forwarded()
	fp.Refuse(false)
	start := time.Now()
	target := origin.InfoInt("replication", "master_repl_offset")
	if err := waitFor(5*time.Minute, func() bool {
		return r.InfoInt("replication", "master_repl_offset") >= target
	}); err != nil {
		return err
	}
	rw.Values["seconds to converge"] = time.Since(start).Seconds()
	rw.Values["MB sent on reconnect"] = float64(fp.Forwarded()-sent0) / 1e6
	rw.Values["MB missed"] = float64(missed) / 1e6
	after := strings.TrimPrefix(readFile(r.Log), logBefore)
	switch {
	case strings.Contains(after, "Full resync from master"):
		rw.Text["resync"] = "full"
	case strings.Contains(after, "Partial Resynchronization") || strings.Contains(after, "Successful partial resynchronization"):
		rw.Text["resync"] = "partial"
	default:
		rw.Text["resync"] = "?"
	}
	stopLoad()
	return waitFor(2*time.Minute, func() bool { return converged(t) })
}

// filledTopology starts an origin holding the dataset and the intermediate
// of kind, synced; closing the topology stops the origin too.
func (c *common) filledTopology(name, kind string) (*topology, error) {
	origin, err := c.benchOrigin(name)
	if err != nil {
		return nil, err
	}
	if err := loadgen.Fill(context.Background(), origin.Client(), c.dataset, 1000); err != nil {
		origin.Kill()
		return nil, err
	}
	t, err := c.intermediate(kind, origin, name)
	if err != nil {
		origin.Kill()
		return nil, err
	}
	t.ownsOrigin = true
	return t, nil
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }

// byteRateLoad writes about bps bytes a second as 1 KB SETs.
func byteRateLoad(ctx context.Context, cli *redis.Client, bps int64) {
	val := strings.Repeat("w", 1000)
	perTick := max(bps/1050/100, 1) // 100 ticks a second
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for i := int64(0); ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pipe := cli.Pipeline()
		for j := range perTick {
			pipe.Set(ctx, "w:"+strconv.FormatInt((i*perTick+j)%20000, 10), val, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return
		}
	}
}

// restart: the intermediate is SIGKILLed and restarted under load.
func restart(c *common, _ *flag.FlagSet) (*report, error) {
	rep := &report{Scenario: "restart", Headline: "downstream full syncs", Lower: true,
		Columns: []string{"downstream full syncs", "upstream full syncs", "seconds to converge"},
		Params:  map[string]string{"replicas": strconv.Itoa(c.replicas), "dataset": strconv.FormatInt(c.dataset>>20, 10) + "MB"}}
	for _, kind := range c.pick([]string{"chained", "proxy"}) {
		fmt.Fprintf(c.log, "restart: %s\n", kind)
		rw := row{Label: kind, Values: map[string]float64{}}
		if err := restartOne(c, kind, &rw); err != nil {
			rw.Error = err.Error()
		}
		rep.Rows = append(rep.Rows, rw)
	}
	rep.Notes = append(rep.Notes, "The chained replica runs without persistence (as the origin does here), so after SIGKILL it restarts empty; direct replication has no intermediate and is left out.")
	return rep, nil
}

func restartOne(c *common, kind string, rw *row) error {
	name := "restart-" + kind
	t, err := c.filledTopology(name, kind)
	if err != nil {
		return err
	}
	defer t.close()
	origin, ctx := t.origin, context.Background()
	if err := c.addReplicas(t, name, c.replicas); err != nil {
		return err
	}
	if err := waitFor(5*time.Minute, func() bool { return converged(t) }); err != nil {
		return err
	}
	fullUp0 := origin.InfoInt("stats", "sync_full")
	logs0 := make([]string, len(t.replicas))
	for i, r := range t.replicas {
		logs0[i] = readFile(r.Log)
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	var sent loadgen.Counter
	go func() { _ = loadgen.Mixed(loadCtx, origin.Client(), 200, 7, &sent) }()
	time.Sleep(c.duration / 2) // load before the kill: a workload phase
	start := time.Now()
	switch kind {
	case "proxy":
		t.proxy.kill()
		if err := t.proxy.start(); err != nil {
			stopLoad()
			return err
		}
	case "chained":
		if err := t.mid.Restart(); err != nil {
			stopLoad()
			return err
		}
	}
	time.Sleep(c.duration / 2)
	stopLoad()
	if err := waitFor(10*time.Minute, func() bool { return converged(t) }); err != nil {
		return err
	}
	rw.Values["seconds to converge"] = time.Since(start).Seconds()
	rw.Values["upstream full syncs"] = float64(origin.InfoInt("stats", "sync_full") - fullUp0)
	full := 0
	for i, r := range t.replicas {
		full += strings.Count(strings.TrimPrefix(readFile(r.Log), logs0[i]), "Full resync from master")
	}
	rw.Values["downstream full syncs"] = float64(full)
	return nil
}
