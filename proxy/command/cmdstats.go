package command

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tidwall/resp"
)

// commandStats backs INFO's Commandstats, Latencystats and Errorstats and
// LATENCY HISTOGRAM, in Redis' formats. Commands here are administrative
// (a few per second at most), so one mutex is enough.
type commandStats struct {
	mu     sync.Mutex
	cmds   map[string]*cmdStat
	errors map[string]int64 // by error code: the reply's first word
	// errorsDisabled: Redis stops tracking new codes after 128, so a client
	// cannot grow the table without bound.
	errorsDisabled bool
	totalErrors    int64
}

// latencyBuckets: bucket i counts calls of at most 2^i µs (the last one
// everything longer), the powers of two Redis' LATENCY HISTOGRAM reports.
const latencyBuckets = 40

type cmdStat struct {
	calls, usec, rejected, failed int64
	hist                          [latencyBuckets]int64
}

const maxErrorCodes = 128

func newCommandStats() *commandStats {
	return &commandStats{cmds: map[string]*cmdStat{}, errors: map[string]int64{}}
}

// record counts one call of name (a command or "command|subcommand").
func (c *commandStats) record(name string, d time.Duration, rejected, failed bool) {
	usec := max(d.Microseconds(), 0)
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.cmds[name]
	if st == nil {
		st = &cmdStat{}
		c.cmds[name] = st
	}
	if rejected {
		st.rejected++
		return // as Redis: a rejected call is neither a call nor timed
	}
	st.calls++
	st.usec += usec
	if failed {
		st.failed++
	}
	b := 0
	if usec > 1 {
		b = bits.Len64(uint64(usec - 1)) // the smallest i with usec <= 2^i
	}
	st.hist[min(b, latencyBuckets-1)]++
}

// recordError counts one error reply by its code.
func (c *commandStats) recordError(msg string) {
	code, _, _ := strings.Cut(msg, " ")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.totalErrors++
	if _, ok := c.errors[code]; !ok && len(c.errors) >= maxErrorCodes {
		c.errorsDisabled = true
		return
	}
	c.errors[code]++
}

func (c *commandStats) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cmds, c.errors, c.errorsDisabled, c.totalErrors = map[string]*cmdStat{}, map[string]int64{}, false, 0
}

func (c *commandStats) errorTotal() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.totalErrors
}

// sortedNames lists the commands with an entry; the caller holds mu.
func (c *commandStats) sortedNames() []string {
	names := make([]string, 0, len(c.cmds))
	for n := range c.cmds {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// commandstats renders INFO's Commandstats lines.
func (c *commandStats) commandstats() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, n := range c.sortedNames() {
		st := c.cmds[n]
		perCall := 0.0
		if st.calls > 0 {
			perCall = float64(st.usec) / float64(st.calls)
		}
		out = append(out, fmt.Sprintf("cmdstat_%s:calls=%d,usec=%d,usec_per_call=%.2f,rejected_calls=%d,failed_calls=%d",
			n, st.calls, st.usec, perCall, st.rejected, st.failed))
	}
	return out
}

// latencystats renders INFO's Latencystats lines: p50, p99 and p99.9 as
// the upper bound of the bucket holding them.
func (c *commandStats) latencystats() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, n := range c.sortedNames() {
		st := c.cmds[n]
		if st.calls == 0 {
			continue
		}
		var ps []string
		for _, q := range []struct {
			name string
			frac float64
		}{{"p50", 0.50}, {"p99", 0.99}, {"p99.9", 0.999}} {
			ps = append(ps, fmt.Sprintf("%s=%.3f", q.name, float64(st.percentile(q.frac))))
		}
		out = append(out, "latency_percentiles_usec_"+n+":"+strings.Join(ps, ","))
	}
	return out
}

// percentile is the upper bound (µs) of the bucket holding fraction q of
// the calls.
func (st *cmdStat) percentile(q float64) int64 {
	want := max(int64(math.Ceil(q*float64(st.calls))), 1)
	var seen int64
	for i, n := range st.hist {
		if seen += n; seen >= want {
			return 1 << i
		}
	}
	return 1 << (latencyBuckets - 1)
}

// errorstats renders INFO's Errorstats lines.
func (c *commandStats) errorstats() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	codes := make([]string, 0, len(c.errors))
	for code := range c.errors {
		codes = append(codes, code)
	}
	slices.Sort(codes)
	var out []string
	for _, code := range codes {
		out = append(out, fmt.Sprintf("errorstat_%s:count=%d", code, c.errors[code]))
	}
	if c.errorsDisabled {
		out = append(out, "errorstat_ERRORSTATS_DISABLED:count=1")
	}
	return out
}

// histogram answers LATENCY HISTOGRAM [command ...]: per command its calls
// and the cumulative count at each power-of-two bucket, as Redis 7 does.
func (c *commandStats) histogram(filter []string) resp.Value {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []resp.Value
	for _, n := range c.sortedNames() {
		st := c.cmds[n]
		if st.calls == 0 || len(filter) > 0 && !slices.Contains(filter, n) {
			continue
		}
		var buckets []resp.Value
		var cum int64
		for i, v := range st.hist {
			cum += v
			if cum == 0 {
				continue
			}
			buckets = append(buckets, resp.IntegerValue(1<<i), resp.IntegerValue(int(cum)))
			if cum == st.calls {
				break
			}
		}
		out = append(out, resp.StringValue(n), resp.ArrayValue([]resp.Value{
			resp.StringValue("calls"), resp.IntegerValue(int(st.calls)),
			resp.StringValue("histogram_usec"), resp.ArrayValue(buckets),
		}))
	}
	return resp.ArrayValue(out)
}

// subcommands names the subcommands counted apart, as Redis 7 counts
// "client|list" apart from "client|kill".
var subcommands = map[string][]string{
	"client":    {"getname", "id", "info", "kill", "list", "setinfo", "setname"},
	"command":   {"count", "docs", "info", "list"},
	"config":    {"get", "resetstat", "rewrite", "set"},
	"latency":   {"doctor", "histogram", "history", "latest", "reset"},
	"slowlog":   {"get", "len", "reset"},
	"replproxy": {"guard"},
}

// statName is the name a call is counted under: "" for a command the
// proxy does not know (Redis keeps no stats for those either).
func statName(cmd string, args [][]byte) string {
	if !slices.Contains(SupportedCommands, cmd) {
		return ""
	}
	if subs, ok := subcommands[cmd]; ok && len(args) >= 2 {
		if sub := strings.ToLower(string(args[1])); slices.Contains(subs, sub) {
			return cmd + "|" + sub
		}
	}
	return cmd
}
