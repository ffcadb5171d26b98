package chaos

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/internal/redistest"
	"github.com/replproxy/replproxy/psync"
)

// ledger counts full syncs by who took them, and what faults explain.
type ledger struct {
	seen    map[string]int // full syncs counted so far, by node
	allowed map[string][]string
}

func newLedger() *ledger { return &ledger{seen: map[string]int{}, allowed: map[string][]string{}} }

// allow records that node may take one full sync, and why.
func (l *ledger) allow(node, why string) { l.allowed[node] = append(l.allowed[node], why) }

// fullSyncs counts the full syncs each node has taken so far, from the
// logs (they survive restarts): stock servers log "Full resync from
// master", replproxy "upstream full resync".
func (w *world) fullSyncs() map[string]int {
	out := map[string]int{}
	for _, r := range w.replicas {
		out[r.name] = countIn(r.srv.Log, "Full resync from master")
	}
	for _, s := range []*redistest.Server{w.origin, w.standby} { // by their first role: roles swap
		out[filepath.Base(s.Dir)] = countIn(s.Log, "Full resync from master")
	}
	for _, p := range w.proxies {
		out["proxy"+p.name] = countIn(p.logPath, `msg="upstream full resync"`)
	}
	return out
}

func countIn(path, sub string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte(sub))
}

// settle compares full syncs since the last check with what the ledger
// allows; it returns the unexplained ones.
func (l *ledger) settle(now map[string]int) []string {
	var out []string
	for node, n := range now {
		for extra := n - l.seen[node]; extra > 0; extra-- {
			if len(l.allowed[node]) > 0 {
				l.allowed[node] = l.allowed[node][1:]
				continue
			}
			out = append(out, fmt.Sprintf("%s took a full sync no fault explains", node))
		}
		l.seen[node] = n
	}
	l.allowed = map[string][]string{} // allowances do not carry over a check
	return out
}

// heal undoes every lasting fault: stopped processes resumed, links and
// disks restored, every process running.
func (w *world) heal() error {
	for _, p := range w.proxies {
		if p.stopped {
			p.signal(syscall.SIGCONT)
			p.stopped = false
		}
		p.up.Refuse(false)
		p.front.Refuse(false)
		p.up.CutAfter(0)
		p.fs.SetFull(false)
		if !p.running() {
			if err := p.start(); err != nil {
				return fmt.Errorf("restart proxy %s: %w", p.name, err)
			}
		}
	}
	return nil
}

// check is the checker at a quiescent point: load paused, faults healed.
// It returns findings (empty: every invariant holds).
func (w *world) check() []string {
	var findings []string
	w.load.stop()
	defer w.load.run()
	if err := w.heal(); err != nil {
		return []string{err.Error()}
	}
	origin := w.currentOrigin()
	if err := waitFor(3*time.Minute, func() bool { return w.converged(origin) }); err != nil {
		return []string{"no convergence within 3 minutes: " + w.describe(origin)}
	}
	for _, p := range w.proxies {
		if f := w.streamMatches(p, origin); f != "" {
			findings = append(findings, f)
		}
		if b, err := os.ReadFile(p.logPath); err == nil {
			for _, bad := range []string{"panic:", "DATA RACE", "fatal error:"} {
				if bytes.Contains(b, []byte(bad)) {
					findings = append(findings, fmt.Sprintf("proxy %s logged %q", p.name, bad))
				}
			}
		}
		if rss := rssBytes(p.proc.PID()); rss > rssLimit {
			findings = append(findings, fmt.Sprintf("proxy %s RSS %d MB, above %d MB", p.name, rss>>20, rssLimit>>20))
		}
	}
	return append(findings, w.ledger.settle(w.fullSyncs())...)
}

// rssLimit: 100 MB plus the 64 MB intake buffer, with room for the
// race detector's own memory in -race runs.
const rssLimit = 400 << 20

// converged: every server and proxy at the origin's offset, then every
// replica and the standby with the origin's digest.
func (w *world) converged(origin *redistest.Server) bool {
	o, err := origin.Info("replication")
	if err != nil {
		return false
	}
	off := infoInt(o, "master_repl_offset")
	for _, r := range append([]*replicaNode{{name: "standby", srv: w.standby}}, w.replicas...) {
		m, err := r.srv.Info("replication")
		if err != nil || m["master_link_status"] != "up" || infoInt(m, "master_repl_offset") != off {
			return false
		}
	}
	for _, p := range w.proxies {
		m, err := infoAt(p.addr, "replication")
		if err != nil || infoInt(m, "master_repl_offset") != off {
			return false
		}
	}
	want, err := origin.Digest()
	if err != nil {
		return false
	}
	for _, r := range append([]*replicaNode{{name: "standby", srv: w.standby}}, w.replicas...) {
		if d, err := r.srv.Digest(); err != nil || d != want {
			return false
		}
	}
	return true
}

func (w *world) describe(origin *redistest.Server) string {
	var b strings.Builder
	o, _ := origin.Info("replication")
	fmt.Fprintf(&b, "origin offset %s;", o["master_repl_offset"])
	for _, r := range append([]*replicaNode{{name: "standby", srv: w.standby}}, w.replicas...) {
		m, _ := r.srv.Info("replication")
		fmt.Fprintf(&b, " %s link %s offset %s;", r.name, m["master_link_status"], m["master_repl_offset"])
	}
	for _, p := range w.proxies {
		m, _ := infoAt(p.addr, "replication")
		fmt.Fprintf(&b, " proxy %s link %s offset %s;", p.name, m["master_link_status"], m["master_repl_offset"])
	}
	return b.String()
}

// streamMatches compares what proxy p serves with what the origin serves
// at the same offsets, each read by a PSYNC of its own: every byte since
// the previous check that both still hold. "" when they are equal.
func (w *world) streamMatches(p *proxyNode, origin *redistest.Server) string {
	m, err := infoAt(p.addr, "replication")
	if err != nil {
		return fmt.Sprintf("proxy %s INFO: %v", p.name, err)
	}
	o, err := origin.Info("replication")
	if err != nil {
		return fmt.Sprintf("origin INFO: %v", err)
	}
	end := infoInt(m, "master_repl_offset")
	from := max(infoInt(m, "repl_backlog_first_byte_offset"), infoInt(o, "repl_backlog_first_byte_offset"), p.checked+1)
	if end < from {
		return ""
	}
	replid := m["master_replid"]
	mine, err := psyncOpen(p.addr, replid, from)
	if err != nil {
		return fmt.Sprintf("proxy %s serving from %d: %v", p.name, from, err)
	}
	defer mine.Close()
	ref, err := psyncOpen(origin.Addr(), replid, from)
	if err != nil {
		return fmt.Sprintf("origin serving from %d of %s: %v", from, replid, err)
	}
	defer ref.Close()
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	for at := from; at <= end; {
		n := min(int64(len(a)), end-at+1)
		if _, err := io.ReadFull(mine, a[:n]); err != nil {
			return fmt.Sprintf("proxy %s serving [%d, %d]: %v", p.name, at, end, err)
		}
		if _, err := io.ReadFull(ref, b[:n]); err != nil {
			return fmt.Sprintf("origin serving [%d, %d]: %v", at, end, err)
		}
		if i := firstDiff(a[:n], b[:n]); i >= 0 {
			return fmt.Sprintf("DIVERGENCE: proxy %s serves bytes that differ from the origin's stream at offset %d", p.name, at+int64(i))
		}
		at += n
	}
	p.checked = end
	w.compared += end - from + 1
	return ""
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// psyncConn is a continued replication stream.
type psyncConn struct {
	net.Conn
	br *bufio.Reader
}

func (c *psyncConn) Read(p []byte) (int, error) { return c.br.Read(p) }

// psyncOpen continues history replid at from on addr, which must
// continue it.
func psyncOpen(addr, replid string, from int64) (*psyncConn, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	br := bufio.NewReaderSize(conn, 1<<20)
	if err := psync.Handshake(conn, br, psync.HandshakeConfig{ListeningPort: 1}); err != nil {
		conn.Close()
		return nil, err
	}
	reply, err := psync.Psync(conn, br, replid, from, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if reply.Kind != psync.ReplyContinue {
		conn.Close()
		return nil, fmt.Errorf("PSYNC %s %d not continued: %+v", replid, from, reply)
	}
	return &psyncConn{Conn: conn, br: br}, nil
}

func infoAt(addr, section string) (map[string]string, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "INFO %s\r\n", section); err != nil {
		return nil, err
	}
	br := bufio.NewReader(conn)
	hdr, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	var n int
	if _, err := fmt.Sscanf(hdr, "$%d", &n); err != nil {
		return nil, fmt.Errorf("INFO reply %q", hdr)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return nil, err
	}
	return redistest.ParseInfo(string(body)), nil
}

func rssBytes(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	return 0
}
