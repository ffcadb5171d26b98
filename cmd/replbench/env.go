package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/replproxy/replproxy/internal/config"
	"github.com/replproxy/replproxy/internal/redistest"
)

// common are the flags every scenario takes.
type common struct {
	replicas int
	dataset  int64
	duration time.Duration
	rate     int
	out      string
	proxyBin string
	budget   int64
	work     string
	log      io.Writer
	delay    int
	topos    string
	useTLS   bool
	extra    []string  // more replproxy flags (--proxy-args)
	tls      *benchTLS // set by setup in a --tls run; read-only after
}

// tlsOf is the TLS material of a --tls run; nil otherwise.
var tlsOf *benchTLS

func (c *common) register(fs *flag.FlagSet, replicas int, dataset string, duration time.Duration) {
	fs.IntVar(&c.replicas, "replicas", replicas, "replicas behind the intermediate")
	fs.Func("dataset", "dataset size, e.g. 8mb, 1gb (default "+dataset+")", func(s string) error {
		n, err := config.ParseSize(s)
		c.dataset = n
		return err
	})
	c.dataset, _ = config.ParseSize(dataset)
	c.budget = 256 << 20
	fs.Func("backlog-size", "replproxy's backlog budget, and the sized chained replica's backlog (default 256mb)", func(s string) error {
		n, err := config.ParseSize(s)
		c.budget = n
		return err
	})
	fs.DurationVar(&c.duration, "duration", duration, "how long load runs")
	fs.IntVar(&c.rate, "rate", 0, "write rate in commands/s (0: as fast as the origin takes them)")
	fs.StringVar(&c.out, "out", "out/bench", "directory for the markdown, JSON and SVG results")
	fs.StringVar(&c.topos, "topologies", "", "comma-separated topologies to run (default: all the scenario has)")
	fs.IntVar(&c.delay, "origin-diskless-delay", 5, "origins' repl-diskless-sync-delay in seconds (Redis' default is 5)")
	fs.Func("proxy-args", "more replproxy flags, space-separated (e.g. \"--tail-buffer 0\")", func(s string) error {
		c.extra = strings.Fields(s)
		return nil
	})
	fs.BoolVar(&c.useTLS, "tls", false, "every replication link over TLS with client certificates (origin, chained replica, replproxy both sides, replicas)")
	fs.StringVar(&c.proxyBin, "replproxy", "", "replproxy binary (default: bin/replproxy next to replbench, else built)")
}

func (c *common) setup() error {
	if err := redistest.Available(); err != nil {
		return err
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "replbench-")
	if err != nil {
		return err
	}
	c.work = work
	if c.useTLS {
		if c.tls, err = newBenchTLS(work); err != nil {
			return err
		}
	}
	tlsOf = c.tls // before any goroutine dials; one scenario runs at a time
	if c.proxyBin == "" {
		if exe, err := os.Executable(); err == nil {
			if p := filepath.Join(filepath.Dir(exe), "replproxy"); fileExists(p) {
				c.proxyBin = p
			}
		}
	}
	if c.proxyBin == "" {
		fmt.Fprintln(c.log, "building replproxy...")
		if c.proxyBin, err = redistest.BuildProxy(work, false); err != nil {
			return err
		}
	}
	return nil
}

func (c *common) cleanup() { os.RemoveAll(c.work) }

// pick filters a scenario's topologies by --topologies.
func (c *common) pick(all []string) []string {
	if c.topos == "" {
		return all
	}
	var out []string
	for _, k := range all {
		for _, w := range strings.Split(c.topos, ",") {
			if strings.TrimSpace(w) == k {
				out = append(out, k)
			}
		}
	}
	return out
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func (c *common) dir(parts ...string) string {
	return filepath.Join(append([]string{c.work}, parts...)...)
}

// benchOrigin starts an origin with Redis' own replication defaults (the
// test harness shortens the diskless delay; benchmarks must not).
func (c *common) benchOrigin(name string, extra ...string) (*redistest.Server, error) {
	return redistest.StartTLS(c.dir(name, "origin"), c.tls.redis(), append([]string{"--repl-diskless-sync-delay", strconv.Itoa(c.delay)}, extra...)...)
}

// procStats reads CPU seconds (user+system) and peak RSS of a process.
func procStats(pid int) (cpu float64, peakRSS int64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(fields) > 13 {
			ut, _ := strconv.ParseFloat(fields[11], 64)
			st, _ := strconv.ParseFloat(fields[12], 64)
			cpu = (ut + st) / 100 // USER_HZ
		}
	}
	return cpu, procStatusBytes(pid, "VmHWM")
}

// currentRSS reads a process's resident set now (VmRSS), 0 if unknown.
func currentRSS(pid int) int64 { return procStatusBytes(pid, "VmRSS") }

// procStatusBytes reads a "kB" field of /proc/PID/status, in bytes; 0 if
// unknown.
func procStatusBytes(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// proxyProc is replproxy run as its own process.
type proxyProc struct {
	*redistest.Process
	addr string
	args []string
	bin  string
	logf string
}

func startProxyProc(bin, upstream, dataDir, logPath string, budget int64, extra ...string) (*proxyProc, error) {
	port, err := redistest.FreePort()
	if err != nil {
		return nil, err
	}
	p := &proxyProc{bin: bin, logf: logPath, addr: "127.0.0.1:" + strconv.Itoa(port),
		args: []string{"--upstream", upstream, "--listen", "127.0.0.1:" + strconv.Itoa(port), "--data-dir", dataDir,
			"--backlog-size", strconv.FormatInt(budget, 10), "--metrics-listen", os.Getenv("REPLBENCH_PROXY_METRICS"), "--log-format", "text"}}
	if tlsOf != nil {
		p.args = append(p.args, tlsOf.proxyArgs(p.addr)...)
	}
	p.args = append(p.args, extra...)
	if os.Getenv("REPLBENCH_PROXY_METRICS") != "" {
		p.args = append(p.args, "--pprof")
	}
	return p, p.start()
}

func (p *proxyProc) start() error {
	proc, err := redistest.StartProcess(p.bin, p.logf, p.args...)
	if err != nil {
		return err
	}
	p.Process = proc
	return waitFor(10*time.Second, func() bool {
		c, err := tlsOf.dial(p.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func (p *proxyProc) kill() { p.Kill() }

// topology is origin -> [intermediate] -> replicas.
type topology struct {
	kind     string // direct, chained, chained-sized, proxy
	origin   *redistest.Server
	mid      *redistest.Server
	proxy    *proxyProc
	replicas []*redistest.Server
	attach   string // where replicas connect
	// ownsOrigin: close stops the origin too.
	ownsOrigin bool
}

func (t *topology) midPID() int {
	switch {
	case t.proxy != nil:
		return t.proxy.PID()
	case t.mid != nil:
		return t.mid.PID()
	}
	return 0
}

func (t *topology) close() {
	for _, r := range t.replicas {
		r.Kill()
	}
	if t.proxy != nil {
		t.proxy.kill()
	}
	if t.mid != nil {
		t.mid.Kill()
	}
	if t.ownsOrigin {
		t.origin.Kill()
	}
}

// intermediate starts the middle of the topology and waits until it has
// synced with the origin.
func (c *common) intermediate(kind string, origin *redistest.Server, name string) (*topology, error) {
	t := &topology{kind: kind, origin: origin, attach: origin.Addr()}
	cleanup := func() {
		if t.mid != nil {
			t.mid.Kill()
		}
		if t.proxy != nil {
			t.proxy.kill()
		}
	}
	host, port, _ := net.SplitHostPort(origin.Addr())
	switch kind {
	case "direct":
		return t, nil
	case "chained", "chained-sized":
		args := []string{"--replicaof", host, port, "--repl-diskless-sync-delay", strconv.Itoa(c.delay)}
		if kind == "chained-sized" {
			args = append(args, "--repl-backlog-size", strconv.FormatInt(c.budget, 10))
		}
		mid, err := redistest.StartTLS(c.dir(name, kind, "mid"), c.tls.redis(), args...)
		if err != nil {
			return nil, err
		}
		t.mid, t.attach = mid, mid.Addr()
		if err = waitFor(10*time.Minute, func() bool {
			m, err := mid.Info("replication")
			return err == nil && m["master_link_status"] == "up"
		}); err != nil {
			cleanup()
			return nil, err
		}
		return t, nil
	case "proxy":
		p, err := startProxyProc(c.proxyBin, origin.Addr(), c.dir(name, kind, "data"), c.dir(name, kind, "replproxy.log"), c.budget, c.extra...)
		if err != nil {
			return nil, err
		}
		t.proxy, t.attach = p, p.addr
		if err = waitFor(10*time.Minute, func() bool {
			m, err := infoOf(p.addr, "replication")
			return err == nil && m["master_link_status"] == "up"
		}); err != nil {
			cleanup()
			return nil, err
		}
		return t, nil
	}
	return nil, fmt.Errorf("unknown topology %q", kind)
}

// addReplicas starts n replicas of t.attach at once.
func (c *common) addReplicas(t *topology, name string, n int, extra ...string) error {
	host, port, _ := net.SplitHostPort(t.attach)
	reps := make([]*redistest.Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			reps[i], errs[i] = redistest.StartTLS(c.dir(name, t.kind, "replica"+strconv.Itoa(i)), c.tls.redis(),
				append([]string{"--replicaof", host, port}, extra...)...)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return err
		}
		t.replicas = append(t.replicas, reps[i])
	}
	return nil
}

func infoOf(addr, section string) (map[string]string, error) {
	conn, err := tlsOf.dial(addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "INFO %s\r\n", section)
	var hdr string
	if _, err := fmt.Fscanln(conn, &hdr); err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(hdr), "$"))
	if err != nil {
		return nil, fmt.Errorf("INFO reply %q", hdr)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(conn, body); err != nil {
		return nil, err
	}
	return redistest.ParseInfo(string(body)), nil
}

// converged: every replica is linked at the origin's offset, then has the
// origin's digest. Offsets are checked first and in one quick pass (the
// origin's PINGs move them every 10 s); digests, which PINGs do not change
// and which take seconds on large datasets, only after.
func converged(t *topology) bool {
	off := t.origin.InfoInt("replication", "master_repl_offset")
	for _, r := range t.replicas {
		m, err := r.Info("replication")
		if err != nil || m["master_link_status"] != "up" || m["master_repl_offset"] != strconv.FormatInt(off, 10) {
			return false
		}
	}
	if t.origin.InfoInt("replication", "master_repl_offset") != off {
		return false
	}
	want, err := t.origin.Digest()
	if err != nil {
		return false
	}
	for _, r := range t.replicas {
		if d, err := r.Digest(); err != nil || d != want {
			return false
		}
	}
	return true
}

func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not reached within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// report is one scenario's results: a row per topology (or per parameter).
type report struct {
	Scenario string            `json:"scenario"`
	Command  string            `json:"command"`
	Columns  []string          `json:"columns"`
	Rows     []row             `json:"rows"`
	Headline string            `json:"headline"` // the column the chart shows
	Lower    bool              `json:"lower_is_better"`
	Notes    []string          `json:"notes,omitempty"`
	Params   map[string]string `json:"params"`
}

type row struct {
	Label  string             `json:"label"`
	Values map[string]float64 `json:"values"`
	Text   map[string]string  `json:"text,omitempty"`
	Error  string             `json:"error,omitempty"`
}

// ratioCol adds "proxy/<baseline>" ratios for a column.
func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "### %s\n\n`%s`\n\n", r.Scenario, r.Command)
	keys := make([]string, 0, len(r.Params))
	for k := range r.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s ", k, r.Params[k])
	}
	b.WriteString("\n\n| topology | " + strings.Join(r.Columns, " | ") + " |\n|---|" + strings.Repeat("---|", len(r.Columns)) + "\n")
	// Each row is compared with the proxy row of the same parameters (the
	// label's part after a comma, as in "direct, 5s").
	proxyFor := func(label string) *row {
		_, param, _ := strings.Cut(label, ",")
		for i := range r.Rows {
			_, p, _ := strings.Cut(r.Rows[i].Label, ",")
			if strings.HasPrefix(r.Rows[i].Label, "proxy") && p == param && r.Rows[i].Error == "" {
				return &r.Rows[i]
			}
		}
		return nil
	}
	for _, rw := range r.Rows {
		proxyRow := proxyFor(rw.Label)
		b.WriteString("| " + rw.Label + " |")
		for _, c := range r.Columns {
			switch {
			case rw.Error != "":
				b.WriteString(" — |")
			case rw.Text[c] != "":
				b.WriteString(" " + rw.Text[c] + " |")
			default:
				v, ok := rw.Values[c]
				if !ok {
					b.WriteString(" n/a |")
					continue
				}
				cell := fmtNum(v)
				if proxyRow != nil && !strings.HasPrefix(rw.Label, "proxy") {
					if pv, ok := proxyRow.Values[c]; ok && v != 0 {
						cell += fmt.Sprintf(" (proxy ×%s)", fmtNum(pv/v))
					}
				}
				b.WriteString(" " + cell + " |")
			}
		}
		if rw.Error != "" {
			b.WriteString(" did not converge: " + rw.Error)
		}
		b.WriteString("\n")
	}
	for _, n := range r.Notes {
		b.WriteString("\n" + n + "\n")
	}
	return b.String()
}

func fmtNum(v float64) string {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e12:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case math.Abs(v) >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

// svg draws the headline column as horizontal bars.
func (r *report) svg() string {
	const w, barH, left = 640, 28, 170
	h := 50 + barH*len(r.Rows)
	maxV := 0.0
	for _, rw := range r.Rows {
		maxV = max(maxV, rw.Values[r.Headline])
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="13">`+"\n", w, h)
	better := "higher is better"
	if r.Lower {
		better = "lower is better"
	}
	fmt.Fprintf(&b, `<text x="10" y="22" font-weight="bold">%s: %s (%s)</text>`+"\n", r.Scenario, r.Headline, better)
	for i, rw := range r.Rows {
		y := 40 + i*barH
		v, ok := rw.Values[r.Headline]
		fmt.Fprintf(&b, `<text x="10" y="%d">%s</text>`+"\n", y+17, rw.Label)
		if !ok || rw.Error != "" || maxV == 0 {
			fmt.Fprintf(&b, `<text x="%d" y="%d">n/a</text>`+"\n", left, y+17)
			continue
		}
		bw := int(float64(w-left-90) * v / maxV)
		color := "#8da0cb"
		if strings.HasPrefix(rw.Label, "proxy") {
			color = "#fc8d62"
		}
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", left, y+4, max(bw, 1), barH-8, color)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", left+max(bw, 1)+6, y+17, fmtNum(v))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func (r *report) write(c *common, stdout io.Writer) error {
	base := filepath.Join(c.out, r.Scenario)
	j, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(base+".json", j, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(base+".svg", []byte(r.svg()), 0o644); err != nil {
		return err
	}
	md := r.markdown()
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(stdout, md)
	return nil
}
