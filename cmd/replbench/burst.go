package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/config"
)

// burst: a bulk load at the origin's full speed, with Redis' default
// client-output-buffer-limit for replicas (256mb 64mb 60), taken by a
// chained replica and by replproxy side by side. An intermediate slower
// than the origin's writes for long enough is cut by the origin and must
// full-sync again: a fork on the origin, and another cut if the burst
// goes on.
func burst(c *common, fs *flag.FlagSet) (*report, error) {
	if c.tls != nil {
		return nil, errors.New("burst: --tls is not supported (redis-benchmark loads the origin in plaintext)")
	}
	if _, err := exec.LookPath("redis-benchmark"); err != nil {
		return nil, errors.New("burst: redis-benchmark not found (it comes with Debian's redis-tools, a dependency of redis-server)")
	}
	specs, err := parseBursts(fs.Lookup("bursts").Value.String())
	if err != nil {
		return nil, err
	}
	rep := &report{Scenario: "burst", Headline: "intake MB/s", Lower: false,
		Columns: []string{"intake MB/s", "origin MB/s", "output-buffer cuts", "origin forks", "peak RSS MB", "seconds"},
		Params:  map[string]string{"replicas": strconv.Itoa(c.replicas), "backlog": strconv.FormatInt(c.budget>>20, 10) + "MB"}}

	// The machine row first; its file stays until the run ends, so the
	// intermediates get none of its pages.
	rw := row{Label: "new page-cache pages (machine)", Values: map[string]float64{}}
	page := bytes.Repeat([]byte{'p'}, readChunk)
	const pageBytes = 1 << 30
	if secs, err := writeNewFile(c.dir("burst", "pages"), pageBytes, func(int64) []byte { return page }); err != nil {
		rw.Error = err.Error()
	} else {
		rw.Values["intake MB/s"] = pageBytes / secs / 1e6
		rw.Values["seconds"] = secs
	}
	rep.Rows = append(rep.Rows, rw)

	for _, sp := range specs {
		for _, kind := range c.pick([]string{"chained", "proxy"}) {
			fmt.Fprintf(c.log, "burst: %s %s\n", sp, kind)
			rw := row{Label: sp.String() + " " + kind, Values: map[string]float64{}}
			if err := burstOne(c, sp, kind, &rw); err != nil {
				rw.Error = err.Error()
			}
			rep.Rows = append(rep.Rows, rw)
		}
	}
	rep.Notes = append(rep.Notes,
		"redis-benchmark -t set -d VALUE -n COUNT -r 1000 -P 16 -c 4 on the origin, which keeps Redis' default client-output-buffer-limit replica 256mb 64mb 60; one stock replica behind the intermediate.",
		"intake MB/s: the burst's stream bytes over the time from its start until the intermediate's offset reached the origin's; origin MB/s: the same bytes over redis-benchmark's own time. Cuts: the origin's log lines for replicas closed over their output buffer limit. Forks: the origin's, during the burst and until every replica had the origin's digest. Peak RSS: the intermediate's.",
		"new page-cache pages: 1 GB written once to a new file in 256 KB writes, without fsync, kept until the run ends: what a write into memory the machine has not just freed costs here.")
	return rep, nil
}

type burstSpec struct{ total, value int64 }

func (b burstSpec) String() string {
	return sizeLabel(b.total) + " of " + sizeLabel(b.value) + " values"
}

func sizeLabel(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + " GB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KB"
	}
	return strconv.FormatInt(n, 10) + " B"
}

// parseBursts reads "1gb:100kb,2gb:1kb": total stream size and value
// size of each burst.
func parseBursts(s string) ([]burstSpec, error) {
	var out []burstSpec
	for _, part := range strings.Split(s, ",") {
		total, value, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			return nil, fmt.Errorf("--bursts %q: want TOTAL:VALUE, e.g. 4gb:100kb", part)
		}
		t, err := config.ParseSize(total)
		if err != nil {
			return nil, fmt.Errorf("--bursts %q: %w", part, err)
		}
		v, err := config.ParseSize(value)
		if err != nil || v < 1 || t < v {
			return nil, fmt.Errorf("--bursts %q: want a value size of at least 1 byte and at most the total", part)
		}
		out = append(out, burstSpec{t, v})
	}
	return out, nil
}

func burstOne(c *common, sp burstSpec, kind string, rw *row) error {
	name := "burst-" + strconv.FormatInt(sp.total>>20, 10) + "-" + strconv.FormatInt(sp.value, 10) + "-" + kind
	origin, err := c.benchOrigin(name)
	if err != nil {
		return err
	}
	defer origin.Kill()
	t, err := c.intermediate(kind, origin, name)
	if err != nil {
		return err
	}
	defer t.close()
	if err := c.addReplicas(t, name, c.replicas); err != nil {
		return err
	}
	if err := waitFor(2*time.Minute, func() bool { return converged(t) }); err != nil {
		return fmt.Errorf("replicas before the burst: %w", err)
	}
	forks0 := origin.InfoInt("stats", "total_forks")
	off0 := origin.InfoInt("replication", "master_repl_offset")
	// redis-benchmark's SET is about 60 bytes of protocol around the value.
	n := sp.total / (sp.value + 60)
	start := time.Now()
	out, err := exec.Command("redis-benchmark", "-h", "127.0.0.1", "-p", strconv.Itoa(origin.Port), "-t", "set",
		"-d", strconv.FormatInt(sp.value, 10), "-n", strconv.FormatInt(n, 10), "-r", "1000", "-P", "16", "-c", "4", "-q").CombinedOutput()
	if err != nil {
		return fmt.Errorf("redis-benchmark: %v: %s", err, out)
	}
	benchSecs := time.Since(start).Seconds()
	off1 := origin.InfoInt("replication", "master_repl_offset")
	if err := waitFor(10*time.Minute, func() bool { return midOffset(t) >= off1 }); err != nil {
		return fmt.Errorf("intermediate catching up: %w", err)
	}
	secs := time.Since(start).Seconds()
	var rss int64
	if pid := t.midPID(); pid != 0 {
		_, rss = procStats(pid)
	}
	if err := waitFor(10*time.Minute, func() bool { return converged(t) }); err != nil {
		return fmt.Errorf("replicas after the burst: %w", err)
	}
	stream := float64(off1 - off0)
	rw.Values["intake MB/s"] = stream / secs / 1e6
	rw.Values["origin MB/s"] = stream / benchSecs / 1e6
	rw.Values["output-buffer cuts"] = float64(countLines(origin.Log, "overcoming of output buffer limits"))
	rw.Values["origin forks"] = float64(origin.InfoInt("stats", "total_forks") - forks0)
	rw.Values["peak RSS MB"] = float64(rss >> 20)
	rw.Values["seconds"] = secs
	return nil
}

// midOffset is the intermediate's replication offset, -1 if unknown.
func midOffset(t *topology) int64 {
	var m map[string]string
	var err error
	if t.proxy != nil {
		m, err = infoOf(t.proxy.addr, "replication")
	} else {
		m, err = t.mid.Info("replication")
	}
	if err != nil {
		return -1
	}
	off, err := strconv.ParseInt(m["master_repl_offset"], 10, 64)
	if err != nil {
		return -1
	}
	return off
}

func countLines(path, sub string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), sub)
}
