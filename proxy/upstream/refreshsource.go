package upstream

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/replproxy/replproxy/internal/acl"
	"github.com/replproxy/replproxy/proxy/security"
	"github.com/replproxy/replproxy/proxy/vocab"
	"github.com/replproxy/replproxy/psync"
)

// Which replicas may serve a snapshot refresh. A refreshed snapshot is
// installed and served to every replica that full-syncs afterwards, so a
// source can write to all of them: it must be trusted for who it
// authenticated as (never for what it reports: an ACK, an address), and
// it must be a read-only replica of this proxy's history (a writable
// replica's local keys would spread).

// DefaultRefreshTrust: the default user, the identity of every client of
// a proxy without passwords and of --requirepass. In Redis that identity
// can write, so trusting it gives a replica no more than it has there;
// named ACL users must be listed.
const DefaultRefreshTrust = "user:" + acl.DefaultUser

// sourceAdvice is the one line of advice logged with a refusal.
var sourceAdvice = map[vocab.SourceRefusal]string{
	vocab.RefusedUntrusted: "list its identity in --snapshot-refresh-trust (user:NAME or cn:NAME) if it may serve snapshots to every replica",
	vocab.RefusedDenied: "the replica is in protected mode (no password) and refuses connections from other hosts: give it a password " +
		"(requirepass or an ACL user) and set --replica-auth-password (and --replica-auth-user)",
	vocab.RefusedAuth:        "set --replica-auth-user and --replica-auth-password to credentials the replica accepts",
	vocab.RefusedUnreachable: "the proxy cannot reach the address the replica announced: set replica-announce-ip (and replica-announce-port) on the replica to an address the proxy can dial",
	vocab.RefusedWritable:    "the replica accepts writes (replica-read-only no): its local keys would reach every replica that full-syncs from its snapshot; set replica-read-only yes",
	vocab.RefusedNotOurs:     "the replica does not report an up-to-date, read-only link to this proxy's history (role, master_port, master_replid); it is asked again at the next refresh",
}

// errSourceRefused is a candidate that cannot serve: no fork happened on it.
type errSourceRefused struct {
	reason vocab.SourceRefusal
	detail string
}

func (e *errSourceRefused) Error() string {
	return fmt.Sprintf("refused as a refresh source (%s): %s", e.reason, e.detail)
}

// refusedBecause wraps err as a refusal when it is one.
func refusedBecause(err error) error {
	var he *psync.HandshakeError
	if errors.As(err, &he) {
		switch {
		case strings.HasPrefix(he.Reply, "-DENIED"):
			return &errSourceRefused{vocab.RefusedDenied, he.Reply}
		case strings.HasPrefix(he.Reply, "-NOAUTH"), strings.HasPrefix(he.Reply, "-WRONGPASS"),
			strings.HasPrefix(he.Reply, "-NOPERM"), strings.Contains(he.Reply, "invalid password"):
			return &errSourceRefused{vocab.RefusedAuth, he.Reply}
		}
	}
	var oe *net.OpError
	var de *net.DNSError
	if errors.As(err, &oe) && oe.Op == "dial" || errors.As(err, &de) {
		return &errSourceRefused{vocab.RefusedUnreachable, err.Error()}
	}
	return err
}

// trustRule is one --snapshot-refresh-trust entry.
type trustRule struct{ kind, name string }

// ParseTrust parses --snapshot-refresh-trust entries.
func ParseTrust(entries []string) ([]trustRule, error) {
	var out []trustRule
	for _, e := range entries {
		kind, name, ok := strings.Cut(strings.TrimSpace(e), ":")
		if !ok || name == "" || kind != "user" && kind != "cn" {
			return nil, fmt.Errorf("snapshot-refresh-trust %q: want user:NAME or cn:NAME entries, comma-separated", e)
		}
		out = append(out, trustRule{kind, name})
	}
	return out, nil
}

// trusts reports whether any rule names id.
func trusts(rules []trustRule, id vocab.Identity) bool {
	for _, r := range rules {
		if r.kind == "user" && id.User != "" && r.name == id.User || r.kind == "cn" && id.CN != "" && r.name == id.CN {
			return true
		}
	}
	return false
}

// sourceRefusals remembers the replicas refused as refresh sources, so each
// is logged once per reason (with advice) and shown in INFO.
type sourceRefusals struct {
	log    *slog.Logger
	counts vocab.Counts[vocab.SourceRefusal]

	mu sync.Mutex
	by map[string]vocab.RefusedSource // by announced address
}

// maxRefusedSources bounds the memory of refused sources.
const maxRefusedSources = 1024

func newSourceRefusals(log *slog.Logger, c vocab.Counts[vocab.SourceRefusal]) *sourceRefusals {
	return &sourceRefusals{log: log, counts: c, by: map[string]vocab.RefusedSource{}}
}

// note records a refusal of addr; a new reason for it is logged.
func (r *sourceRefusals) note(addr string, e *errSourceRefused) {
	r.counts.Add(e.reason, vocab.RefusedNotOurs)
	r.mu.Lock()
	prev, seen := r.by[addr]
	if seen || len(r.by) < maxRefusedSources {
		r.by[addr] = vocab.RefusedSource{Addr: addr, Reason: e.reason, Detail: e.detail, At: time.Now()}
	}
	r.mu.Unlock()
	if !seen || prev.Reason != e.reason {
		r.log.Warn("replica cannot serve snapshot refreshes", "replica", addr, "reason", e.reason,
			"reply", e.detail, "advice", sourceAdvice[e.reason])
	}
}

// served forgets addr's refusal: it served a refresh.
func (r *sourceRefusals) served(addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.by[addr]; ok {
		delete(r.by, addr)
		r.log.Info("replica serves snapshot refreshes again", "replica", addr)
	}
}

// refused reports whether addr was refused, for candidate order.
func (r *sourceRefusals) refused(addr string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.by[addr]
	return ok
}

// refusalMemory: a refusal not seen again for this long is forgotten (the
// replica left, or every refresh since succeeded before reaching it).
const refusalMemory = 10 * time.Minute

// list returns the refused sources seen within refusalMemory, by address.
func (r *sourceRefusals) list() []vocab.RefusedSource {
	r.mu.Lock()
	out := make([]vocab.RefusedSource, 0, len(r.by))
	for addr, s := range r.by {
		if time.Since(s.At) > refusalMemory {
			delete(r.by, addr)
			continue
		}
		out = append(out, s)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// sourceCheck is what a refresh source must report of itself: a read-only
// replica with its link up, following one of the proxy's ports, at the
// proxy's current replication ID.
type sourceCheck struct {
	replID string
	ports  []int // the proxy's listening and announced ports
}

// verify asks the replica for INFO replication over the refresh connection
// and checks what it reports. A malicious source can lie here: only trust
// (who it authenticated as) guards against that; this check catches the
// honest misconfiguration of a writable replica or a stray address.
func (c sourceCheck) verify(w io.Writer, br *bufio.Reader) error {
	if _, err := w.Write(psync.EncodeCommand("INFO", "replication")); err != nil {
		return fmt.Errorf("send INFO: %w", err)
	}
	txt, err := readBulk(br, 1<<20)
	if err != nil {
		return refusedBecause(err)
	}
	info := parseInfoFields(txt)
	readOnly := info["slave_read_only"]
	if readOnly == "" { // a fork that renamed the field
		readOnly = info["replica_read_only"]
	}
	switch {
	case info["role"] != "slave" && info["role"] != "replica":
		return &errSourceRefused{vocab.RefusedNotOurs, "role:" + info["role"]}
	case readOnly != "1":
		return &errSourceRefused{vocab.RefusedWritable, "slave_read_only:" + readOnly}
	case info["master_link_status"] != "up":
		return &errSourceRefused{vocab.RefusedNotOurs, "master_link_status:" + info["master_link_status"]}
	case info["master_replid"] != c.replID:
		return &errSourceRefused{vocab.RefusedNotOurs, fmt.Sprintf("master_replid:%s, the proxy's is %s", info["master_replid"], c.replID)}
	}
	port, _ := strconv.Atoi(info["master_port"])
	for _, p := range c.ports {
		if p == port {
			return nil
		}
	}
	return &errSourceRefused{vocab.RefusedNotOurs, fmt.Sprintf("master_host:%s master_port:%s, not a port of this proxy %v",
		info["master_host"], info["master_port"], c.ports)}
}

// readBulk reads one RESP reply that should be a bulk string; an error
// reply comes back as a HandshakeError, so refusals classify alike.
func readBulk(br *bufio.Reader, limit int) (string, error) {
	line, err := psync.ReadLine(br, psync.MaxReplyLine)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(line, "-") {
		return "", &psync.HandshakeError{Step: "INFO", Reply: line}
	}
	if !strings.HasPrefix(line, "$") {
		return "", fmt.Errorf("INFO answered %q", line)
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil || n < 0 || n > limit {
		return "", fmt.Errorf("INFO answered a bulk of %q bytes", line[1:])
	}
	b := make([]byte, n+2)
	if _, err := io.ReadFull(br, b); err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// parseInfoFields reads INFO's "key:value" lines.
func parseInfoFields(txt string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(txt, "\n") {
		if k, v, ok := strings.Cut(strings.TrimRight(line, "\r"), ":"); ok && !strings.HasPrefix(k, "#") {
			out[k] = v
		}
	}
	return out
}

// warnSharedTrust warns at start when refreshes from replicas trust the
// default user while clients can authenticate as it: every replica (and
// any client that can connect) shares that identity, so any of them could
// serve the snapshot every later full sync gets.
func warnSharedTrust(cfg Options, sec *security.Service, log *slog.Logger) {
	rules, _ := ParseTrust(cfg.RefreshTrust)
	if !cfg.hasRefreshSource(SourceReplicas) || !trusts(rules, vocab.Identity{User: acl.DefaultUser}) {
		return
	}
	var how string
	switch users := sec.Users.Load(); {
	case users.DefaultOpen():
		how = "no password: any client that can connect"
	case users.Usable(acl.DefaultUser):
		how = "a password shared by every client that knows it"
	default:
		return // the default user is off: nobody authenticates as it
	}
	log.Warn("snapshot refreshes from replicas trust the default user ("+how+"); such a client can complete a replica handshake "+
		"and serve the snapshot every later full sync gets. Give replicas ACL users of their own (--users-file) and name them in --snapshot-refresh-trust",
		"snapshot_refresh_trust", strings.Join(cfg.RefreshTrust, ","))
}
