package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"time"

	"github.com/replproxy/replproxy/internal/config"
	"github.com/replproxy/replproxy/internal/loadgen"
)

// churn: a sustained write load at a fixed byte rate for a fixed time,
// replicas joining and restarting at intervals, and what it costs the
// origin: forks, CPU, its worst latency, bytes it sent. A proxy whose
// snapshot refreshes come from its replicas should cost the origin one
// fork, whatever the load and the churn.
func churn(c *common, fs *flag.FlagSet) (*report, error) {
	rate, _ := config.ParseSize(fs.Lookup("write-rate").Value.String())
	every, _ := time.ParseDuration(fs.Lookup("churn-every").Value.String())
	rep := &report{Scenario: "churn", Headline: "origin forks", Lower: true,
		Columns: []string{"origin forks", "origin CPU s (incl. probe)", "origin worst PING ms", "origin MB sent", "replica joins and restarts", "proxy refreshes from replicas"},
		Params: map[string]string{"replicas": strconv.Itoa(c.replicas), "dataset": strconv.FormatInt(c.dataset>>20, 10) + "MB",
			"write rate": strconv.FormatInt(rate>>20, 10) + "MB/s", "duration": c.duration.String(), "churn every": every.String(),
			"proxy backlog budget": strconv.FormatInt(c.budget>>20, 10) + "MB"}}
	rep.Notes = append(rep.Notes, "Each churn step restarts one replica (no persistence: it returns empty and needs a full sync) and adds one new replica. The chained intermediate gets --backlog-size as its repl-backlog-size, the proxy as its backlog budget; the proxy refreshes its snapshot from its replicas (the default --snapshot-refresh-from replicas,upstream).")
	for _, kind := range c.pick([]string{"direct", "chained-sized", "proxy"}) {
		fmt.Fprintf(c.log, "churn: %s\n", kind)
		rw := row{Label: kind, Values: map[string]float64{}}
		if err := churnOne(c, kind, rate, every, &rw); err != nil {
			rw.Error = err.Error()
		}
		rep.Rows = append(rep.Rows, rw)
	}
	return rep, nil
}

func churnOne(c *common, kind string, rate int64, every time.Duration, rw *row) error {
	origin, err := c.benchOrigin("churn-" + kind)
	if err != nil {
		return err
	}
	defer origin.Kill()
	ctx := context.Background()
	if err := loadgen.Fill(ctx, origin.Client(), c.dataset, 1000); err != nil {
		return err
	}
	t, err := c.intermediate(kind, origin, "churn")
	if err != nil {
		return err
	}
	defer t.close()
	if err := c.addReplicas(t, "churn", c.replicas); err != nil {
		return err
	}
	if err := waitFor(10*time.Minute, func() bool { return converged(t) }); err != nil {
		return err
	}
	forks0 := origin.InfoInt("stats", "total_forks")
	sent0 := origin.InfoInt("stats", "total_net_output_bytes")
	cpu0, _ := procStats(origin.PID())
	probe := startProbe(origin)
	lctx, stop := context.WithTimeout(ctx, c.duration)
	defer stop()
	loaded := make(chan struct{})
	go func() { byteRateLoad(lctx, origin.Client(), rate); close(loaded) }()
	steps := 0
	tick := time.NewTicker(every)
churning:
	for {
		select {
		case <-lctx.Done():
			break churning
		case <-tick.C:
		}
		// Restart one replica from scratch and add one.
		// (no persistence: it comes back empty and needs a full sync).
		if err := t.replicas[steps%len(t.replicas)].Restart(); err != nil {
			tick.Stop()
			return err
		}
		if err := c.addReplicas(t, "churn-join"+strconv.Itoa(steps), 1); err != nil {
			tick.Stop()
			return err
		}
		steps += 2
	}
	tick.Stop()
	<-loaded
	if err := waitFor(10*time.Minute, func() bool { return converged(t) }); err != nil {
		return err
	}
	worst := probe.stop()
	cpu1, _ := procStats(origin.PID())
	rw.Values["origin forks"] = float64(origin.InfoInt("stats", "total_forks") - forks0)
	rw.Values["origin CPU s (incl. probe)"] = cpu1 - cpu0
	rw.Values["origin worst PING ms"] = float64(worst.Microseconds()) / 1000
	rw.Values["origin MB sent"] = float64(origin.InfoInt("stats", "total_net_output_bytes")-sent0) / (1 << 20)
	rw.Values["replica joins and restarts"] = float64(steps)
	if t.proxy != nil {
		if m, err := infoOf(t.proxy.addr, "replproxy"); err == nil {
			var ok, failed int64
			_, _ = fmt.Sscanf(m["snapshot_refreshes_from_replica"], "ok=%d,failed=%d", &ok, &failed)
			rw.Values["proxy refreshes from replicas"] = float64(ok)
		}
	}
	return nil
}
